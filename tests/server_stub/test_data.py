"""Datasets: streaming multipart uploads, metadata, visibility, deletion and their errors."""

from __future__ import annotations

import hashlib
import os
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing

import httpx
import pytest

from tests.conftest import Account, LiveServer, MakeAccount, job_body

MiB = 1024 * 1024
BOUNDARY = "calctra-test-boundary-7f3a"
CSV = b"id,value\n1,2.5\n2,3.75\n"
_DEFAULT_FIELDS = {
    "name": "Sales figures",
    "description": "quarterly sales, one row a day",
    "type": "tabular",
    "format": "CSV",
    "isEncrypted": "false",
    "isPublic": "false",
}


def upload(account: Account, content: bytes = CSV, **fields: str | None) -> httpx.Response:
    """POST a dataset as multipart/form-data; a field given as None is left out."""
    form = {
        name: (None, value)
        for name, value in (_DEFAULT_FIELDS | fields).items()
        if value is not None
    }
    return account.http.post(
        "/data", files={**form, "file": ("data.csv", content, "application/octet-stream")}
    )


def uploaded_id(account: Account, content: bytes = CSV, **fields: str | None) -> str:
    response = upload(account, content, **fields)
    assert response.status_code == 201, response.text
    return str(response.json()["datasetId"])


def multipart(fields: dict[str, str], file_chunks: Iterator[bytes]) -> Iterator[bytes]:
    """A multipart/form-data body built by hand, yielded piece by piece."""
    for name, value in fields.items():
        yield (
            f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
        ).encode()
    yield (
        f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="file"; filename="big.bin"\r\n'
        "content-type: application/octet-stream\r\n\r\n"
    ).encode()
    yield from file_chunks
    yield f"\r\n--{BOUNDARY}--\r\n".encode()


def stored_files(live: LiveServer) -> list[str]:
    return sorted(path.name for path in (live.data_dir / "datasets").iterdir())


def dataset_rows(live: LiveServer, owner_id: str) -> int:
    with closing(sqlite3.connect(live.data_dir / "calctra.db")) as db:
        (count,) = db.execute(
            "SELECT count(*) FROM datasets WHERE owner_id = ?", (owner_id,)
        ).fetchone()
    return int(count)


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, object]:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    return dict(error["details"])


def assert_nothing_stored(live: LiveServer, account: Account, files_before: list[str]) -> None:
    assert dataset_rows(live, account.user_id) == 0
    assert stored_files(live) == files_before
    assert not [name for name in stored_files(live) if name.endswith(".part")]
    listing = account.http.get("/data").json()
    assert listing["total"] == 0


# Uploading


def test_upload_stores_the_file_with_its_size_and_sha256(
    server: LiveServer, customer: Account
) -> None:
    content = os.urandom(64 * 1024) + CSV
    response = upload(customer, content, isEncrypted="true", isPublic="true")

    assert response.status_code == 201, response.text
    assert response.json()["message"] == "Dataset uploaded successfully"
    dataset_id = response.json()["datasetId"]
    detail = customer.http.get(f"/data/{dataset_id}").json()
    assert detail["id"] == dataset_id
    assert detail["size"] == len(content)
    assert detail["sha256"] == hashlib.sha256(content).hexdigest()
    assert (detail["name"], detail["type"], detail["format"]) == (
        "Sales figures",
        "tabular",
        "CSV",
    )
    assert detail["description"] == "quarterly sales, one row a day"
    assert detail["isEncrypted"] is True and detail["isPublic"] is True
    assert detail["createdAt"]
    assert (server.data_dir / "datasets" / dataset_id).read_bytes() == content


def test_upload_without_optional_fields_is_private_and_unencrypted(
    customer: Account,
) -> None:
    dataset_id = uploaded_id(customer, description=None, isEncrypted=None, isPublic=None)

    detail = customer.http.get(f"/data/{dataset_id}").json()
    assert detail["isPublic"] is False and detail["isEncrypted"] is False
    assert detail["description"] == ""


def test_twenty_megabyte_upload_is_stored_byte_for_byte(
    server: LiveServer, customer: Account
) -> None:
    content = os.urandom(20 * MiB)

    dataset_id = uploaded_id(customer, content)

    detail = customer.http.get(f"/data/{dataset_id}").json()
    assert detail["size"] == 20 * MiB
    assert detail["sha256"] == hashlib.sha256(content).hexdigest()
    assert (server.data_dir / "datasets" / dataset_id).read_bytes() == content


