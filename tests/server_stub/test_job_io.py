"""What a job takes in and gives back: its image, its datasets' content, its logs and its
results, with who may send and read each; and the re-matching of a job whose resources went
silent.

The module runs a server of its own with small limits (1 MiB uploads, 1 MiB of log per job),
and each test's market cancels its jobs and deletes its resources at the end.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.conftest import Account, LiveServer, MakeServer, job_body, new_account
from tests.server_stub.provider_support import (
    SERVER_FLAGS,
    AgentClient,
    Market,
    assert_error,
    eventually,
    get_job,
    sql,
    start_server,
)

MiB = 1024 * 1024
CSV = b"id,value\n1,2.5\n2,3.75\n"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    data_dir = tmp_path_factory.mktemp("job-io") / "data"
    yield from start_server(data_dir, "--max-upload-mb", "1", "--max-log-mb", "1")


@pytest.fixture(scope="module")
def people(live: LiveServer) -> Iterator[tuple[Account, Account, list[Account]]]:
    """A customer, a stranger and two providers, shared by the module's tests."""
    buyer = new_account(live, "Customer Carol", deposit=10_000)
    stranger = new_account(live, "Stranger Sam")
    owners = [new_account(live, f"Provider {name}") for name in ("Pat", "Quinn")]
    yield buyer, stranger, owners
    for acct in [buyer, stranger, *owners]:
        acct.http.close()


@pytest.fixture
def market(live: LiveServer, people: tuple[Account, Account, list[Account]]) -> Iterator[Market]:
    market = Market(live, owners=people[2])
    yield market
    market.close()


@pytest.fixture
def buyer(people: tuple[Account, Account, list[Account]]) -> Account:
    return people[0]


@pytest.fixture
def stranger(people: tuple[Account, Account, list[Account]]) -> Account:
    return people[1]


def upload_dataset(
    owner: Account, content: bytes = CSV, data_format: str = "CSV", public: bool = False
) -> str:
    form = {
        "name": (None, "figures"),
        "type": (None, "tabular"),
        "format": (None, data_format),
        "isPublic": (None, "true" if public else "false"),
    }
    files = {**form, "file": ("data.bin", content, "application/octet-stream")}
    response = owner.http.post("/data", files=files)
    assert response.status_code == 201, response.text
    return str(response.json()["datasetId"])


def access_count(owner: Account, dataset_id: str) -> int:
    response = owner.http.get(f"/data/{dataset_id}")
    assert response.status_code == 200, response.text
    return int(response.json()["accessCount"])


def held_job(market: Market, buyer: Account, agent: AgentClient, **job: object) -> str:
    """A job that `agent`'s resource accepted."""
    job_id = market.job(buyer, **job)
    agent.accept(job_id)
    return job_id


def finish(agent: AgentClient, job_id: str) -> None:
    assert agent.report(job_id, "RUNNING", progress=10).status_code == 200
    assert agent.report(job_id, "COMPLETED").status_code == 200


