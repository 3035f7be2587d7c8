"""Jobs: creation and escrow, matching, validation, listing, cancelling and rating."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import pytest

from tests.conftest import (
    Account,
    LiveServer,
    MakeAccount,
    assert_error,
    balance,
    job_body,
    new_account,
    resource_body,
)

# Requirements that no resource on the shared server can meet: the largest core count, memory
# and storage the API accepts, all at once.
UNMATCHABLE = {
    "minCpuCores": 4096,
    "minMemoryGb": 1_000_000,
    "minStorageGb": 1_000_000,
    "estimatedDurationHours": 1,
}


def sql(live: LiveServer, statement: str, *params: object) -> list[tuple[Any, ...]]:
    """Run one statement on the server's SQLite file and commit it."""
    with closing(sqlite3.connect(live.data_dir / "calctra.db", timeout=30)) as conn, conn:
        return conn.execute(statement, params).fetchall()


def complete_job(live: LiveServer, job_id: str, resource_id: str) -> None:
    # The provider protocol that takes a job from MATCHED to COMPLETED does not exist yet, so
    # the tests finish a job by writing its row directly.
    sql(
        live,
        "UPDATE jobs SET status = 'COMPLETED', assigned_resource_id = ? WHERE id = ?",
        resource_id,
        job_id,
    )


def job_count(acct: Account) -> int:
    return int(acct.http.get("/jobs").json()["total"])


def create_job(acct: Account, **overrides: object) -> str:
    response = acct.http.post("/jobs", json=job_body(**overrides))
    assert response.status_code == 201, response.text
    return str(response.json()["jobId"])


def get_job(acct: Account, job_id: str) -> dict[str, Any]:
    response = acct.http.get(f"/jobs/{job_id}")
    assert response.status_code == 200, response.text
    detail: dict[str, Any] = response.json()
    return detail


def transactions(acct: Account, **params: object) -> dict[str, Any]:
    response = acct.http.get("/tokens/transactions", params={"limit": 100, **params})
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


def parse_time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


# A market of our own: matching tests assert the exact list of matched resources, which a
# shared server's resources from other tests would spoil.


@dataclass
class Market:
    """A private server with a provider and a well-funded customer; resources offered through
    it are deleted when each test ends, so that the next test's jobs cannot match them."""

    live: LiveServer
    provider: Account
    customer: Account
    offered: list[tuple[Account, str]] = field(default_factory=list)

    def offer(self, owner: Account | None = None, **overrides: object) -> str:
        owner = owner or self.provider
        body = resource_body(specs={"cpuCores": 16, "memoryGb": 64, "storageGb": 500})
        body.update(overrides)
        response = owner.http.post("/resources", json=body)
        assert response.status_code == 201, response.text
        resource_id = str(response.json()["resourceId"])
        self.offered.append((owner, resource_id))
        return resource_id


@pytest.fixture(scope="module")
def market(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Market]:
    live = LiveServer(
        data_dir=tmp_path_factory.mktemp("market") / "data",
        flags=["--dev-faucet", "--rate-limit", "0"],
    )
    live.start()
    provider = new_account(live, "Provider Pia")
    customer = new_account(live, "Customer Cy", deposit=100_000)
    yield Market(live, provider, customer)
    provider.http.close()
    customer.http.close()
    live.stop()


@pytest.fixture
def shop(market: Market) -> Iterator[Market]:
    yield market
    for owner, resource_id in market.offered:
        deleted = owner.http.delete(f"/resources/{resource_id}")
        assert deleted.status_code == 200, deleted.text
    market.offered.clear()


def gpu_specs(memory_gb: float) -> dict[str, object]:
    return {
        "cpuCores": 16,
        "memoryGb": 64,
        "storageGb": 500,
        "gpuModel": "NVIDIA A100",
        "gpuMemoryGb": memory_gb,
    }


class Offer(Protocol):
    def __call__(self, **overrides: object) -> str: ...


@pytest.fixture
def offer(provider: Account) -> Iterator[Offer]:
    """Register resources of `provider` on the shared server. They are deleted when the test
    ends: rated ones would otherwise outrank every other test's resources for good."""
    offered: list[str] = []

    def make(**overrides: object) -> str:
        response = provider.http.post("/resources", json=resource_body(**overrides))
        assert response.status_code == 201, response.text
        offered.append(str(response.json()["resourceId"]))
        return offered[-1]

    yield make
    for resource_id in offered:
        deleted = provider.http.delete(f"/resources/{resource_id}")
        assert deleted.status_code == 200, deleted.text


