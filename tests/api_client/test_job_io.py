"""The client's job IO against the real server (datasets' content, logs, results) and, on a
scripted server, what it does when an answer is wrong or breaks off."""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import io
import itertools
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
from tests.api_client.scripted_server import Reply, ScriptedServer
from tests.conftest import Account, LiveServer, new_account

# Core counts of this module's own, so that its jobs match no other module's resources.
_cores = itertools.count(3601)

CSV = b"id,value\n1,2.5\n2,3.75\n"


@dataclass
class Held:
    """A job that an agent's resource accepted, with the clients of both sides."""

    owner: CalctraClient
    agent: CalctraClient
    job_id: str


class Provision:
    """Clients, resources and jobs of one test, removed at the end."""

    def __init__(self, live: LiveServer) -> None:
        self.live = live
        self.cores = next(_cores)
        self.clients: list[CalctraClient] = []
        self.resources: list[tuple[CalctraClient, str]] = []
        self.jobs: list[tuple[CalctraClient, str]] = []

    def client(self, token: str) -> CalctraClient:
        client = CalctraClient(self.live.url, token, max_retries=0)
        self.clients.append(client)
        return client

    def agent(self, owner: Account) -> CalctraClient:
        user = self.client(owner.token)
        specs = wire.Specs(cpu_cores=self.cores, memory_gb=64, storage_gb=100)
        request = wire.ResourceRequest(name="io node", specs=specs, price_per_hour=1.0)
        resource_id = user.create_resource(request).resource_id
        self.resources.append((user, resource_id))
        return self.client(user.create_agent_token(resource_id).token)

    def held(self, customer: Account, provider: Account, datasets: tuple[str, ...] = ()) -> Held:
        agent = self.agent(provider)
        owner = self.client(customer.token)
        requirements = wire.Requirements(min_cpu_cores=self.cores, estimated_duration_hours=1)
        job = wire.JobRequest(
            name="io job",
            code="print(1)",
            requirements=requirements,
            budget=5.0,
            datasets=list(datasets),
        )
        job_id = owner.create_job(job).job_id
        self.jobs.append((owner, job_id))
        agent.accept_offer(job_id)
        return Held(owner, agent, job_id)

    def close(self) -> None:
        for owner, job_id in self.jobs:
            with contextlib.suppress(CalctraError):  # ended already
                owner.cancel_job(job_id)
        for user, resource_id in self.resources:
            user.delete_resource(resource_id)
        for client in self.clients:
            client.close()


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


@pytest.fixture
def provision(server: LiveServer) -> Iterator[Provision]:
    made = Provision(server)
    yield made
    made.close()


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
    held = provision.held(people.customer, people.provider, (dataset_id,))
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
    held = provision.held(people.customer, people.provider)

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
    held = provision.held(people.customer, people.provider)

    with pytest.raises(PermissionDenied):
        provision.client(people.stranger.token).get_job_logs(held.job_id)


# Results


def test_results_upload_once_and_download_checked(
    provision: Provision, people: People, tmp_path: Path
) -> None:
    held = provision.held(people.customer, people.provider)
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
    held = provision.held(people.customer, people.provider)
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
