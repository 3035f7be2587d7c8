"""The daemon against the real server: offers taken or declined, jobs run, reported and paid,
cancellations and claims refused."""

from __future__ import annotations

import json
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.conftest import Account, balance
from tests.daemon.conftest import (
    PRICE_PER_HOUR,
    Machine,
    Market,
    alive,
    declines,
    job_code,
    metered_s,
    outbox,
    paid,
    server_sql,
    transactions,
    wait_for,
    wait_job,
)
from tests.server_stub.provider_support import get_job, ledger_is_consistent


def test_fitting_job_runs_reports_progress_and_is_paid_for_its_metered_time(
    market: Market, machine: Machine, customer: Account, tmp_path: Path
) -> None:
    machine.start()
    runs, go = tmp_path / "runs", tmp_path / "go"

    job_id = market.job(customer, code=job_code(runs, go, progress=40))
    running = wait_job(customer, job_id, status="RUNNING", progress=40)
    status = machine.json("status")
    go.touch()
    wait_for(lambda: paid(market, job_id), what="the payment")
    machine.wait_log(f"payment claimed job_id={job_id}")

    job = get_job(customer, job_id)
    assert running["assignedResource"] == machine.resource_id
    assert (job["status"], job["progress"]) == ("COMPLETED", 100)
    expected = min(50.0, PRICE_PER_HOUR * metered_s(job) / 3600)
    (payment,) = transactions(market, job_id, "PAYMENT")
    assert abs(payment / 1e6 - expected) < 0.01
    assert balance(machine.owner) == payment / 1e6
    assert abs(balance(customer) - (1000 - payment / 1e6)) < 1e-6
    assert ledger_is_consistent(market.live)
    assert runs.read_text() == "ran\n"

    assert status["runningJobs"] == [{"jobId": job_id, "status": "RUNNING", "progress": 40}]
    status = machine.json("status")
    assert status["earnings"] == {"tokens": payment / 1e6, "paidJobs": 1}
    assert status["runningJobs"] == []
    (row,) = machine.json("jobs")
    assert row["jobId"] == job_id
    assert (row["status"], row["progress"], row["payment"]) == ("COMPLETED", 100, payment / 1e6)
    assert row["acceptedAt"] <= row["finishedAt"]


def test_failing_job_is_reported_failed_with_its_exit_code_and_costs_nothing(
    market: Market, machine: Machine, customer: Account
) -> None:
    machine.start()
    before = balance(customer)

    job_id = market.job(customer, code=job_code(exit_code=3))
    job = wait_job(customer, job_id, status="FAILED")

    assert job["statusMessage"].startswith("exit code 3")
    ((failure,),) = server_sql(market.live, "SELECT failure FROM jobs WHERE id = ?", job_id)
    assert json.loads(failure) == {"reason": "EXIT_CODE", "exitCode": 3}
    assert balance(customer) == before
    assert transactions(market, job_id, "PAYMENT") == []
    assert transactions(market, job_id, "REFUND") == [50_000_000]
    (row,) = machine.json("jobs")
    assert (row["status"], row["failure"]) == ("FAILED", {"reason": "EXIT_CODE", "exitCode": 3})
    assert f"job failed job_id={job_id} reason=EXIT_CODE" in machine.log()


def edit_resource(machine: Machine, **changes: Any) -> None:
    """The owner replaces the resource's fields through the customer API, with a user token,
    behind the agent's back."""
    resource = machine.owner.http.get(f"/resources/{machine.resource_id}").json()
    body = {key: resource[key] for key in ("name", "description", "type", "specs")}
    body |= {"pricePerHour": resource["pricePerHour"], "availability": resource["availability"]}
    body |= changes
    edited = machine.owner.http.put(f"/resources/{machine.resource_id}", json=body)
    assert edited.status_code == 200, edited.text


def assert_declined(market: Market, machine: Machine, job_id: str, reason: str) -> str:
    """The decline is recorded with `reason`, the job waits for another resource, and the
    agent's log says why; returns the log's line."""
    wait_for(lambda: declines(market, job_id), what=f"a decline of {job_id}")
    assert declines(market, job_id) == [(machine.resource_id, reason)]
    customer = next(acct for acct, job in market.jobs if job == job_id)
    assert get_job(customer, job_id)["status"] == "CREATED"
    assert machine.job_dirs() == []
    (line,) = [ln for ln in machine.log().splitlines() if f"offer declined job_id={job_id}" in ln]
    assert f"reason={reason}" in line
    return line


def test_offer_over_budget_at_the_agents_price_is_declined_and_never_offered_again(
    market: Market, machine: Machine, customer: Account
) -> None:
    machine.start()
    # The owner lowers the price on the platform; the agent still asks for its own.
    edit_resource(machine, pricePerHour=1)

    job_id = market.job(customer, budget=10)
    line = assert_declined(market, machine, job_id, "BUDGET_TOO_LOW")

    assert "budget is 10" in line
    # The matcher's next pass matches the job to another resource, never to this one again.
    other = market.resource(market.account("Provider Quinn"), cheap_resource())
    wait_job(customer, job_id, status="MATCHED", matchedResources=[other])
    assert machine.log().count(f"offer declined job_id={job_id}") == 1


def cheap_resource() -> dict[str, Any]:
    return {
        "name": "another node",
        "specs": {"cpuCores": 4, "memoryGb": 8, "storageGb": 50},
        "pricePerHour": 1,
    }