# Creating a job and its escrow


def test_create_job_answers_201_with_job_id_and_estimated_matching(customer: Account) -> None:
    before = datetime.now(UTC)
    response = customer.http.post("/jobs", json=job_body(requirements=UNMATCHABLE))
    assert response.status_code == 201, response.text
    body = response.json()
    assert body["message"] == "Job created successfully"
    assert body["jobId"]
    # Nothing fits, so matching is expected at the background matcher's next pass.
    assert parse_time(body["estimatedMatching"]) > before
    assert get_job(customer, body["jobId"])["status"] == "CREATED"


def test_create_job_moves_the_budget_into_a_pending_escrow(customer: Account) -> None:
    job_id = create_job(customer, budget=125.5, requirements=UNMATCHABLE)

    assert balance(customer) == pytest.approx(1000 - 125.5)
    pending = customer.http.get("/tokens/balance").json()["pendingTransactions"]
    assert len(pending) == 1
    assert pending[0]["type"] == "ESCROW"
    assert pending[0]["status"] == "PENDING"
    assert pending[0]["amount"] == pytest.approx(125.5)
    assert pending[0]["relatedEntity"] == {"type": "JOB", "id": job_id}


def test_budget_equal_to_the_whole_balance_is_accepted(accounts: MakeAccount) -> None:
    acct = accounts("Exact Ed", deposit=42.5)
    create_job(acct, budget=42.5, requirements=UNMATCHABLE)
    assert balance(acct) == 0


def test_budget_above_the_balance_is_insufficient_funds_and_changes_nothing(
    customer: Account,
) -> None:
    response = customer.http.post("/jobs", json=job_body(budget=1000.000001))

    assert_error(response, 402, "INSUFFICIENT_FUNDS")
    assert balance(customer) == 1000
    assert job_count(customer) == 0
    assert transactions(customer, type="ESCROW")["total"] == 0


