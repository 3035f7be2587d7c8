"""The client's job IO against the real server (datasets' content, logs, results) and, on a
scripted server, what it does when an answer is wrong or breaks off."""

from __future__ import annotations

import hashlib
import inspect
import io
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from calctra_agent import wire
from calctra_agent.api_client import CalctraClient
from calctra_agent.errors import (
    ApiError,
    CalctraError,
    Conflict,
    NotFound,
    PermissionDenied,
    ServerError,
    ValidationFailed,
)
from calctra_agent.runner._interface import JobPlatform
from tests.api_client.provision import Provision
from tests.api_client.scripted_server import Reply, ScriptedServer
from tests.conftest import Account, LiveServer, new_account

CSV = b"id,value\n1,2.5\n2,3.75\n"


@dataclass
class Held:
    """A job that an agent's resource accepted, with the clients of both sides."""

    owner: CalctraClient
    agent: CalctraClient
    job_id: str


def hold(
    provision: Provision, customer: Account, provider: Account, datasets: tuple[str, ...] = ()
) -> Held:
    """A job of `customer`'s, naming `datasets`, accepted by a resource of `provider`'s."""
    machine = provision.machine(provider)
    job_id = provision.job(customer, budget=5.0, datasets=datasets)
    machine.agent.accept_offer(job_id)
    return Held(provision.client(customer.token), machine.agent, job_id)


@dataclass
class People:
    customer: Account
    provider: Account
    stranger: Account


@pytest.fixture(scope="module")
def people(server: LiveServer) -> Iterator[People]:
    made = People(
        customer=new_account(server, "Kim Customer", deposit=1000),
        provider=new_account(server, "Pat Provider"),
        stranger=new_account(server, "Sam Stranger"),
    )
    yield made
    for account in (made.customer, made.provider, made.stranger):
        account.http.close()