def test_chunked_upload_without_content_length_is_stored(
    server: LiveServer, customer: Account
) -> None:
    chunks = [os.urandom(256 * 1024) for _ in range(12)]
    fields = {"name": "streamed", "type": "binary", "format": "raw"}

    response = customer.http.post(
        "/data",
        content=multipart(fields, iter(chunks)),
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )

    assert "content-length" not in response.request.headers
    assert response.status_code == 201, response.text
    dataset_id = response.json()["datasetId"]
    content = b"".join(chunks)
    assert customer.http.get(f"/data/{dataset_id}").json()["sha256"] == (
        hashlib.sha256(content).hexdigest()
    )
    assert (server.data_dir / "datasets" / dataset_id).read_bytes() == content


class Abandoned(Exception):
    """The test's client gives up on an upload midway."""


def test_upload_abandoned_midway_leaves_no_part_file(
    server: LiveServer, customer: Account
) -> None:
    before = stored_files(server)

    def body() -> Iterator[bytes]:
        *pieces, _closing_boundary = multipart(_DEFAULT_FIELDS, iter([b"x" * (256 * 1024)] * 4))
        yield from pieces
        # Stop only once the server has the partial file on disk, so that the check below
        # is about cleaning up and not about timing.
        deadline = time.monotonic() + 10
        while not any(name.endswith(".part") for name in stored_files(server)):
            assert time.monotonic() < deadline, "the server never opened a .part file"
            time.sleep(0.02)
        raise Abandoned

    with pytest.raises(Abandoned):
        customer.http.post(
            "/data",
            content=body(),
            headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
        )

    deadline = time.monotonic() + 10
    while stored_files(server) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert stored_files(server) == before
    assert dataset_rows(server, customer.user_id) == 0


# The size limit


@pytest.fixture(scope="module")
def small_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """A server that takes uploads of at most 1 MiB."""
    live = LiveServer(
        data_dir=tmp_path_factory.mktemp("small") / "data", flags=["--max-upload-mb", "1"]
    )
    live.start()
    yield live
    live.stop()


def test_upload_over_the_limit_is_refused_and_leaves_nothing(
    small_server: LiveServer, accounts: MakeAccount
) -> None:
    user = accounts(live=small_server)
    before = stored_files(small_server)

    response = upload(user, os.urandom(2 * MiB))

    details = assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert details["limitBytes"] == MiB
    assert_nothing_stored(small_server, user, before)


def test_upload_one_byte_over_the_limit_is_refused_midstream_and_leaves_no_part_file(
    small_server: LiveServer, accounts: MakeAccount
) -> None:
    # The declared length is within the server's slack for form overhead, so only the
    # streaming count can catch it, after the .part file was opened.
    user = accounts(live=small_server)
    before = stored_files(small_server)

    response = upload(user, os.urandom(MiB + 1))

    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert_nothing_stored(small_server, user, before)


def test_upload_of_exactly_the_limit_is_accepted(
    small_server: LiveServer, accounts: MakeAccount
) -> None:
    user = accounts(live=small_server)
    content = os.urandom(MiB)

    dataset_id = uploaded_id(user, content)

    assert dataset_id in stored_files(small_server)
    assert (small_server.data_dir / "datasets" / dataset_id).read_bytes() == content


def test_chunked_upload_over_the_limit_is_refused_and_leaves_nothing(
    small_server: LiveServer, accounts: MakeAccount
) -> None:
    user = accounts(live=small_server)
    before = stored_files(small_server)
    chunks = (b"\0" * (64 * 1024) for _ in range(40))  # 2.5 MiB

    response = user.http.post(
        "/data",
        content=multipart({"name": "too big", "type": "binary", "format": "raw"}, chunks),
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )

    assert "content-length" not in response.request.headers
    assert_error(response, 413, "PAYLOAD_TOO_LARGE")
    assert_nothing_stored(small_server, user, before)


# Bad uploads


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"name": None}, "name"),
        ({"type": None}, "type"),
        ({"format": None}, "format"),
        ({"name": "   "}, "name"),
        ({"isPublic": "maybe"}, "isPublic"),
        ({"isEncrypted": "yes please"}, "isEncrypted"),
    ],
    ids=["no-name", "no-type", "no-format", "blank-name", "isPublic-maybe", "isEncrypted-bad"],
)
def test_upload_with_bad_form_fields_is_refused_and_stores_nothing(
    server: LiveServer, accounts: MakeAccount, fields: dict[str, str | None], field: str
) -> None:
    user = accounts()
    before = stored_files(server)

    response = upload(user, **fields)

    details = assert_error(response, 400, "VALIDATION_ERROR")
    assert details["field"] == field
    assert_nothing_stored(server, user, before)