def test_parallel_jobs_never_escrow_more_than_the_balance(
    server: LiveServer, accounts: MakeAccount
) -> None:
    acct = accounts("Racing Rae", deposit=100)
    barrier = threading.Barrier(20)
    outcomes: list[tuple[int, str | None]] = []
    lock = threading.Lock()

    def post_job() -> None:
        with server.client(acct.token) as http:
            barrier.wait()
            response = http.post("/jobs", json=job_body(budget=10, requirements=UNMATCHABLE))
        code = response.json().get("error", {}).get("code")
        with lock:
            outcomes.append((response.status_code, code))

    threads = [threading.Thread(target=post_job) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(outcomes, key=str) == [(201, None)] * 10 + [(402, "INSUFFICIENT_FUNDS")] * 10
    assert balance(acct) == 0
    assert transactions(acct, type="ESCROW")["total"] == 10
    assert job_count(acct) == 10


# Matching


def test_job_is_matched_to_a_fitting_resource_at_creation(shop: Market) -> None:
    resource_id = shop.offer()
    response = shop.customer.http.post("/jobs", json=job_body())
    assert response.status_code == 201, response.text

    detail = get_job(shop.customer, response.json()["jobId"])
    assert detail["status"] == "MATCHED"
    assert detail["matchedResources"] == [resource_id]
    assert parse_time(response.json()["estimatedMatching"]) <= datetime.now(UTC)


def test_job_stays_created_until_a_fitting_resource_appears(shop: Market) -> None:
    shop.offer()  # 16 cores: too few
    job_id = create_job(
        shop.customer, requirements={"minCpuCores": 64, "estimatedDurationHours": 1}
    )
    assert get_job(shop.customer, job_id)["status"] == "CREATED"
    assert get_job(shop.customer, job_id)["matchedResources"] == []

    big = shop.offer(specs={"cpuCores": 64, "memoryGb": 256, "storageGb": 1000})
    deadline = time.monotonic() + 12
    detail = get_job(shop.customer, job_id)
    while detail["status"] == "CREATED" and time.monotonic() < deadline:
        time.sleep(0.25)
        detail = get_job(shop.customer, job_id)
    assert detail["status"] == "MATCHED"
    assert detail["matchedResources"] == [big]


def test_matches_come_best_reputation_first_then_lowest_price(shop: Market) -> None:
    pricey = shop.offer(pricePerHour=3.0)
    cheap = shop.offer(pricePerHour=1.0)
    star = shop.offer(pricePerHour=2.0)
    decent = shop.offer(pricePerHour=2.5)
    for resource_id, rating in [(star, 5), (decent, 2)]:
        job_id = create_job(shop.customer)
        complete_job(shop.live, job_id, resource_id)
        rated = shop.customer.http.post(f"/jobs/{job_id}/rate", json={"rating": rating})
        assert rated.status_code == 200, rated.text

    job_id = create_job(shop.customer)
    assert get_job(shop.customer, job_id)["matchedResources"] == [star, decent, cheap, pricey]


def test_resources_whose_price_for_the_estimate_exceeds_the_budget_are_not_matched(
    shop: Market,
) -> None:
    fits_exactly = shop.offer(pricePerHour=2.5)  # 4 h x 2.5 = 10, the whole budget
    too_dear = shop.offer(pricePerHour=2.51)
    job_id = create_job(
        shop.customer, budget=10, requirements={"minCpuCores": 2, "estimatedDurationHours": 4}
    )
    assert get_job(shop.customer, job_id)["matchedResources"] == [fits_exactly]
    assert too_dear not in get_job(shop.customer, job_id)["matchedResources"]


def test_job_with_a_tiny_estimate_is_matched_like_any_other(shop: Market) -> None:
    # budget / hours is the most a resource may charge per hour: here far beyond 64 bits.
    resource_id = shop.offer()
    job_id = create_job(
        shop.customer, requirements={"minCpuCores": 2, "estimatedDurationHours": 1e-12}
    )
    assert get_job(shop.customer, job_id)["matchedResources"] == [resource_id]


def test_gpu_jobs_match_only_gpu_resources_with_enough_gpu_memory(shop: Market) -> None:
    shop.offer()  # no GPU
    small_gpu = shop.offer(specs=gpu_specs(24), pricePerHour=1.0)
    big_gpu = shop.offer(specs=gpu_specs(80), pricePerHour=1.5)

    needs_40 = create_job(
        shop.customer,
        requirements={"needsGpu": True, "minGpuMemoryGb": 40, "estimatedDurationHours": 1},
    )
    any_gpu = create_job(
        shop.customer, requirements={"needsGpu": True, "estimatedDurationHours": 1}
    )

    assert get_job(shop.customer, needs_40)["matchedResources"] == [big_gpu]
    assert get_job(shop.customer, any_gpu)["matchedResources"] == [small_gpu, big_gpu]


def test_gpu_of_unstated_memory_matches_only_jobs_that_name_no_gpu_memory(
    shop: Market,
) -> None:
    unstated = shop.offer(
        specs={"cpuCores": 16, "memoryGb": 64, "storageGb": 500, "gpuModel": "RTX 4090"}
    )
    any_gpu = create_job(
        shop.customer, requirements={"needsGpu": True, "estimatedDurationHours": 1}
    )
    needs_8 = create_job(
        shop.customer,
        requirements={"needsGpu": True, "minGpuMemoryGb": 8, "estimatedDurationHours": 1},
    )
    assert get_job(shop.customer, any_gpu)["matchedResources"] == [unstated]
    assert get_job(shop.customer, needs_8)["matchedResources"] == []


def test_gpu_job_with_no_gpu_on_offer_stays_created(shop: Market) -> None:
    shop.offer()
    job_id = create_job(
        shop.customer, requirements={"needsGpu": True, "estimatedDurationHours": 1}
    )
    assert get_job(shop.customer, job_id)["status"] == "CREATED"


def test_inactive_resources_are_not_matched(shop: Market) -> None:
    active = shop.offer(pricePerHour=2.0)
    inactive = shop.offer(pricePerHour=1.0)
    # The API has no way to take a resource offline (the provider protocol will); the column
    # exists, so the test sets it directly.
    sql(shop.live, "UPDATE resources SET active = 0 WHERE id = ?", inactive)

    job_id = create_job(shop.customer)
    assert get_job(shop.customer, job_id)["matchedResources"] == [active]


def test_resources_outside_their_availability_window_are_not_matched(shop: Market) -> None:
    now = datetime.now(UTC)
    # Leave out tomorrow too, in case the clock passes midnight during the test.
    excluded = {now.isoweekday(), (now + timedelta(days=1)).isoweekday()}
    closed_days = [day for day in range(1, 8) if day not in excluded]
    closed = shop.offer(
        pricePerHour=1.0,
        availability={
            "schedule": {"days": closed_days, "startHour": 0, "endHour": 0},
            "timezone": "UTC",
        },
    )
    open_today = shop.offer(
        pricePerHour=2.0,
        availability={
            "schedule": {"days": sorted(excluded), "startHour": 0, "endHour": 0},
            "timezone": "UTC",
        },
    )

    job_id = create_job(shop.customer)
    matched = get_job(shop.customer, job_id)["matchedResources"]
    assert matched == [open_today]
    assert closed not in matched


def test_nobody_is_matched_to_their_own_resources(shop: Market) -> None:
    own = shop.offer()
    funded = shop.provider.http.post("/tokens/deposit", json={"amount": 50})
    assert funded.status_code == 201, funded.text

    job_id = create_job(shop.provider)
    assert get_job(shop.provider, job_id)["status"] == "CREATED"
    assert get_job(shop.customer, create_job(shop.customer))["matchedResources"] == [own]


def test_matcher_fails_an_unstarted_job_past_its_deadline_and_refunds_it(shop: Market) -> None:
    before = balance(shop.customer)
    job_id = create_job(
        shop.customer,
        budget=30,
        requirements=UNMATCHABLE,
        deadline=(datetime.now(UTC) + timedelta(hours=2)).isoformat(),
    )
    assert balance(shop.customer) == before - 30
    # Waiting out a real deadline takes at least an hour: move it into the past instead.
    sql(shop.live, "UPDATE jobs SET deadline = '2000-01-01 00:00:00.000000' WHERE id = ?", job_id)

    deadline = time.monotonic() + 12
    while get_job(shop.customer, job_id)["status"] != "FAILED" and time.monotonic() < deadline:
        time.sleep(0.25)
    assert get_job(shop.customer, job_id)["status"] == "FAILED"
    assert balance(shop.customer) == before
    refunds = transactions(shop.customer, type="REFUND")["transactions"]
    assert [tx["amount"] for tx in refunds if tx["relatedEntity"]["id"] == job_id] == [30]


# Validation: every bad job gets 400 and changes nothing


@pytest.fixture(scope="module")
def patient(server: LiveServer) -> Iterator[Account]:
    """One funded customer for all the bad requests; none of them may create anything."""
    acct = new_account(server, "Patient Pam", deposit=500)
    yield acct
    acct.http.close()


def _hours_from_now(hours: float, tz: bool = True) -> str:
    moment = datetime.now(UTC) + timedelta(hours=hours)
    return moment.isoformat() if tz else moment.replace(tzinfo=None).isoformat()


BAD_JOBS: dict[str, dict[str, object]] = {
    "requirements without estimatedDurationHours": {"requirements": {"minCpuCores": 2}},
    "zero estimatedDurationHours": {"requirements": {"estimatedDurationHours": 0}},
    "zero budget": {"budget": 0},
    "negative budget": {"budget": -10},
    "budget above 1e9": {"budget": 1_000_000_001},
    "budget as a string": {"budget": "10"},
    "budget as a huge integer": {"budget": 10**400},
    "budget 1e308": {"budget": 1e308},
    "minCpuCores as a float": {"requirements": {"minCpuCores": 2.5, "estimatedDurationHours": 1}},
    "minCpuCores huge": {"requirements": {"minCpuCores": 10**30, "estimatedDurationHours": 1}},
    "minCpuCores zero": {"requirements": {"minCpuCores": 0, "estimatedDurationHours": 1}},
    "minMemoryGb negative": {"requirements": {"minMemoryGb": -1, "estimatedDurationHours": 1}},
    "estimatedDurationHours huge": {"requirements": {"estimatedDurationHours": 1e300}},
    "needsGpu as a string": {"requirements": {"needsGpu": "yes", "estimatedDurationHours": 1}},
    "minGpuMemoryGb without needsGpu": {
        "requirements": {"needsGpu": False, "minGpuMemoryGb": 24, "estimatedDurationHours": 1}
    },
    "unknown requirement": {"requirements": {"minQubits": 5, "estimatedDurationHours": 1}},
    "unknown job type": {"type": "docker_image"},
    "empty code": {"code": ""},
    "missing code": {"code": None},
    "empty name": {"name": ""},
    "unknown top-level field": {"priority": "high"},
    "datasets not a list": {"datasets": "data_1"},
    "deadline in the past": {"deadline": "2020-01-01T00:00:00Z"},
    "deadline not a date": {"deadline": "next tuesday"},
    "deadline beyond the last year in UTC": {"deadline": "9999-12-31T23:00:00-05:00"},
}


@pytest.mark.parametrize(
    "overrides", BAD_JOBS.values(), ids=[name.replace(" ", "-") for name in BAD_JOBS]
)
def test_bad_job_is_a_validation_error_and_changes_nothing(
    patient: Account, overrides: dict[str, object]
) -> None:
    body = job_body(**overrides)
    body = {key: value for key, value in body.items() if value is not None}

    assert_error(patient.http.post("/jobs", json=body), 400, "VALIDATION_ERROR")
    assert balance(patient) == 500
    assert job_count(patient) == 0


def test_deadline_without_a_timezone_is_a_validation_error(patient: Account) -> None:
    body = job_body(deadline=_hours_from_now(48, tz=False))
    assert_error(patient.http.post("/jobs", json=body), 400, "VALIDATION_ERROR")
    assert balance(patient) == 500
    assert job_count(patient) == 0


def test_deadline_sooner_than_the_estimated_duration_is_a_validation_error(
    patient: Account,
) -> None:
    body = job_body(
        requirements={"minCpuCores": 2, "estimatedDurationHours": 3},
        deadline=_hours_from_now(2),
    )
    details = assert_error(patient.http.post("/jobs", json=body), 400, "VALIDATION_ERROR")
    assert details["field"] == "deadline"
    assert balance(patient) == 500
    assert job_count(patient) == 0


def test_body_that_is_not_json_is_a_validation_error(patient: Account) -> None:
    response = patient.http.post(
        "/jobs", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert_error(response, 400, "VALIDATION_ERROR")
    assert job_count(patient) == 0


def test_unknown_dataset_is_not_found_and_changes_nothing(patient: Account) -> None:
    response = patient.http.post("/jobs", json=job_body(datasets=["data_doesnotexist"]))
    details = assert_error(response, 404, "RESOURCE_NOT_FOUND")
    assert details["datasetId"] == "data_doesnotexist"
    assert balance(patient) == 500
    assert job_count(patient) == 0


def test_creating_a_job_needs_a_token(server: LiveServer) -> None:
    with server.client() as anonymous:
        assert_error(anonymous.post("/jobs", json=job_body()), 401, "AUTHENTICATION_REQUIRED")


def test_a_job_with_a_fitting_deadline_is_accepted(customer: Account) -> None:
    deadline = _hours_from_now(5)
    job_id = create_job(
        customer,
        requirements={"minCpuCores": 2, "estimatedDurationHours": 4},
        deadline=deadline,
    )
    assert parse_time(get_job(customer, job_id)["deadline"]) == parse_time(deadline)


# Listing and reading


def test_jobs_list_filters_by_status(customer: Account, offer: Offer) -> None:
    offer()
    matched = create_job(customer)
    waiting = create_job(customer, requirements=UNMATCHABLE)
    cancelled = create_job(customer, requirements=UNMATCHABLE)
    customer.http.post(f"/jobs/{cancelled}/cancel").raise_for_status()

    def ids(status: str) -> list[str]:
        page = customer.http.get("/jobs", params={"status": status}).json()
        assert page["total"] == len(page["jobs"])
        return [job["id"] for job in page["jobs"]]

    assert ids("MATCHED") == [matched]
    assert ids("CREATED") == [waiting]
    assert ids("CANCELLED") == [cancelled]
    assert ids("COMPLETED") == []


def test_jobs_list_with_unknown_status_is_a_validation_error(customer: Account) -> None:
    assert_error(customer.http.get("/jobs", params={"status": "DONE"}), 400, "VALIDATION_ERROR")


def test_jobs_list_pages_newest_first_with_total(customer: Account) -> None:
    created = [create_job(customer, name=f"job {n}", requirements=UNMATCHABLE) for n in range(5)]

    pages = [
        customer.http.get("/jobs", params={"page": page, "limit": 2}).json() for page in (1, 2, 3)
    ]
    assert [page["total"] for page in pages] == [5, 5, 5]
    assert [len(page["jobs"]) for page in pages] == [2, 2, 1]
    listed = [job["id"] for page in pages for job in page["jobs"]]
    assert listed == list(reversed(created))

    beyond = customer.http.get("/jobs", params={"page": 4, "limit": 2}).json()
    assert beyond["total"] == 5
    assert beyond["jobs"] == []


def test_jobs_list_shows_only_the_callers_jobs(customer: Account, accounts: MakeAccount) -> None:
    mine = create_job(customer, requirements=UNMATCHABLE)
    other = accounts("Other Otto", deposit=50)
    create_job(other, requirements=UNMATCHABLE)

    page = customer.http.get("/jobs").json()
    assert page["total"] == 1
    assert [job["id"] for job in page["jobs"]] == [mine]


def test_job_detail_includes_code_and_what_was_asked(customer: Account) -> None:
    job_id = create_job(
        customer, code="print(6 * 7)", budget=12.5, requirements=UNMATCHABLE, name="answer"
    )

    detail = get_job(customer, job_id)
    assert detail["id"] == job_id
    assert detail["code"] == "print(6 * 7)"
    assert detail["name"] == "answer"
    assert detail["budget"] == 12.5
    assert detail["requirements"]["minCpuCores"] == 4096
    assert detail["requirements"]["estimatedDurationHours"] == 1
    assert detail["progress"] == 0


def test_another_users_job_is_permission_denied(customer: Account, accounts: MakeAccount) -> None:
    job_id = create_job(customer, requirements=UNMATCHABLE)
    stranger = accounts("Stranger Sam")

    details = assert_error(stranger.http.get(f"/jobs/{job_id}"), 403, "PERMISSION_DENIED")
    assert details["jobId"] == job_id


def test_unknown_job_is_not_found(customer: Account) -> None:
    details = assert_error(customer.http.get("/jobs/job_nope"), 404, "RESOURCE_NOT_FOUND")
    assert details["jobId"] == "job_nope"


# Cancelling


def assert_refunded(acct: Account, job_id: str, amount: float) -> None:
    refunds = transactions(acct, type="REFUND")["transactions"]
    assert [(tx["amount"], tx["relatedEntity"]) for tx in refunds] == [
        (amount, {"type": "JOB", "id": job_id})
    ]
    escrows = transactions(acct, type="ESCROW")["transactions"]
    assert [tx["status"] for tx in escrows if tx["relatedEntity"]["id"] == job_id] == ["COMPLETED"]
    assert acct.http.get("/tokens/balance").json()["pendingTransactions"] == []


def test_cancelling_a_matched_job_refunds_its_escrow(customer: Account, offer: Offer) -> None:
    offer()
    job_id = create_job(customer, budget=40)
    assert get_job(customer, job_id)["status"] == "MATCHED"
    assert balance(customer) == 960

    response = customer.http.post(f"/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["message"] == "Job cancelled successfully"
    assert get_job(customer, job_id)["status"] == "CANCELLED"
    assert balance(customer) == 1000
    assert_refunded(customer, job_id, 40)


def test_cancelling_a_waiting_job_refunds_its_escrow(customer: Account) -> None:
    job_id = create_job(customer, budget=15.25, requirements=UNMATCHABLE)
    customer.http.post(f"/jobs/{job_id}/cancel").raise_for_status()

    assert get_job(customer, job_id)["status"] == "CANCELLED"
    assert balance(customer) == 1000
    assert_refunded(customer, job_id, 15.25)


def test_cancelling_twice_is_a_conflict_and_refunds_once(customer: Account) -> None:
    job_id = create_job(customer, budget=20, requirements=UNMATCHABLE)
    customer.http.post(f"/jobs/{job_id}/cancel").raise_for_status()

    details = assert_error(customer.http.post(f"/jobs/{job_id}/cancel"), 409, "CONFLICT")
    assert details["jobId"] == job_id
    assert balance(customer) == 1000
    assert transactions(customer, type="REFUND")["total"] == 1


def test_only_the_owner_may_cancel_a_job(customer: Account, accounts: MakeAccount) -> None:
    job_id = create_job(customer, budget=20, requirements=UNMATCHABLE)
    stranger = accounts("Stranger Sid", deposit=5)

    assert_error(stranger.http.post(f"/jobs/{job_id}/cancel"), 403, "PERMISSION_DENIED")
    assert get_job(customer, job_id)["status"] == "CREATED"
    assert balance(customer) == 980
    assert balance(stranger) == 5


def test_cancelling_an_unknown_job_is_not_found(customer: Account) -> None:
    details = assert_error(customer.http.post("/jobs/job_nope/cancel"), 404, "RESOURCE_NOT_FOUND")
    assert details["jobId"] == "job_nope"


# Rating


@pytest.fixture
def completed(server: LiveServer, customer: Account, offer: Offer) -> tuple[str, str]:
    """A COMPLETED job of `customer` that ran on a fresh resource of `provider`:
    (job id, resource id)."""
    resource_id = offer()
    job_id = create_job(customer)
    complete_job(server, job_id, resource_id)
    return job_id, resource_id


def reputation_of(acct: Account, resource_id: str) -> float:
    return float(acct.http.get(f"/resources/{resource_id}").json()["reputation"])


def test_rating_a_completed_job_feeds_resource_and_provider_reputation(
    server: LiveServer, customer: Account, provider: Account, completed: tuple[str, str]
) -> None:
    job_id, resource_id = completed
    response = customer.http.post(f"/jobs/{job_id}/rate", json={"rating": 4, "feedback": "ok"})
    assert response.status_code == 200, response.text
    assert response.json()["message"] == "Job rated successfully"
    assert get_job(customer, job_id)["rating"] == 4
    assert reputation_of(customer, resource_id) == 4.0
    assert provider.http.get("/users/me").json()["reputation"] == 4.0

    second = create_job(customer)
    complete_job(server, second, resource_id)
    customer.http.post(f"/jobs/{second}/rate", json={"rating": 1}).raise_for_status()
    assert reputation_of(customer, resource_id) == 2.5
    assert provider.http.get("/users/me").json()["reputation"] == 2.5


def test_rating_a_job_that_is_not_completed_is_a_conflict(customer: Account, offer: Offer) -> None:
    resource_id = offer()
    job_id = create_job(customer)
    assert get_job(customer, job_id)["status"] == "MATCHED"

    details = assert_error(
        customer.http.post(f"/jobs/{job_id}/rate", json={"rating": 5}), 409, "CONFLICT"
    )
    assert details["jobId"] == job_id
    assert get_job(customer, job_id)["rating"] is None
    assert reputation_of(customer, resource_id) == 0


def test_rating_outside_one_to_five_is_a_validation_error(
    customer: Account, completed: tuple[str, str]
) -> None:
    job_id, resource_id = completed
    for rating in [0, 6, -1, "5", 4.5, None, True]:
        response = customer.http.post(f"/jobs/{job_id}/rate", json={"rating": rating})
        assert_error(response, 400, "VALIDATION_ERROR")
    assert_error(customer.http.post(f"/jobs/{job_id}/rate", json={}), 400, "VALIDATION_ERROR")

    assert get_job(customer, job_id)["rating"] is None
    assert reputation_of(customer, resource_id) == 0


def test_ratings_at_the_bounds_are_accepted(
    server: LiveServer, customer: Account, offer: Offer
) -> None:
    for rating in (1, 5):
        resource_id = offer()
        job_id = create_job(customer)
        complete_job(server, job_id, resource_id)
        customer.http.post(f"/jobs/{job_id}/rate", json={"rating": rating}).raise_for_status()
        assert reputation_of(customer, resource_id) == rating


def test_rating_twice_is_a_conflict_and_keeps_the_first_rating(
    customer: Account, completed: tuple[str, str]
) -> None:
    job_id, resource_id = completed
    customer.http.post(f"/jobs/{job_id}/rate", json={"rating": 5}).raise_for_status()

    assert_error(customer.http.post(f"/jobs/{job_id}/rate", json={"rating": 1}), 409, "CONFLICT")
    assert get_job(customer, job_id)["rating"] == 5
    assert reputation_of(customer, resource_id) == 5


def test_only_the_owner_may_rate_a_job(
    customer: Account, accounts: MakeAccount, completed: tuple[str, str]
) -> None:
    job_id, resource_id = completed
    stranger = accounts("Stranger Stu")

    response = stranger.http.post(f"/jobs/{job_id}/rate", json={"rating": 1})
    assert_error(response, 403, "PERMISSION_DENIED")
    assert get_job(customer, job_id)["rating"] is None
    assert reputation_of(customer, resource_id) == 0
