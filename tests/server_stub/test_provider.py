"""The provider protocol: heartbeats, long-polled offers, accepting, declining and reports.

The module runs a server of its own, and each test's market cancels its jobs and deletes its
resources at the end: a job is matched to every active resource that fits it, so a resource
left over from one test would be offered the next test's jobs.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from calctra_agent.wire import DeclineReason
from tests.conftest import Account, LiveServer, MakeServer, balance, new_account, resource_body
from tests.server_stub.provider_support import (
    SERVER_FLAGS,
    AgentClient,
    Market,
    assert_error,
    eventually,
    get_job,
    heartbeat_body,
    ledger_is_consistent,
    sql,
    start_server,
    subscribed,
)

OFFER_FIELDS = {"jobId", "name", "type", "requirements", "datasets", "budget", "deadline",
                "createdAt", "image"}  # fmt: skip


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from start_server(tmp_path_factory.mktemp("provider") / "data")


@pytest.fixture(scope="module")
def people(live: LiveServer) -> Iterator[tuple[Account, list[Account]]]:
    """A customer and three providers, shared by the module's tests: registering a user costs
    more than most tests."""
    buyer = new_account(live, "Customer Carol", deposit=10_000)
    owners = [new_account(live, f"Provider {name}") for name in ("Pat", "Quinn", "Rui")]
    yield buyer, owners
    for acct in [buyer, *owners]:
        acct.http.close()


@pytest.fixture
def market(live: LiveServer, people: tuple[Account, list[Account]]) -> Iterator[Market]:
    market = Market(live, owners=people[1])
    yield market
    market.close()


@pytest.fixture
def buyer(people: tuple[Account, list[Account]]) -> Account:
    """The customer, with plenty of tokens."""
    return people[0]


@pytest.fixture
def agent(market: Market) -> AgentClient:
    """The only resource on the market, with its agent."""
    return market.agent()


def poll(agent: AgentClient, wait_s: float) -> tuple[dict[str, Any], float]:
    """Long-poll on a client of its own (for a thread); returns the batch and when it came."""
    with httpx.Client(base_url=agent.http.base_url, headers=agent.http.headers) as http:
        response = http.get("/provider/offers", params={"waitS": wait_s}, timeout=wait_s + 10)
    assert response.status_code == 200, response.text
    return response.json(), time.monotonic()


def accepted_job(market: Market, buyer: Account, agent: AgentClient, **job: object) -> str:
    job_id = market.job(buyer, **job)
    agent.accept(job_id)
    return job_id


def running_job(market: Market, buyer: Account, agent: AgentClient) -> str:
    job_id = accepted_job(market, buyer, agent)
    assert agent.report(job_id, "RUNNING", progress=10).status_code == 200
    return job_id


# Heartbeats


def resource_active(owner: Account, resource_id: str) -> bool:
    return bool(owner.http.get(f"/resources/{resource_id}").json()["active"])


def test_heartbeat_answers_the_interval_with_jitter(agent: AgentClient) -> None:
    answers = [agent.heartbeat() for _ in range(20)]

    intervals = [answer["nextHeartbeatInS"] for answer in answers]
    assert all(27 <= interval <= 33 for interval in intervals), intervals
    assert len(set(intervals)) > 1, "agents started together would stay in step"
    assert all(answer["active"] is True and answer["cancelledJobs"] == [] for answer in answers)
    server_time = datetime.fromisoformat(answers[-1]["serverTime"].replace("Z", "+00:00"))
    assert abs((server_time - datetime.now(UTC)).total_seconds()) < 5


def recorded_heartbeat(live: LiveServer, resource_id: str) -> tuple[Any, ...]:
    ((row),) = sql(
        live,
        "SELECT agent_version, utilization, last_heartbeat_at, active FROM resources WHERE id = ?",
        resource_id,
    )
    return tuple(row)


def test_heartbeat_is_recorded_within_a_second(live: LiveServer, agent: AgentClient) -> None:
    # Heartbeats are written in batches, once a second.
    agent.heartbeat(agentVersion="9.9.9")

    assert eventually(lambda: recorded_heartbeat(live, agent.resource_id)[0] == "9.9.9", 2.0)
    _, utilization, last, _ = recorded_heartbeat(live, agent.resource_id)
    assert json.loads(utilization) == heartbeat_body()["utilization"]
    assert last is not None


def test_heartbeat_makes_an_inactive_resource_active(live: LiveServer, agent: AgentClient) -> None:
    sql(live, "UPDATE resources SET active = 0 WHERE id = ?", agent.resource_id)
    assert not resource_active(agent.owner, agent.resource_id)

    answer = agent.heartbeat()

    assert answer["active"] is True
    assert eventually(lambda: resource_active(agent.owner, agent.resource_id), 2.0)


def test_heartbeat_with_bad_utilization_is_a_validation_error(agent: AgentClient) -> None:
    bad = heartbeat_body(utilization={"cpuPercent": 150, "memoryUsedGb": 1})

    response = agent.http.post("/provider/heartbeat", json=bad)

    fields = assert_error(response, 400, "VALIDATION_ERROR")["fields"]
    assert [field["field"] for field in fields] == ["utilization.cpuPercent"]


def test_silent_resource_turns_inactive_and_gets_no_matches(make_server: MakeServer) -> None:
    live = make_server(*SERVER_FLAGS, "--heartbeat-timeout", "2", "--heartbeat-interval", "1")
    market = Market(live)
    try:
        customer, owner = market.account("Customer Carol", deposit=100), market.account()
        silent = market.agent(owner)
        without_agent = market.agent(owner)  # registered through the API; it never sends one
        started = time.monotonic()
        assert 0.9 <= silent.heartbeat()["nextHeartbeatInS"] <= 1.1

        assert eventually(lambda: not resource_active(owner, silent.resource_id), 10)
        # The heartbeat's write (up to 1 s), the timeout (2 s), the next look (every 1 s).
        assert time.monotonic() - started < 5
        assert resource_active(owner, without_agent.resource_id)
        job_id = market.job(customer)
        assert get_job(customer, job_id)["matchedResources"] == [without_agent.resource_id]
        silent.heartbeat()
        assert eventually(lambda: resource_active(owner, silent.resource_id), 2.0)
    finally:
        market.close()


# Offers: the long poll


def test_long_poll_answers_as_soon_as_a_job_is_matched(
    market: Market, buyer: Account, agent: AgentClient
) -> None:
    with ThreadPoolExecutor(max_workers=1) as pool:
        polling = pool.submit(poll, agent, 10)
        time.sleep(0.5)
        assert not polling.done(), "the poll answered before anything arrived"
        posted_at = time.monotonic()
        job_id = market.job(buyer)
        batch, answered_at = polling.result(timeout=15)

    assert [offer["jobId"] for offer in batch["offers"]] == [job_id]
    assert answered_at - posted_at < 1.0
    assert set(batch["offers"][0]) == OFFER_FIELDS, "an offer carries no code"
    assert batch["cancelledJobs"] == []


def test_long_poll_answers_at_once_when_an_offer_waits(
    market: Market, buyer: Account, agent: AgentClient
) -> None:
    job_id = market.job(buyer)
    started = time.monotonic()

    batch, answered_at = poll(agent, 10)

    assert [offer["jobId"] for offer in batch["offers"]] == [job_id]
    assert answered_at - started < 1.0


def test_long_poll_times_out_with_empty_lists(agent: AgentClient) -> None:
    started = time.monotonic()

    batch, answered_at = poll(agent, 1.5)

    assert batch == {"offers": [], "cancelledJobs": []}
    assert 1.5 <= answered_at - started < 3.0


@pytest.mark.parametrize("wait_s", ["-1", "61", "soon"])
def test_long_poll_wait_outside_0_to_60_is_a_validation_error(
    agent: AgentClient, wait_s: str
) -> None:
    response = agent.http.get("/provider/offers", params={"waitS": wait_s})

    assert_error(response, 400, "VALIDATION_ERROR")


def test_offer_describes_the_job(market: Market, buyer: Account, agent: AgentClient) -> None:
    job_id = market.job(buyer, name="render", budget=12.5)

    (offer,) = agent.offers()["offers"]

    assert offer["jobId"] == job_id
    assert (offer["name"], offer["type"], offer["budget"]) == ("render", "custom_code", 12.5)
    assert offer["requirements"]["minCpuCores"] == 2


# Accepting


def accept_at_once(agents: list[AgentClient], job_id: str) -> list[httpx.Response]:
    """Each agent accepts `job_id` from a thread of its own, all released together."""
    barrier = threading.Barrier(len(agents))

    def accept(agent: AgentClient) -> httpx.Response:
        barrier.wait()
        return agent.http.post(f"/provider/offers/{job_id}/accept")

    with ThreadPoolExecutor(max_workers=len(agents)) as pool:
        return list(pool.map(accept, agents))


def test_concurrent_accepts_give_the_job_to_exactly_one_resource(
    market: Market, buyer: Account
) -> None:
    first, second = market.agent(pricePerHour=2.0), market.agent(pricePerHour=3.0)
    for _ in range(3):
        job_id = market.job(buyer)
        matched = set(get_job(buyer, job_id)["matchedResources"])
        assert matched == {first.resource_id, second.resource_id}

        responses = accept_at_once([first, second], job_id)

        assert sorted(r.status_code for r in responses) == [200, 409]
        winner, loser = (first, 1) if responses[0].status_code == 200 else (second, 0)
        assert assert_error(responses[loser], 409, "CONFLICT")["status"] == "ACCEPTED"
        owner_view = get_job(buyer, job_id)
        assert (owner_view["status"], owner_view["assignedResource"]) == (
            "ACCEPTED",
            winner.resource_id,
        )
        won = responses[1 - loser].json()
        assert won["pricePerHour"] == (2.0 if winner is first else 3.0)


def test_accepted_job_carries_the_code_and_is_no_longer_offered(
    market: Market, buyer: Account
) -> None:
    taker, other = market.agent(), market.agent()
    job_id = market.job(buyer, code="print(42)")

    job = taker.accept(job_id)

    assert (job["jobId"], job["code"], job["status"]) == (job_id, "print(42)", "ACCEPTED")
    assert job["pricePerHour"] == 2.0 and job["acceptedAt"]
    assert taker.offered_ids() == [] and other.offered_ids() == []
    late = other.http.post(f"/provider/offers/{job_id}/accept")
    assert assert_error(late, 409, "CONFLICT")["status"] == "ACCEPTED"


def test_holder_accepting_again_gets_the_job_again(
    market: Market, buyer: Account, agent: AgentClient
) -> None:
    job_id = market.job(buyer)
    first = agent.accept(job_id)

    again = agent.accept(job_id)

    assert again == first


def test_accepting_a_job_not_offered_is_denied(market: Market, buyer: Account) -> None:
    cheap = market.agent(pricePerHour=1.0)
    job_id = market.job(buyer)
    outsider = market.agent()  # registered after the match

    denied = outsider.http.post(f"/provider/offers/{job_id}/accept")
    unknown = outsider.http.post("/provider/offers/job_missing/accept")

    assert assert_error(denied, 403, "PERMISSION_DENIED")["jobId"] == job_id
    assert assert_error(unknown, 404, "RESOURCE_NOT_FOUND")["jobId"] == "job_missing"
    assert cheap.offered_ids() == [job_id]


def test_accepting_a_cancelled_job_is_a_conflict(
    market: Market, buyer: Account, agent: AgentClient
) -> None:
    job_id = market.job(buyer)
    assert buyer.http.post(f"/jobs/{job_id}/cancel").status_code == 200

    response = agent.http.post(f"/provider/offers/{job_id}/accept")

    assert assert_error(response, 409, "CONFLICT")["status"] == "CANCELLED"


# Declining


def test_decline_for_any_reason_passes_the_job_on_then_back_to_the_matcher(
    market: Market, buyer: Account, live: LiveServer
) -> None:
    first, second = market.agent(), market.agent()
    jobs = []
    for reason in DeclineReason:
        job_id = market.job(buyer)
        jobs.append(job_id)

        passed = first.http.post(
            f"/provider/offers/{job_id}/decline", json={"reason": reason, "message": "busy"}
        )

        assert passed.status_code == 200, (reason, passed.text)
        job = get_job(buyer, job_id)
        assert (job["status"], job["matchedResources"]) == ("MATCHED", [second.resource_id])
        assert job_id not in first.offered_ids() and job_id in second.offered_ids()
        assert_error(
            first.http.post(f"/provider/offers/{job_id}/accept"), 403, "PERMISSION_DENIED"
        )

        last = second.http.post(f"/provider/offers/{job_id}/decline", json={"reason": reason})

        assert last.status_code == 200, (reason, last.text)
        job = get_job(buyer, job_id)
        assert (job["status"], job["matchedResources"]) == ("CREATED", [])

    # The background matcher matches them again, to a new resource but never to a decliner.
    newcomer = market.agent()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and get_job(buyer, jobs[-1])["status"] == "CREATED":
        time.sleep(0.2)
    for job_id in jobs:
        assert get_job(buyer, job_id)["matchedResources"] == [newcomer.resource_id]
    assert first.offered_ids() == [] and second.offered_ids() == []
    declines = sql(live, "SELECT reason FROM job_declines WHERE job_id = ?", jobs[0])
    assert declines == [(DeclineReason.INSUFFICIENT_CAPACITY.value,)] * 2


def test_declining_twice_answers_ok_and_changes_nothing(market: Market, buyer: Account) -> None:
    first, second = market.agent(), market.agent()
    job_id = market.job(buyer)
    body = {"reason": "BUDGET_TOO_LOW"}

    once = first.http.post(f"/provider/offers/{job_id}/decline", json=body)
    twice = first.http.post(f"/provider/offers/{job_id}/decline", json=body)

    assert (once.status_code, twice.status_code) == (200, 200)
    assert get_job(buyer, job_id)["matchedResources"] == [second.resource_id]


@pytest.mark.parametrize(
    "body", [{"reason": "TOO_HOT"}, {"reason": "OTHER", "message": "x" * 1001}, {}]
)
def test_bad_decline_is_a_validation_error(
    market: Market, buyer: Account, agent: AgentClient, body: dict[str, object]
) -> None:
    job_id = market.job(buyer)

    response = agent.http.post(f"/provider/offers/{job_id}/decline", json=body)

    assert_error(response, 400, "VALIDATION_ERROR")
    assert agent.offered_ids() == [job_id]


def test_declining_a_job_one_holds_is_a_conflict(
    market: Market, buyer: Account, agent: AgentClient
) -> None:
    job_id = accepted_job(market, buyer, agent)

    response = agent.http.post(f"/provider/offers/{job_id}/decline", json={"reason": "OTHER"})

    assert assert_error(response, 409, "CONFLICT")["status"] == "ACCEPTED"


# Status reports


def test_reports_take_the_job_to_completed_and_its_owner_sees_each_step(
    market: Market, buyer: Account, agent: AgentClient
) -> None:
    events = ["job.accepted", "job.started", "job.completed"]
    with subscribed(events, buyer) as receiver:
        job_id = accepted_job(market, buyer, agent)
        assert get_job(buyer, job_id)["status"] == "ACCEPTED"

        running = agent.report(job_id, "RUNNING", progress=40, message="epoch 4/10")

        assert running.json() == {"jobId": job_id, "status": "RUNNING", "progress": 40}
        job = get_job(buyer, job_id)
        assert (job["status"], job["progress"], job["statusMessage"]) == (
            "RUNNING",
            40,
            "epoch 4/10",
        )
        assert job["startedAt"] is not None and job["completedAt"] is None

        done = agent.report(job_id, "COMPLETED", message="done")

        assert done.json() == {"jobId": job_id, "status": "COMPLETED", "progress": 100}
        job = get_job(buyer, job_id)
        assert (job["status"], job["progress"], job["statusMessage"]) == ("COMPLETED", 100, "done")
        assert job["completedAt"] >= job["startedAt"]
        deliveries = receiver.wait_for(3)
    received = [json.loads(d.body) for d in deliveries]
    assert sorted(body["event"] for body in received) == sorted(events)
    assert {body["data"]["jobId"] for body in received} == {job_id}


def job_in(market: Market, buyer: Account, agent: AgentClient, status: str) -> str:
    """A job that `agent` holds, brought to `status`."""
    job_id = accepted_job(market, buyer, agent)
    if status in ("RUNNING", "COMPLETED"):
        assert agent.report(job_id, "RUNNING").status_code == 200
    if status == "COMPLETED":
        assert agent.report(job_id, "COMPLETED").status_code == 200
    if status == "FAILED":
        failure = {"reason": "ERROR"}
        assert agent.report(job_id, "FAILED", failure=failure).status_code == 200
    if status == "CANCELLED":
        assert buyer.http.post(f"/jobs/{job_id}/cancel").status_code == 200
    return job_id


INVALID_REPORTS = [
    ("ACCEPTED", "COMPLETED"),
    ("ACCEPTED", "CANCELLED"),
    ("RUNNING", "CANCELLED"),
    ("COMPLETED", "RUNNING"),
    ("COMPLETED", "FAILED"),
    ("COMPLETED", "CANCELLED"),
    ("FAILED", "RUNNING"),
    ("FAILED", "COMPLETED"),
    ("CANCELLED", "RUNNING"),
    ("CANCELLED", "COMPLETED"),
    ("CANCELLED", "FAILED"),
]


def test_report_that_does_not_fit_the_state_is_a_conflict_naming_the_state(
    market: Market, buyer: Account, agent: AgentClient
) -> None:
    for status, report in INVALID_REPORTS:
        job_id = job_in(market, buyer, agent, status)
        failure = {"failure": {"reason": "ERROR"}} if report == "FAILED" else {}

        response = agent.report(job_id, report, **failure)

        details = assert_error(response, 409, "CONFLICT")
        assert details == {"jobId": job_id, "status": status}, (status, report)
        assert get_job(buyer, job_id)["status"] == status


def test_repeated_report_answers_ok_and_changes_nothing(
    market: Market, buyer: Account, agent: AgentClient
) -> None:
    for status in ("RUNNING", "COMPLETED", "FAILED", "CANCELLED"):
        job_id = job_in(market, buyer, agent, status)
        before = get_job(buyer, job_id)
        spent = balance(buyer)
        failure = {"failure": {"reason": "ERROR"}} if status == "FAILED" else {}

        again = agent.report(job_id, status, **failure)

        assert again.status_code == 200, (status, again.text)
        assert again.json()["status"] == status
        assert get_job(buyer, job_id) == before
        assert balance(buyer) == spent


def test_progress_never_goes_backwards(market: Market, buyer: Account, agent: AgentClient) -> None:
    job_id = running_job(market, buyer, agent)
    assert agent.report(job_id, "RUNNING", progress=60, message="epoch 6").json()["progress"] == 60

    late = agent.report(job_id, "RUNNING", progress=30, message="epoch 3")

    assert late.status_code == 200
    assert late.json()["progress"] == 60
    job = get_job(buyer, job_id)
    assert (job["progress"], job["statusMessage"]) == (60, "epoch 3")


def test_failed_job_refunds_the_whole_escrow(
    market: Market, buyer: Account, agent: AgentClient, live: LiveServer
) -> None:
    before, earned = balance(buyer), balance(agent.owner)
    job_id = running_job(market, buyer, agent)
    assert balance(buyer) == before - 10

    with subscribed(["job.failed"], buyer) as receiver:
        failed = agent.report(
            job_id,
            "FAILED",
            message="exit code 3: boom",
            failure={"reason": "EXIT_CODE", "exitCode": 3},
        )
        (delivery,) = receiver.wait_for(1)

    assert failed.json() == {"jobId": job_id, "status": "FAILED", "progress": 10}
    event = json.loads(delivery.body)
    assert (event["event"], event["data"]["jobId"]) == ("job.failed", job_id)
    assert event["data"]["failure"] == {"reason": "EXIT_CODE", "exitCode": 3}
    assert balance(buyer) == before
    job = get_job(buyer, job_id)
    assert (job["status"], job["statusMessage"]) == ("FAILED", "exit code 3: boom")
    assert job["completedAt"] is not None
    history = buyer.http.get("/tokens/transactions").json()["transactions"]
    ours = [(t["type"], t["amount"], t["status"]) for t in history
            if t["relatedEntity"] == {"type": "JOB", "id": job_id}]  # fmt: skip
    assert ours == [("REFUND", 10, "COMPLETED"), ("ESCROW", 10, "COMPLETED")]
    assert balance(agent.owner) == earned
    assert ledger_is_consistent(live)


def test_job_may_fail_before_it_runs(market: Market, buyer: Account, agent: AgentClient) -> None:
    job_id = accepted_job(market, buyer, agent)

    failed = agent.report(job_id, "FAILED", failure={"reason": "OUT_OF_MEMORY"})

    assert failed.status_code == 200, failed.text
    assert get_job(buyer, job_id)["status"] == "FAILED"


@pytest.mark.parametrize("failure", [None, {"reason": "EXIT_CODE"}, {"reason": "MELTED"}])
def test_failed_report_without_a_proper_failure_is_a_validation_error(
    market: Market, buyer: Account, agent: AgentClient, failure: dict[str, object] | None
) -> None:
    job_id = running_job(market, buyer, agent)
    fields = {} if failure is None else {"failure": failure}

    response = agent.report(job_id, "FAILED", **fields)

    assert_error(response, 400, "VALIDATION_ERROR")
    assert get_job(buyer, job_id)["status"] == "RUNNING"


@pytest.mark.parametrize("progress", [-1, 101, 50.5, "50"])
def test_progress_outside_0_to_100_is_a_validation_error(
    market: Market, buyer: Account, agent: AgentClient, progress: object
) -> None:
    job_id = accepted_job(market, buyer, agent)

    response = agent.report(job_id, "RUNNING", progress=progress)

    assert_error(response, 400, "VALIDATION_ERROR")


def test_only_the_holder_may_report_or_read_a_job(market: Market, buyer: Account) -> None:
    holder = market.agent()
    job_id = accepted_job(market, buyer, holder)
    other = market.agent()

    report = other.report(job_id, "RUNNING", progress=50)
    read = other.http.get(f"/provider/jobs/{job_id}")
    unknown = other.report("job_missing", "RUNNING")

    assert assert_error(report, 403, "PERMISSION_DENIED")["jobId"] == job_id
    assert assert_error(read, 403, "PERMISSION_DENIED")["jobId"] == job_id
    assert_error(unknown, 404, "RESOURCE_NOT_FOUND")
    assert get_job(buyer, job_id)["progress"] == 0


# Cancellation by the job's owner


def test_cancelled_running_job_is_listed_until_the_agent_acknowledges(
    market: Market, buyer: Account, agent: AgentClient
) -> None:
    job_id = running_job(market, buyer, agent)
    with ThreadPoolExecutor(max_workers=1) as pool:
        polling = pool.submit(poll, agent, 10)
        time.sleep(0.5)
        cancelled_at = time.monotonic()
        assert buyer.http.post(f"/jobs/{job_id}/cancel").status_code == 200
        batch, answered_at = polling.result(timeout=15)

    assert batch == {"offers": [], "cancelledJobs": [job_id]}
    assert answered_at - cancelled_at < 1.0
    assert agent.heartbeat()["cancelledJobs"] == [job_id]
    still_running = agent.report(job_id, "RUNNING", progress=50)
    assert assert_error(still_running, 409, "CONFLICT")["status"] == "CANCELLED"

    acknowledged = agent.report(job_id, "CANCELLED", message="stopped")

    assert acknowledged.json()["status"] == "CANCELLED"
    assert agent.heartbeat()["cancelledJobs"] == []
    assert agent.offers()["cancelledJobs"] == []


def test_cancelling_an_offered_job_just_withdraws_the_offer(
    market: Market, buyer: Account, agent: AgentClient
) -> None:
    job_id = market.job(buyer)

    assert buyer.http.post(f"/jobs/{job_id}/cancel").status_code == 200

    assert agent.offers() == {"offers": [], "cancelledJobs": []}
    assert agent.heartbeat()["cancelledJobs"] == []


# Changes made by another server process over the same database (written here with SQL)


def test_long_poll_sees_a_match_made_by_another_process(
    market: Market, buyer: Account, agent: AgentClient, live: LiveServer
) -> None:
    job_id = market.job(buyer, requirements={"minCpuCores": 64, "estimatedDurationHours": 1})
    assert get_job(buyer, job_id)["status"] == "CREATED"
    with ThreadPoolExecutor(max_workers=1) as pool:
        polling = pool.submit(poll, agent, 10)
        time.sleep(0.3)
        matched_at = time.monotonic()
        sql(
            live,
            "UPDATE jobs SET status = 'MATCHED', matched_resources = ? WHERE id = ?",
            json.dumps([agent.resource_id]),
            job_id,
        )
        batch, answered_at = polling.result(timeout=15)

    assert [offer["jobId"] for offer in batch["offers"]] == [job_id]
    assert answered_at - matched_at < 2.0


def test_heartbeat_sees_a_cancellation_made_by_another_process(
    market: Market, buyer: Account, agent: AgentClient, live: LiveServer
) -> None:
    job_id = running_job(market, buyer, agent)

    sql(live, "UPDATE jobs SET status = 'CANCELLED' WHERE id = ?", job_id)

    assert eventually(lambda: agent.heartbeat()["cancelledJobs"] == [job_id], 3.0)
    assert agent.report(job_id, "CANCELLED").status_code == 200
    assert agent.heartbeat()["cancelledJobs"] == []


def test_heartbeats_received_before_a_stop_are_written(make_server: MakeServer) -> None:
    live = make_server(*SERVER_FLAGS)
    market = Market(live)
    try:
        market.agent().heartbeat(agentVersion="7.7.7")
        assert live.stop() == 0
    finally:
        market.close_clients()

    assert sql(live, "SELECT agent_version FROM resources") == [("7.7.7",)]


# The jobs an agent holds


def test_agent_lists_the_jobs_its_resource_holds(market: Market, buyer: Account) -> None:
    agent, other = market.agent(), market.agent()
    running = job_in(market, buyer, agent, "RUNNING")
    done = job_in(market, buyer, agent, "COMPLETED")

    listed = agent.http.get("/provider/jobs").json()
    only_running = agent.http.get("/provider/jobs", params={"status": "RUNNING"}).json()
    one = agent.http.get(f"/provider/jobs/{done}").json()

    assert listed["total"] == 2
    assert {job["jobId"]: job["status"] for job in listed["jobs"]} == {
        running: "RUNNING",
        done: "COMPLETED",
    }
    assert [job["jobId"] for job in only_running["jobs"]] == [running]
    assert (one["jobId"], one["status"], one["code"]) == (done, "COMPLETED", "print('hello')")
    assert other.http.get("/provider/jobs").json() == {
        "total": 0,
        "page": 1,
        "limit": 10,
        "jobs": [],
    }


def test_price_is_fixed_when_the_job_is_accepted(
    market: Market, buyer: Account, agent: AgentClient
) -> None:
    job_id = accepted_job(market, buyer, agent)

    repriced = agent.owner.http.put(
        f"/resources/{agent.resource_id}", json=resource_body(pricePerHour=5.0)
    )

    assert repriced.status_code == 200
    assert agent.http.get(f"/provider/jobs/{job_id}").json()["pricePerHour"] == 2.0