def test_upload_with_an_unknown_form_field_is_refused_and_stores_nothing(
    server: LiveServer, accounts: MakeAccount
) -> None:
    user = accounts()
    before = stored_files(server)

    response = upload(user, ownerId="someone-else")

    details = assert_error(response, 400, "VALIDATION_ERROR")
    assert details["fields"] == ["ownerId"]
    assert_nothing_stored(server, user, before)


def test_upload_without_a_file_part_is_refused(server: LiveServer, accounts: MakeAccount) -> None:
    user = accounts()
    before = stored_files(server)
    form = {name: (None, value) for name, value in _DEFAULT_FIELDS.items()}

    response = user.http.post("/data", files=form)

    details = assert_error(response, 400, "VALIDATION_ERROR")
    assert details["field"] == "file"
    assert_nothing_stored(server, user, before)


def test_upload_with_the_file_in_another_field_or_twice_is_refused(
    server: LiveServer, accounts: MakeAccount
) -> None:
    user = accounts()
    before = stored_files(server)
    form = [(name, (None, value)) for name, value in _DEFAULT_FIELDS.items()]
    misplaced = form + [("attachment", ("a.csv", CSV, "text/csv"))]
    doubled = form + [("file", ("a.csv", CSV, "text/csv")), ("file", ("b.csv", CSV, "text/csv"))]

    for files in (misplaced, doubled):
        response = user.http.post("/data", files=files)
        assert_error(response, 400, "VALIDATION_ERROR")
    assert_nothing_stored(server, user, before)


@pytest.mark.parametrize(
    "headers, body",
    [
        ({"content-type": "application/json"}, b'{"name": "x", "type": "t", "format": "f"}'),
        ({"content-type": "application/x-www-form-urlencoded"}, b"name=x&type=t&format=f"),
        ({"content-type": "multipart/form-data"}, b"no boundary in the content type"),
        ({}, CSV),
    ],
    ids=["json", "urlencoded", "multipart-without-boundary", "no-content-type"],
)
def test_upload_that_is_not_multipart_is_refused(
    server: LiveServer, accounts: MakeAccount, headers: dict[str, str], body: bytes
) -> None:
    user = accounts()
    before = stored_files(server)

    response = user.http.post("/data", content=body, headers=headers)

    assert_error(response, 400, "VALIDATION_ERROR")
    assert_nothing_stored(server, user, before)


_FIELDS_AND_FILE_HEAD = "".join(
    f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
    for name, value in _DEFAULT_FIELDS.items()
) + (f'--{BOUNDARY}\r\ncontent-disposition: form-data; name="file"; filename="f"\r\n\r\n')
_TRUNCATED = _FIELDS_AND_FILE_HEAD + "partial file contents " * 100


@pytest.mark.parametrize(
    "body",
    [
        # A part whose header line has no colon.
        f"--{BOUNDARY}\r\nthis is not a header\r\n\r\nvalue\r\n--{BOUNDARY}--\r\n",
        # Every field is there and the file part starts, so a .part file opens, but the body
        # ends before the closing boundary: a truncated file must not be kept.
        _TRUNCATED,
        # A complete file part, then the body stops inside the closing boundary.
        _FIELDS_AND_FILE_HEAD + f"whole file\r\n--{BOUNDARY}",
        # Nothing but bytes that never reach a boundary.
        "just some text, no parts at all",
    ],
    ids=["header-without-colon", "truncated-file-part", "cut-at-boundary", "no-parts"],
)
def test_malformed_multipart_body_is_refused_and_leaves_nothing(
    server: LiveServer, accounts: MakeAccount, body: str
) -> None:
    user = accounts()
    before = stored_files(server)

    response = user.http.post(
        "/data",
        content=body.encode(),
        headers={"content-type": f"multipart/form-data; boundary={BOUNDARY}"},
    )

    assert_error(response, 400, "VALIDATION_ERROR")
    assert_nothing_stored(server, user, before)