def tar_gz(path: Path, files: dict[str, bytes]) -> str:
    """Write a tar.gz of `files` at `path`; returns its sha256."""
    with tarfile.open(path, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def leftovers(directory: Path) -> list[str]:
    return sorted(path.name for path in directory.iterdir() if path.name.startswith("."))


def test_client_offers_every_method_of_the_runners_job_platform() -> None:
    methods = [name for name in vars(JobPlatform) if not name.startswith("_")]

    assert methods, "JobPlatform names no methods"
    for name in methods:
        expected = inspect.signature(getattr(JobPlatform, name), eval_str=True)
        actual = inspect.signature(getattr(CalctraClient, name), eval_str=True)
        assert actual == expected, name


# Datasets' content


def test_agent_downloads_the_dataset_of_the_job_it_holds(
    provision: Provision, people: People, tmp_path: Path
) -> None:
    source = tmp_path / "figures.csv"
    source.write_bytes(CSV)
    customer = provision.client(people.customer.token)
    uploaded = customer.upload_dataset(source, name="figures", type="tabular", format="CSV")
    dataset_id = uploaded.dataset_id
    held = hold(provision, people.customer, people.provider, (dataset_id,))
    dest = tmp_path / "in" / "figures.csv"
    dest.parent.mkdir()

    digest = held.agent.download_dataset(dataset_id, dest)

    assert digest == hashlib.sha256(CSV).hexdigest() == customer.get_dataset(dataset_id).sha256
    assert dest.read_bytes() == CSV
    assert leftovers(dest.parent) == []
    assert customer.get_dataset(dataset_id).access_count == 1


def test_refused_download_leaves_dest_as_it_was(
    provision: Provision, people: People, tmp_path: Path
) -> None:
    source = tmp_path / "private.csv"
    source.write_bytes(CSV)
    customer = provision.client(people.customer.token)
    dataset_id = customer.upload_dataset(
        source, name="private", type="tabular", format="CSV"
    ).dataset_id
    stranger = provision.client(people.stranger.token)
    dest = tmp_path / "out.csv"

    with pytest.raises(PermissionDenied):
        stranger.download_dataset(dataset_id, dest)
    with pytest.raises(NotFound):
        stranger.download_dataset("data_nope", dest)

    assert not dest.exists()
    assert leftovers(tmp_path) == []


def test_download_into_a_missing_directory_is_a_clear_error(
    provision: Provision, people: People, tmp_path: Path
) -> None:
    source = tmp_path / "a.csv"
    source.write_bytes(CSV)
    customer = provision.client(people.customer.token)
    dataset_id = customer.upload_dataset(source, name="a", type="t", format="CSV").dataset_id

    with pytest.raises(CalctraError, match="cannot download dataset") as caught:
        customer.download_dataset(dataset_id, tmp_path / "nowhere" / "a.csv")

    assert not isinstance(caught.value, ApiError)


def _content(body: bytes, **headers: str) -> dict[tuple[str, str], list[Reply]]:
    reply = Reply(200, body, headers={"content-type": "text/csv", **headers})
    return {("GET", "/v1/api/data/data_1/content"): [reply]}


@pytest.mark.parametrize(
    "headers",
    [{"x-content-sha256": "0" * 64}, {}, {"x-content-sha256": "not a digest"}],
    ids=["wrong", "missing", "malformed"],
)
def test_content_that_does_not_match_its_sha256_is_not_kept(
    tmp_path: Path, headers: dict[str, str]
) -> None:
    dest = tmp_path / "data.csv"
    dest.write_bytes(b"what was there before")

    with ScriptedServer(_content(CSV, **headers)) as live, CalctraClient(live.url) as client:
        with pytest.raises(ServerError, match="sha256|X-Content-SHA256"):
            client.download_dataset("data_1", dest)

    assert dest.read_bytes() == b"what was there before"
    assert leftovers(tmp_path) == []


def test_body_that_breaks_off_is_fetched_again(tmp_path: Path) -> None:
    digest = hashlib.sha256(CSV).hexdigest()
    headers = {"content-type": "text/csv", "x-content-sha256": digest}
    script = {
        ("GET", "/v1/api/data/data_1/content"): [
            Reply(200, CSV, headers=headers, cut_after=5),
            Reply(200, CSV, headers=headers),
        ]
    }
    dest = tmp_path / "data.csv"

    with ScriptedServer(script) as live:
        with CalctraClient(live.url, backoff_base_s=0.01, backoff_max_s=0.02) as client:
            assert client.download_dataset("data_1", dest) == digest
        requests = len(live.requests)

    assert dest.read_bytes() == CSV
    assert requests == 2
    assert leftovers(tmp_path) == []


# Logs


def test_agent_appends_logs_and_the_owner_reads_them(provision: Provision, people: People) -> None:
    held = hold(provision, people.customer, people.provider)

    first = held.agent.append_job_logs(held.job_id, 0, b"epoch 1\n")
    resent = held.agent.append_job_logs(held.job_id, 0, b"epoch 1\n")
    second = held.agent.append_job_logs(held.job_id, 8, b"epoch 2\n")
    with pytest.raises(Conflict) as gap:
        held.agent.append_job_logs(held.job_id, 100, b"later")

    assert (first.size, resent.size, second.size) == (8, 8, 16)
    assert not second.truncated
    assert gap.value.details["size"] == 16
    assert held.owner.get_job_logs(held.job_id) == b"epoch 1\nepoch 2\n"
    assert held.owner.get_job_logs(held.job_id, offset=8) == b"epoch 2\n"


def test_bad_log_appends_are_refused_before_sending() -> None:
    # Nothing listens on port 1: a request sent would fail as ApiUnavailable.
    with CalctraClient("http://127.0.0.1:1/v1", max_retries=0) as client:
        with pytest.raises(ValidationFailed, match="request not sent"):
            client.append_job_logs("job_1", -1, b"x")
        with pytest.raises(ValidationFailed, match="in parts"):
            client.append_job_logs("job_1", 0, b"x" * (wire.MAX_LOG_APPEND_BYTES + 1))


def test_stranger_cannot_read_the_logs(provision: Provision, people: People) -> None:
    held = hold(provision, people.customer, people.provider)

    with pytest.raises(PermissionDenied):
        provision.client(people.stranger.token).get_job_logs(held.job_id)


# Results


def test_results_upload_once_and_download_checked(
    provision: Provision, people: People, tmp_path: Path
) -> None:
    held = hold(provision, people.customer, people.provider)
    archive = tmp_path / "results.tar.gz"
    digest = tar_gz(archive, {"out/answer.txt": b"42\n"})
    with pytest.raises(NotFound):
        held.owner.download_results(held.job_id, tmp_path / "none.tar.gz")

    stored = held.agent.upload_results(held.job_id, archive, digest)
    again = held.agent.upload_results(held.job_id, archive, digest.upper())
    dest = tmp_path / "down" / "results.tar.gz"
    dest.parent.mkdir()
    downloaded = held.owner.download_results(held.job_id, dest)

    assert (stored.size, stored.sha256) == (archive.stat().st_size, digest)
    assert again == stored
    assert held.owner.get_job(held.job_id).result == stored
    assert downloaded == digest
    assert dest.read_bytes() == archive.read_bytes()
    assert leftovers(dest.parent) == []


def test_bad_result_uploads_are_clear_errors(
    provision: Provision, people: People, tmp_path: Path
) -> None:
    held = hold(provision, people.customer, people.provider)
    archive = tmp_path / "results.tar.gz"
    tar_gz(archive, {"a": b"a"})

    with pytest.raises(ValidationFailed, match="request not sent"):
        held.agent.upload_results(held.job_id, archive, "not-a-digest")
    with pytest.raises(ValidationFailed, match="sha256"):
        held.agent.upload_results(held.job_id, archive, "0" * 64)
    with pytest.raises(CalctraError, match="cannot upload the results") as missing:
        held.agent.upload_results(held.job_id, tmp_path / "gone.tar.gz", "0" * 64)

    assert not isinstance(missing.value, ApiError)
    assert held.owner.get_job(held.job_id).result is None


def test_result_upload_is_sent_again_whole_after_a_503(tmp_path: Path) -> None:
    archive = tmp_path / "results.tar.gz"
    digest = tar_gz(archive, {"big.bin": bytes(range(256)) * 2048})
    result = {
        "size": archive.stat().st_size,
        "sha256": digest,
        "uploadedAt": "2030-01-01T00:00:00Z",
    }
    script = {("POST", "/v1/api/jobs/job_1/results"): [Reply(503, {}), Reply(201, result)]}

    with ScriptedServer(script) as live:
        with CalctraClient(live.url, backoff_base_s=0.01, backoff_max_s=0.02) as client:
            stored = client.upload_results("job_1", archive, digest)
        bodies = [seen.body for seen in live.requests]

    assert stored.sha256 == digest
    assert bodies == [archive.read_bytes()] * 2