def archive(files: dict[str, bytes]) -> bytes:
    """A tar.gz holding `files`."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def post_results(
    agent: AgentClient, job_id: str, body: Any, digest: str | None, **headers: str
) -> httpx.Response:
    if digest is not None:
        headers["x-content-sha256"] = digest
    headers.setdefault("content-type", "application/gzip")
    return agent.http.post(f"/jobs/{job_id}/results", content=body, headers=headers)


def append(agent: AgentClient, job_id: str, offset: object, data: bytes) -> httpx.Response:
    return agent.http.post(
        f"/jobs/{job_id}/logs",
        params={"offset": offset},
        content=data,
        headers={"content-type": "application/octet-stream"},
    )


def appended(agent: AgentClient, job_id: str, offset: int, data: bytes) -> dict[str, Any]:
    response = append(agent, job_id, offset, data)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def result_files(live: LiveServer, job_id: str) -> list[str]:
    return sorted(path.name for path in (live.data_dir / "results").glob(f"{job_id}*"))


# The job's image


def test_image_is_stored_shown_offered_and_handed_to_the_provider(
    market: Market, buyer: Account
) -> None:
    agent = market.agent()
    job_id = market.job(buyer, image="python:3.12-slim")

    offer = agent.offers()["offers"][0]
    accepted = agent.accept(job_id)

    assert get_job(buyer, job_id)["image"] == "python:3.12-slim"
    listed = buyer.http.get("/jobs").json()["jobs"]
    assert next(job for job in listed if job["id"] == job_id)["image"] == "python:3.12-slim"
    assert (offer["jobId"], offer["image"]) == (job_id, "python:3.12-slim")
    assert accepted["image"] == "python:3.12-slim"
    assert agent.http.get(f"/provider/jobs/{job_id}").json()["image"] == "python:3.12-slim"


def test_job_without_an_image_shows_null(market: Market, buyer: Account) -> None:
    agent = market.agent()
    job_id = market.job(buyer)

    assert get_job(buyer, job_id)["image"] is None
    assert agent.offers()["offers"][0]["image"] is None
    assert agent.accept(job_id)["image"] is None


@pytest.mark.parametrize(
    "image",
    ["python 3.12", "", "x" * 256, "Python:3.12", "python:", "python:3.12\n", "-py", 3],
    ids=["space", "empty", "too-long", "uppercase", "empty-tag", "newline", "dash", "number"],
)
def test_bad_image_is_refused_and_nothing_is_escrowed(
    market: Market, buyer: Account, image: object
) -> None:
    before = buyer.http.get("/jobs").json()["total"]

    response = buyer.http.post("/jobs", json=job_body(image=image))

    details = assert_error(response, 400, "VALIDATION_ERROR")
    assert [field["field"] for field in details["fields"]] == ["image"]
    assert buyer.http.get("/jobs").json()["total"] == before


# Dataset content


def test_owner_downloads_the_content_and_each_download_is_counted(
    live: LiveServer, buyer: Account
) -> None:
    dataset_id = upload_dataset(buyer)

    first = buyer.http.get(f"/data/{dataset_id}/content")
    counted_once = access_count(buyer, dataset_id)
    second = buyer.http.get(f"/data/{dataset_id}/content")

    assert first.status_code == 200, first.text
    assert first.content == CSV and second.content == CSV
    assert first.headers["content-type"] == "text/csv"
    assert first.headers["content-length"] == str(len(CSV))
    assert first.headers["x-content-sha256"] == sha256(CSV)
    assert (counted_once, access_count(buyer, dataset_id)) == (1, 2)


@pytest.mark.parametrize(
    ("data_format", "content_type"),
    [
        ("FASTA", "application/octet-stream"),
        ("json", "application/json"),
        ("application/x-parquet", "application/x-parquet"),
    ],  # fmt: skip
)
def test_content_type_follows_the_format(
    buyer: Account, data_format: str, content_type: str
) -> None:
    dataset_id = upload_dataset(buyer, data_format=data_format)

    response = buyer.http.get(f"/data/{dataset_id}/content")

    assert response.headers["content-type"] == content_type


def test_public_dataset_is_downloaded_by_any_user_and_any_agent(
    market: Market, buyer: Account, stranger: Account
) -> None:
    dataset_id = upload_dataset(buyer, public=True)
    agent = market.agent()

    by_user = stranger.http.get(f"/data/{dataset_id}/content")
    by_agent = agent.http.get(f"/data/{dataset_id}/content")

    assert (by_user.status_code, by_agent.status_code) == (200, 200)
    assert by_user.content == by_agent.content == CSV
    assert access_count(buyer, dataset_id) == 2


def test_private_dataset_is_refused_to_a_stranger_and_not_counted(
    buyer: Account, stranger: Account
) -> None:
    dataset_id = upload_dataset(buyer)

    response = stranger.http.get(f"/data/{dataset_id}/content")

    assert assert_error(response, 403, "PERMISSION_DENIED") == {"datasetId": dataset_id}
    assert access_count(buyer, dataset_id) == 0


def test_unknown_dataset_content_is_not_found(market: Market, buyer: Account) -> None:
    agent = market.agent()

    for http in (buyer.http, agent.http):
        details = assert_error(http.get("/data/data_nope/content"), 404, "RESOURCE_NOT_FOUND")
        assert details == {"datasetId": "data_nope"}


def test_content_without_a_token_is_refused(live: LiveServer, buyer: Account) -> None:
    dataset_id = upload_dataset(buyer)

    with live.client() as anonymous:
        response = anonymous.get(f"/data/{dataset_id}/content")

    assert_error(response, 401, "AUTHENTICATION_REQUIRED")


def test_agent_reads_a_private_dataset_only_while_it_holds_an_open_job_naming_it(
    market: Market, buyer: Account
) -> None:
    dataset_id = upload_dataset(buyer)
    other_dataset = upload_dataset(buyer)
    agent = market.agent()
    rival = market.agent()
    job_id = market.job(buyer, datasets=[dataset_id])
    path = f"/data/{dataset_id}/content"

    offered = agent.http.get(path)
    agent.accept(job_id)
    accepted = agent.http.get(path)
    assert agent.report(job_id, "RUNNING", progress=5).status_code == 200
    running = agent.http.get(path)
    not_named = agent.http.get(f"/data/{other_dataset}/content")
    by_rival = rival.http.get(path)
    assert agent.report(job_id, "COMPLETED").status_code == 200
    completed = agent.http.get(path)

    assert_error(offered, 403, "PERMISSION_DENIED")
    assert (accepted.status_code, running.status_code) == (200, 200)
    assert accepted.content == running.content == CSV
    assert accepted.headers["x-content-sha256"] == sha256(CSV)
    assert_error(not_named, 403, "PERMISSION_DENIED")
    assert_error(by_rival, 403, "PERMISSION_DENIED")
    assert_error(completed, 403, "PERMISSION_DENIED")
    assert access_count(buyer, dataset_id) == 2


def test_agent_of_the_owner_is_not_the_owner(market: Market, buyer: Account) -> None:
    # A provider's agent token holds no more of its owner's rights than the job grants.
    agent = market.agent(owner=buyer)
    dataset_id = upload_dataset(buyer)

    response = agent.http.get(f"/data/{dataset_id}/content")

    assert_error(response, 403, "PERMISSION_DENIED")


# Logs


def test_agent_appends_logs_and_the_owner_reads_them(market: Market, buyer: Account) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)

    first = appended(agent, job_id, 0, b"hello ")
    second = appended(agent, job_id, 6, b"world\n")
    whole = buyer.http.get(f"/jobs/{job_id}/logs")
    tail = buyer.http.get(f"/jobs/{job_id}/logs", params={"offset": 6})
    head = buyer.http.get(f"/jobs/{job_id}/logs", params={"limit": 5})
    past_end = buyer.http.get(f"/jobs/{job_id}/logs", params={"offset": 100})

    assert first == {"size": 6, "truncated": False}
    assert second == {"size": 12, "truncated": False}
    assert whole.status_code == 200, whole.text
    assert whole.content == b"hello world\n"
    assert whole.headers["content-type"] == "text/plain; charset=utf-8"
    assert (whole.headers["x-log-size"], whole.headers["x-log-truncated"]) == ("12", "false")
    assert (tail.content, head.content, past_end.content) == (b"world\n", b"hello", b"")
    assert past_end.headers["x-log-size"] == "12"


def test_logs_are_bytes_as_sent_even_when_not_utf8(market: Market, buyer: Account) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    data = b"caf\xc3\xa9 \xff\xfe\n"

    appended(agent, job_id, 0, data)

    assert buyer.http.get(f"/jobs/{job_id}/logs").content == data


def test_job_without_logs_answers_an_empty_log(market: Market, buyer: Account) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)

    response = buyer.http.get(f"/jobs/{job_id}/logs")

    assert response.status_code == 200, response.text
    assert response.content == b""
    assert (response.headers["x-log-size"], response.headers["x-log-truncated"]) == ("0", "false")


def test_resent_log_bytes_are_skipped(market: Market, buyer: Account) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    appended(agent, job_id, 0, b"abcdef")

    resent = appended(agent, job_id, 0, b"abcdef")
    overlapping = appended(agent, job_id, 3, b"defghi")
    inside = appended(agent, job_id, 2, b"cd")

    assert resent["size"] == 6
    assert overlapping["size"] == inside["size"] == 9
    assert buyer.http.get(f"/jobs/{job_id}/logs").content == b"abcdefghi"


def test_log_offset_past_the_end_is_a_conflict_that_says_where_to_resume(
    market: Market, buyer: Account
) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    appended(agent, job_id, 0, b"1234")

    response = append(agent, job_id, 10, b"later")

    details = assert_error(response, 409, "CONFLICT")
    assert details["size"] == 4
    assert buyer.http.get(f"/jobs/{job_id}/logs").content == b"1234"


def test_log_past_the_cap_is_truncated_and_later_bytes_are_dropped(
    market: Market, buyer: Account
) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    appended(agent, job_id, 0, b"a" * (MiB - 4))

    capped = appended(agent, job_id, MiB - 4, b"b" * 10)
    dropped = appended(agent, job_id, MiB + 6, b"c" * 10)
    resent = appended(agent, job_id, 0, b"a" * 10)
    log = buyer.http.get(f"/jobs/{job_id}/logs")

    assert capped == dropped == resent == {"size": MiB, "truncated": True}
    assert log.content == b"a" * (MiB - 4) + b"b" * 4
    assert (log.headers["x-log-size"], log.headers["x-log-truncated"]) == (str(MiB), "true")


def test_log_that_reaches_the_cap_exactly_is_not_truncated(market: Market, buyer: Account) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)

    assert appended(agent, job_id, 0, b"x" * MiB) == {"size": MiB, "truncated": False}


def test_log_body_over_one_mib_is_refused_with_and_without_content_length(
    market: Market, buyer: Account
) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    chunks = (b"z" * (64 * 1024) for _ in range(17))

    declared = append(agent, job_id, 0, b"z" * (MiB + 1))
    chunked = agent.http.post(f"/jobs/{job_id}/logs", params={"offset": 0}, content=chunks)

    assert "content-length" not in chunked.request.headers
    assert assert_error(declared, 413, "PAYLOAD_TOO_LARGE")["limitBytes"] == MiB
    assert_error(chunked, 413, "PAYLOAD_TOO_LARGE")
    assert buyer.http.get(f"/jobs/{job_id}/logs").headers["x-log-size"] == "0"


@pytest.mark.parametrize(
    "params",
    [{"offset": -1}, {"offset": "abc"}, {"offset": "1.5"}, {}],
    ids=["negative", "text", "fraction", "missing"],
)
def test_bad_log_offset_is_refused(market: Market, buyer: Account, params: dict[str, Any]) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)

    response = agent.http.post(f"/jobs/{job_id}/logs", params=params, content=b"x")

    details = assert_error(response, 400, "VALIDATION_ERROR")
    assert details["fields"][0]["field"] == "offset"


def test_bad_log_read_parameters_are_refused(market: Market, buyer: Account) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)

    for params in ({"offset": -1}, {"limit": 0}, {"limit": "many"}):
        response = buyer.http.get(f"/jobs/{job_id}/logs", params=params)
        assert_error(response, 400, "VALIDATION_ERROR")


def test_only_the_holder_sends_logs_and_only_the_owner_reads_them(
    market: Market, buyer: Account, stranger: Account
) -> None:
    agent = market.agent()
    rival = market.agent()
    job_id = held_job(market, buyer, agent)
    path = f"/jobs/{job_id}/logs"

    assert_error(append(rival, job_id, 0, b"x"), 403, "PERMISSION_DENIED")
    assert_error(append(agent, "job_nope", 0, b"x"), 404, "RESOURCE_NOT_FOUND")
    by_owner_token = buyer.http.post(path, params={"offset": 0}, content=b"x")
    assert_error(by_owner_token, 401, "AUTHENTICATION_REQUIRED")
    assert_error(stranger.http.get(path), 403, "PERMISSION_DENIED")
    assert_error(agent.http.get(path), 401, "AUTHENTICATION_REQUIRED")
    assert_error(buyer.http.get("/jobs/job_nope/logs"), 404, "RESOURCE_NOT_FOUND")
    assert buyer.http.get(path).headers["x-log-size"] == "0"


def test_logs_are_refused_before_acceptance_and_after_the_job_ends(
    market: Market, buyer: Account
) -> None:
    agent = market.agent()
    offered = market.job(buyer)
    before = append(agent, offered, 0, b"x")
    job_id = held_job(market, buyer, agent)
    appended(agent, job_id, 0, b"ran\n")
    finish(agent, job_id)
    cancelled = held_job(market, buyer, agent)
    assert buyer.http.post(f"/jobs/{cancelled}/cancel").status_code == 200

    assert_error(before, 403, "PERMISSION_DENIED")
    assert assert_error(append(agent, job_id, 4, b"late"), 409, "CONFLICT")["status"] == (
        "COMPLETED"
    )
    assert assert_error(append(agent, cancelled, 0, b"x"), 409, "CONFLICT")["status"] == (
        "CANCELLED"
    )
    assert buyer.http.get(f"/jobs/{job_id}/logs").content == b"ran\n"


# Results


def test_results_are_uploaded_shown_on_the_job_and_downloaded_by_the_owner(
    live: LiveServer, market: Market, buyer: Account
) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    body = archive({"out/answer.txt": b"42\n"})

    response = post_results(agent, job_id, body, sha256(body))
    job = get_job(buyer, job_id)
    listed = buyer.http.get("/jobs").json()["jobs"]
    download = buyer.http.get(f"/jobs/{job_id}/results")

    assert response.status_code == 201, response.text
    result = response.json()
    assert (result["size"], result["sha256"]) == (len(body), sha256(body))
    assert job["result"] == result
    assert next(row for row in listed if row["id"] == job_id)["result"] == result
    assert download.status_code == 200, download.text
    assert download.content == body
    assert download.headers["content-type"] == "application/gzip"
    assert download.headers["x-content-sha256"] == sha256(body)
    assert download.headers["content-disposition"] == (
        f'attachment; filename="{job_id}-results.tar.gz"'
    )
    with tarfile.open(fileobj=io.BytesIO(download.content), mode="r:gz") as tar:
        member = tar.extractfile("out/answer.txt")
        assert member is not None and member.read() == b"42\n"
    assert len(result_files(live, job_id)) == 1


def test_job_shows_no_result_until_one_is_uploaded(market: Market, buyer: Account) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)

    response = buyer.http.get(f"/jobs/{job_id}/results")

    assert get_job(buyer, job_id)["result"] is None
    assert assert_error(response, 404, "RESOURCE_NOT_FOUND") == {
        "jobId": job_id,
        "status": "ACCEPTED",
    }


def test_repeated_upload_answers_the_same_record(
    live: LiveServer, market: Market, buyer: Account
) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    body = archive({"a.txt": b"a"})
    first = post_results(agent, job_id, body, sha256(body))
    files = result_files(live, job_id)

    again = post_results(agent, job_id, body, sha256(body).upper())

    assert (first.status_code, again.status_code) == (201, 200)
    assert again.json() == first.json()
    assert result_files(live, job_id) == files


def test_another_archive_replaces_the_first_while_the_job_is_open(
    live: LiveServer, market: Market, buyer: Account
) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    first = archive({"a.txt": b"first"})
    second = archive({"a.txt": b"second, longer"})
    post_results(agent, job_id, first, sha256(first))
    assert agent.report(job_id, "RUNNING", progress=50).status_code == 200

    response = post_results(agent, job_id, second, sha256(second))

    assert response.status_code == 201, response.text
    assert response.json()["sha256"] == sha256(second)
    assert buyer.http.get(f"/jobs/{job_id}/results").content == second
    assert len(result_files(live, job_id)) == 1


def test_sha256_mismatch_is_refused_and_nothing_is_kept(
    live: LiveServer, market: Market, buyer: Account
) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    body = archive({"a.txt": b"a"})

    response = post_results(agent, job_id, body, sha256(b"something else"))

    details = assert_error(response, 400, "VALIDATION_ERROR")
    assert details["received"] == sha256(body)
    assert result_files(live, job_id) == []
    assert get_job(buyer, job_id)["result"] is None


def test_mismatch_leaves_the_recorded_archive_in_place(
    live: LiveServer, market: Market, buyer: Account
) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    good = archive({"a.txt": b"good"})
    post_results(agent, job_id, good, sha256(good))
    files = result_files(live, job_id)

    response = post_results(agent, job_id, archive({"a.txt": b"bad"}), sha256(b"x"))

    assert_error(response, 400, "VALIDATION_ERROR")
    assert result_files(live, job_id) == files
    assert buyer.http.get(f"/jobs/{job_id}/results").content == good


@pytest.mark.parametrize(
    "header",
    [None, "", "abc", "g" * 64, "a" * 63, "a" * 65],
    ids=["missing", "empty", "short", "not-hex", "63", "65"],
)
def test_bad_sha256_header_is_refused(
    live: LiveServer, market: Market, buyer: Account, header: str | None
) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)

    response = post_results(agent, job_id, archive({"a": b"a"}), header)

    details = assert_error(response, 400, "VALIDATION_ERROR")
    assert details["field"] == "X-Content-SHA256"
    assert result_files(live, job_id) == []


def test_body_that_is_not_gzip_is_refused(
    live: LiveServer, market: Market, buyer: Account
) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)

    for body in (b"plain text, not an archive", b""):
        response = post_results(agent, job_id, body, sha256(body))
        assert_error(response, 400, "VALIDATION_ERROR")
    assert result_files(live, job_id) == []


def test_results_over_the_limit_are_refused_with_and_without_content_length(
    live: LiveServer, market: Market, buyer: Account
) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    body = gzip.compress(os.urandom(MiB + 1024), compresslevel=0)
    chunks = (body[start : start + 65536] for start in range(0, len(body), 65536))

    declared = post_results(agent, job_id, body, sha256(body))
    chunked = post_results(agent, job_id, chunks, sha256(body))

    assert "content-length" not in chunked.request.headers
    assert assert_error(declared, 413, "PAYLOAD_TOO_LARGE")["limitBytes"] == MiB
    assert assert_error(chunked, 413, "PAYLOAD_TOO_LARGE")["limitBytes"] == MiB
    assert result_files(live, job_id) == []
    assert get_job(buyer, job_id)["result"] is None


def test_results_of_exactly_the_limit_are_accepted(market: Market, buyer: Account) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    body = b"\x1f\x8b" + os.urandom(MiB - 2)

    response = post_results(agent, job_id, body, sha256(body))

    assert response.status_code == 201, response.text
    assert buyer.http.get(f"/jobs/{job_id}/results").content == body


def test_only_the_holder_uploads_and_only_the_owner_downloads(
    market: Market, buyer: Account, stranger: Account
) -> None:
    agent = market.agent()
    rival = market.agent()
    job_id = held_job(market, buyer, agent)
    body = archive({"a": b"a"})

    by_rival = post_results(rival, job_id, body, sha256(body))
    unknown = post_results(agent, "job_nope", body, sha256(body))
    by_owner_token = buyer.http.post(
        f"/jobs/{job_id}/results", content=body, headers={"x-content-sha256": sha256(body)}
    )
    assert post_results(agent, job_id, body, sha256(body)).status_code == 201

    assert_error(by_rival, 403, "PERMISSION_DENIED")
    assert_error(unknown, 404, "RESOURCE_NOT_FOUND")
    assert_error(by_owner_token, 401, "AUTHENTICATION_REQUIRED")
    assert_error(stranger.http.get(f"/jobs/{job_id}/results"), 403, "PERMISSION_DENIED")
    assert_error(agent.http.get(f"/jobs/{job_id}/results"), 401, "AUTHENTICATION_REQUIRED")
    assert_error(buyer.http.get("/jobs/job_nope/results"), 404, "RESOURCE_NOT_FOUND")


def test_after_the_job_ends_only_a_repeat_of_its_archive_is_answered(
    live: LiveServer, market: Market, buyer: Account
) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    body = archive({"a": b"final"})
    stored = post_results(agent, job_id, body, sha256(body)).json()
    finish(agent, job_id)
    other = archive({"a": b"too late"})

    repeat = post_results(agent, job_id, body, sha256(body))
    replacement = post_results(agent, job_id, other, sha256(other))

    assert (repeat.status_code, repeat.json()) == (200, stored)
    assert assert_error(replacement, 409, "CONFLICT")["status"] == "COMPLETED"
    assert buyer.http.get(f"/jobs/{job_id}/results").content == body
    assert len(result_files(live, job_id)) == 1


def test_results_and_logs_stay_with_a_cancelled_job(market: Market, buyer: Account) -> None:
    agent = market.agent()
    job_id = held_job(market, buyer, agent)
    body = archive({"partial": b"half"})
    post_results(agent, job_id, body, sha256(body))
    appended(agent, job_id, 0, b"working\n")

    assert buyer.http.post(f"/jobs/{job_id}/cancel").status_code == 200

    assert buyer.http.get(f"/jobs/{job_id}/results").content == body
    assert buyer.http.get(f"/jobs/{job_id}/logs").content == b"working\n"
    assert_error(post_results(agent, job_id, archive({"x": b"x"}), "a" * 64), 409, "CONFLICT")


# An older database


def test_server_adds_the_new_job_columns_to_an_older_database(make_server: MakeServer) -> None:
    first = make_server(*SERVER_FLAGS)
    first.stop()
    for column in ("image", "result_file", "result_size", "result_sha256", "result_uploaded_at"):
        sql(first, f"ALTER TABLE jobs DROP COLUMN {column}")
    again = make_server(*SERVER_FLAGS, data_dir=first.data_dir)
    buyer = new_account(again, "Customer Olga", deposit=100)

    created = buyer.http.post("/jobs", json=job_body(image="busybox:1.36"))

    assert created.status_code == 201, created.text
    assert get_job(buyer, created.json()["jobId"])["image"] == "busybox:1.36"
    assert "database column added" in again.log()
    buyer.http.close()


# Matching anew when the matched resources go silent


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server on which a resource is inactive 1 s after its agent's last heartbeat."""
    data_dir = tmp_path_factory.mktemp("quick") / "data"
    yield from start_server(data_dir, "--heartbeat-timeout", "1")