def test_upload_without_a_token_is_refused(server: LiveServer) -> None:
    before = stored_files(server)
    with server.client() as anonymous:
        response = anonymous.post(
            "/data", files={"name": (None, "x"), "file": ("f", CSV, "text/csv")}
        )

    assert_error(response, 401, "AUTHENTICATION_REQUIRED")
    assert stored_files(server) == before


# Listing and reading


def test_list_filters_by_type_and_pages_through_only_own_datasets(
    accounts: MakeAccount,
) -> None:
    owner, other = accounts("Owner Olga"), accounts("Other Otto")
    tables = [uploaded_id(owner, name=f"table {n}", type="tabular") for n in range(3)]
    image = uploaded_id(owner, name="picture", type="image", format="PNG")
    uploaded_id(other, type="tabular", isPublic="true")

    first = owner.http.get("/data", params={"type": "tabular", "limit": 2, "page": 1}).json()
    second = owner.http.get("/data", params={"type": "tabular", "limit": 2, "page": 2}).json()
    everything = owner.http.get("/data").json()

    assert (first["total"], first["page"], first["limit"]) == (3, 1, 2)
    assert len(first["datasets"]) == 2 and len(second["datasets"]) == 1
    paged = [d["id"] for d in first["datasets"] + second["datasets"]]
    assert sorted(paged) == sorted(tables)
    assert {d["type"] for d in first["datasets"] + second["datasets"]} == {"tabular"}
    assert everything["total"] == 4
    assert {d["id"] for d in everything["datasets"]} == {*tables, image}
    assert owner.http.get("/data", params={"type": "audio"}).json()["total"] == 0


def test_private_dataset_is_visible_only_to_its_owner(accounts: MakeAccount) -> None:
    owner, other = accounts("Owner Olga"), accounts("Other Otto")
    private = uploaded_id(owner)
    public = uploaded_id(owner, isPublic="true")

    assert owner.http.get(f"/data/{private}").status_code == 200
    details = assert_error(other.http.get(f"/data/{private}"), 403, "PERMISSION_DENIED")
    assert details["datasetId"] == private
    shared = other.http.get(f"/data/{public}")
    assert shared.status_code == 200, shared.text
    assert shared.json()["id"] == public


def test_unknown_dataset_is_not_found(customer: Account) -> None:
    for method in ("GET", "PUT", "DELETE"):
        body = {"name": "x"} if method == "PUT" else None
        response = customer.http.request(method, "/data/data_0000000000000000", json=body)
        details = assert_error(response, 404, "RESOURCE_NOT_FOUND")
        assert details["datasetId"] == "data_0000000000000000"


# Updating metadata


def test_owner_updates_name_description_and_visibility(accounts: MakeAccount) -> None:
    owner, other = accounts("Owner Olga"), accounts("Other Otto")
    dataset_id = uploaded_id(owner)

    response = owner.http.put(
        f"/data/{dataset_id}",
        json={"name": "Renamed", "description": "now public", "isPublic": True},
    )

    assert response.status_code == 200, response.text
    assert response.json()["message"] == "Dataset metadata updated successfully"
    detail = owner.http.get(f"/data/{dataset_id}").json()
    assert (detail["name"], detail["description"], detail["isPublic"]) == (
        "Renamed",
        "now public",
        True,
    )
    assert (detail["type"], detail["format"]) == ("tabular", "CSV")
    assert other.http.get(f"/data/{dataset_id}").status_code == 200


@pytest.mark.parametrize(
    "body",
    [
        {"isPublic": "true"},
        {"isPublic": 1},
        {"name": 42},
        {"name": ""},
        {"description": ["a", "list"]},
        {"ownerId": "usr_someone"},
        {"name": "ok", "size": 1},
    ],
    ids=["isPublic-string", "isPublic-int", "name-int", "name-empty", "desc-list", "unknown",
         "read-only-field"],
)  # fmt: skip
def test_bad_metadata_update_is_refused_and_changes_nothing(
    customer: Account, body: dict[str, object]
) -> None:
    dataset_id = uploaded_id(customer)
    before = customer.http.get(f"/data/{dataset_id}").json()

    response = customer.http.put(f"/data/{dataset_id}", json=body)

    assert_error(response, 400, "VALIDATION_ERROR")
    assert customer.http.get(f"/data/{dataset_id}").json() == before