def test_gpu_job_is_declined_by_a_machine_without_a_gpu(
    market: Market, machine: Machine, customer: Account
) -> None:
    machine.start()
    edit_resource(
        machine,
        type="GPU",
        specs={**machine.owner.http.get(f"/resources/{machine.resource_id}").json()["specs"],
               "gpuModel": "NVIDIA A100", "gpuMemoryGb": 80},
    )  # fmt: skip

    requirements = {"minCpuCores": 1, "minMemoryGb": 1, "estimatedDurationHours": 0.01,
                    "needsGpu": True, "minGpuMemoryGb": 16}  # fmt: skip
    job_id = market.job(customer, requirements=requirements)

    line = assert_declined(market, machine, job_id, "GPU_UNAVAILABLE")
    assert "offers no GPU" in line


def test_offer_outside_the_configured_availability_is_declined(
    market: Market, customer: Account
) -> None:
    hour = datetime.now(UTC).hour
    days = [1, 2, 3, 4, 5, 6, 7]
    window = {"days": days, "start_hour": (hour + 2) % 24, "end_hour": (hour + 3) % 24}
    closed = {"timezone": "UTC", "schedule": window}
    machine = market.machine(availability=closed)
    machine.start()
    # Open at all hours on the platform; the agent goes by its own configuration.
    edit_resource(machine, availability=None)

    job_id = market.job(customer)

    line = assert_declined(market, machine, job_id, "OUTSIDE_AVAILABILITY")
    assert "availability window is closed" in line


def test_offer_beyond_max_concurrent_jobs_is_declined_while_a_job_runs(
    market: Market, customer: Account, tmp_path: Path
) -> None:
    machine = market.machine(max_concurrent_jobs=1)
    machine.start()
    go = tmp_path / "go"
    first = market.job(customer, code=job_code(go=go))
    wait_job(customer, first, status="RUNNING")

    second = market.job(customer)
    wait_for(lambda: declines(market, second), what="the decline")
    assert declines(market, second) == [(machine.resource_id, "INSUFFICIENT_CAPACITY")]
    assert get_job(customer, second)["status"] == "CREATED"
    assert "already running 1 jobs" in machine.log()

    go.touch()
    wait_job(customer, first, status="COMPLETED")
    assert machine.job_dirs() == [first]


def test_two_agents_offered_one_job_run_it_once(
    market: Market, customer: Account, tmp_path: Path
) -> None:
    # The loser's long polls last long, so that the pause below finds it in one.
    winner, loser = market.machine(), market.machine(offer_wait_s=10)
    winner.start()
    loser.start()
    runs = tmp_path / "runs"
    # The loser is paused in its long poll, so that the winner is sure to accept first; it
    # then reads the offer the server sent it meanwhile, and accepts too late.
    time.sleep(0.5)
    loser.send(signal.SIGSTOP)
    try:
        job_id = market.job(customer, code=job_code(runs))
        job = wait_job(customer, job_id, status="COMPLETED")
    finally:
        loser.send(signal.SIGCONT)

    assert sorted(job["matchedResources"]) == sorted([winner.resource_id, loser.resource_id])
    assert job["assignedResource"] == winner.resource_id
    loser.wait_log(f"offer taken by another provider job_id={job_id}")
    assert (winner.job_dirs(), loser.job_dirs()) == ([job_id], [])
    assert runs.read_text() == "ran\n"


def test_job_cancelled_by_its_owner_is_killed_and_the_cancel_acknowledged(
    market: Market, machine: Machine, customer: Account, tmp_path: Path
) -> None:
    machine.start()
    pid_file = tmp_path / "job.pid"
    code = f"import os, time\nopen({str(pid_file)!r}, 'w').write(str(os.getpid()))\n"
    code += "time.sleep(120)\n"
    before = balance(customer)
    job_id = market.job(customer, code=code)
    wait_job(customer, job_id, status="RUNNING")
    pid = int(wait_for(lambda: pid_file.exists() and pid_file.read_text(), what="the pid"))

    started = time.monotonic()
    assert customer.http.post(f"/jobs/{job_id}/cancel").status_code == 200
    wait_for(lambda: not alive(pid), timeout_s=10, what="the job's process to end")
    assert time.monotonic() - started < 5

    with machine.agent_client() as agent:
        wait_for(
            lambda: (
                job_id
                not in agent.get("/provider/offers", params={"waitS": 0}).json()["cancelledJobs"]
            ),
            what="the cancellation's acknowledgment",
        )
    assert get_job(customer, job_id)["status"] == "CANCELLED"
    assert balance(customer) == before
    wait_for(lambda: machine.json("jobs")[0]["status"] == "CANCELLED", what="local state")
    assert f"stopping cancelled job job_id={job_id}" in machine.log()


def test_claim_for_a_wallet_that_is_no_longer_the_owners_is_refused_once(
    market: Market, machine: Machine, customer: Account, tmp_path: Path
) -> None:
    machine.start()
    go = tmp_path / "go"
    job_id = market.job(customer, code=job_code(go=go))
    wait_job(customer, job_id, status="RUNNING")
    other_wallet = "11111111111111111111111111111112"
    changed = machine.owner.http.put("/users/me", json={"walletAddress": other_wallet})
    assert changed.status_code == 200, changed.text

    go.touch()
    wait_job(customer, job_id, status="COMPLETED")
    log = machine.wait_log(f"report refused job_id={job_id} kind=claim code=PERMISSION_DENIED")

    assert "walletAddress is not the resource owner's walletAddress" in log
    wait_for(lambda: outbox(machine, job_id) == 0, what="the claim to leave the outbox")
    assert transactions(market, job_id, "PAYMENT") == []
    assert balance(machine.owner) == 0
    assert machine.json("jobs")[0]["payment"] is None