@pytest.fixture
def quick_market(quick: LiveServer) -> Iterator[Market]:
    market = Market(quick)
    yield market
    market.close()


def test_matched_job_is_offered_to_a_live_resource_once_its_resources_go_silent(
    quick_market: Market,
) -> None:
    buyer = quick_market.account("Customer Carol", deposit=100)
    silent = quick_market.agent()
    silent.heartbeat()
    job_id = quick_market.job(buyer)
    assert get_job(buyer, job_id)["matchedResources"] == [silent.resource_id]
    live = quick_market.agent()

    def offered_to_the_live_one() -> bool:
        live.heartbeat()
        return job_id in live.offered_ids()

    assert eventually(offered_to_the_live_one, timeout_s=10)
    job = get_job(buyer, job_id)
    assert (job["status"], job["matchedResources"]) == ("MATCHED", [live.resource_id])
    assert job_id not in silent.offered_ids()
    accepted = live.accept(job_id)
    assert accepted["jobId"] == job_id


def test_job_whose_resources_all_went_silent_waits_and_matches_when_one_returns(
    quick_market: Market,
) -> None:
    buyer = quick_market.account("Customer Carol", deposit=100)
    agent = quick_market.agent()
    agent.heartbeat()
    job_id = quick_market.job(buyer)

    assert eventually(lambda: get_job(buyer, job_id)["status"] == "CREATED", timeout_s=10)
    assert get_job(buyer, job_id)["matchedResources"] == []

    def matched_again() -> bool:
        agent.heartbeat()
        return get_job(buyer, job_id)["status"] == "MATCHED"

    assert eventually(matched_again, timeout_s=10)
    assert job_id in agent.offered_ids()


def test_matched_job_of_a_deleted_resource_is_matched_anew(quick_market: Market) -> None:
    buyer = quick_market.account("Customer Carol", deposit=100)
    gone = quick_market.agent()
    job_id = quick_market.job(buyer)
    other = quick_market.agent()
    assert gone.owner.http.delete(f"/resources/{gone.resource_id}").status_code == 200

    assert eventually(lambda: job_id in other.offered_ids(), timeout_s=10)
    assert get_job(buyer, job_id)["matchedResources"] == [other.resource_id]