def test_metadata_update_that_is_not_json_is_refused(customer: Account) -> None:
    dataset_id = uploaded_id(customer)
    before = customer.http.get(f"/data/{dataset_id}").json()

    response = customer.http.put(
        f"/data/{dataset_id}", content=b"{name: ", headers={"content-type": "application/json"}
    )

    assert_error(response, 400, "VALIDATION_ERROR")
    assert customer.http.get(f"/data/{dataset_id}").json() == before


def test_other_user_may_neither_update_nor_delete_a_dataset(
    server: LiveServer, accounts: MakeAccount
) -> None:
    owner, other = accounts("Owner Olga"), accounts("Other Otto")
    private = uploaded_id(owner)
    public = uploaded_id(owner, isPublic="true")

    for dataset_id in (private, public):
        before = owner.http.get(f"/data/{dataset_id}").json()
        put = other.http.put(f"/data/{dataset_id}", json={"name": "mine now"})
        assert assert_error(put, 403, "PERMISSION_DENIED")["datasetId"] == dataset_id
        delete = other.http.delete(f"/data/{dataset_id}")
        assert assert_error(delete, 403, "PERMISSION_DENIED")["datasetId"] == dataset_id
        assert owner.http.get(f"/data/{dataset_id}").json() == before
        assert (server.data_dir / "datasets" / dataset_id).read_bytes() == CSV


# Deleting


def test_delete_removes_the_dataset_and_its_file(server: LiveServer, customer: Account) -> None:
    dataset_id = uploaded_id(customer)
    assert (server.data_dir / "datasets" / dataset_id).exists()

    response = customer.http.delete(f"/data/{dataset_id}")

    assert response.status_code == 200, response.text
    assert response.json()["message"] == "Dataset deleted successfully"
    assert not (server.data_dir / "datasets" / dataset_id).exists()
    assert dataset_rows(server, customer.user_id) == 0
    assert_error(customer.http.get(f"/data/{dataset_id}"), 404, "RESOURCE_NOT_FOUND")
    assert_error(customer.http.delete(f"/data/{dataset_id}"), 404, "RESOURCE_NOT_FOUND")


def test_dataset_used_by_an_open_job_cannot_be_deleted_until_the_job_ends(
    server: LiveServer, customer: Account
) -> None:
    dataset_id = uploaded_id(customer)
    job = customer.http.post("/jobs", json=job_body(datasets=[dataset_id]))
    assert job.status_code == 201, job.text
    job_id = job.json()["jobId"]

    refused = customer.http.delete(f"/data/{dataset_id}")

    details = assert_error(refused, 409, "CONFLICT")
    assert details == {"datasetId": dataset_id, "jobId": job_id}
    assert (server.data_dir / "datasets" / dataset_id).read_bytes() == CSV
    assert customer.http.get(f"/data/{dataset_id}").status_code == 200

    assert customer.http.post(f"/jobs/{job_id}/cancel").status_code == 200
    assert customer.http.delete(f"/data/{dataset_id}").status_code == 200
    assert not (server.data_dir / "datasets" / dataset_id).exists()


# Datasets in jobs


def test_job_naming_another_users_private_dataset_is_refused(accounts: MakeAccount) -> None:
    owner, customer = accounts("Owner Olga"), accounts("Customer Carol", deposit=100)
    private = uploaded_id(owner)

    response = customer.http.post("/jobs", json=job_body(datasets=[private]))

    details = assert_error(response, 403, "PERMISSION_DENIED")
    assert details["datasetId"] == private
    assert customer.http.get("/jobs").json()["total"] == 0
    assert customer.http.get("/tokens/balance").json()["balance"] == 100


def test_job_may_name_another_users_public_dataset(accounts: MakeAccount) -> None:
    owner, customer = accounts("Owner Olga"), accounts("Customer Carol", deposit=100)
    public = uploaded_id(owner, isPublic="true")

    response = customer.http.post("/jobs", json=job_body(datasets=[public]))

    assert response.status_code == 201, response.text
    job = customer.http.get(f"/jobs/{response.json()['jobId']}").json()
    assert job["datasets"] == [public]


def test_job_naming_an_unknown_dataset_is_not_found(customer: Account) -> None:
    response = customer.http.post("/jobs", json=job_body(datasets=["data_ffffffffffffffff"]))

    details = assert_error(response, 404, "RESOURCE_NOT_FOUND")
    assert details["datasetId"] == "data_ffffffffffffffff"
    assert customer.http.get("/jobs").json()["total"] == 0
