"""Restarts and outages: of the server, of the agent (killed or stopped), with jobs running."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from tests.conftest import Account, LiveServer
from tests.daemon.conftest import (
    Machine,
    Market,
    OpenMarket,
    alive,
    declines,
    job_code,
    outbox,
    paid,
    transactions,
    wait_for,
    wait_job,
)


def job_pid(machine: Machine, job_id: str) -> int:
    return int((machine.work_dir / job_id / "pid").read_text())


def exited(machine: Machine, job_id: str) -> bool:
    return (machine.work_dir / job_id / "exit").exists()


def test_reports_and_claim_made_while_the_server_is_down_reach_it_once_it_returns(
    module_server: LiveServer, open_market: OpenMarket, tmp_path: Path
) -> None:
    live = module_server
    market = open_market(live)
    customer = market.account("Customer Carol", deposit=1000)
    machine = market.machine()
    machine.start()
    runs, go = tmp_path / "runs", tmp_path / "go"
    job_id = market.job(customer, code=job_code(runs, go))
    wait_job(customer, job_id, status="RUNNING")

    live.stop()
    go.touch()
    wait_for(lambda: exited(machine, job_id), what="the job to end")
    machine.wait_log(f"report deferred job_id={job_id} kind=status")
    live.start()
    wait_for(lambda: paid(market, job_id), timeout_s=60, what="the payment")

    assert wait_job(customer, job_id, status="COMPLETED")["progress"] == 100
    assert len(transactions(market, job_id, "PAYMENT")) == 1
    wait_for(lambda: outbox(machine, job_id) == 0, what="an empty outbox")
    assert runs.read_text() == "ran\n"
    assert machine.running


def test_agent_killed_mid_job_finds_the_job_again_and_reports_it_once(
    market: Market, machine: Machine, customer: Account, tmp_path: Path
) -> None:
    machine.start()
    runs, go = tmp_path / "runs", tmp_path / "go"
    job_id = market.job(customer, code=job_code(runs, go))
    wait_job(customer, job_id, status="RUNNING")

    machine.kill()
    assert alive(job_pid(machine, job_id))
    go.touch()
    wait_for(lambda: exited(machine, job_id), what="the job to end")
    machine.start()
    wait_for(lambda: paid(market, job_id), what="the payment")

    assert "jobs recovered running=1 lost=0" in machine.log()
    assert get_status(customer, job_id) == "COMPLETED"
    assert len(transactions(market, job_id, "PAYMENT")) == 1
    assert runs.read_text() == "ran\n"
    assert machine.job_dirs() == [job_id]


def get_status(acct: Account, job_id: str) -> str:
    return str(acct.http.get(f"/jobs/{job_id}").json()["status"])


def test_sigterm_exits_at_once_and_leaves_the_job_running_for_the_next_start(
    market: Market, machine: Machine, customer: Account, tmp_path: Path
) -> None:
    machine.start()
    runs, go = tmp_path / "runs", tmp_path / "go"
    job_id = market.job(customer, code=job_code(runs, go))
    wait_job(customer, job_id, status="RUNNING")

    started = time.monotonic()
    assert machine.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 3
    assert alive(job_pid(machine, job_id))
    assert "leaving jobs running for the next start jobs=1" in machine.log()

    machine.start()
    assert "jobs recovered running=1 lost=0" in machine.log()
    go.touch()
    wait_for(lambda: paid(market, job_id), what="the payment")
    assert get_status(customer, job_id) == "COMPLETED"
    assert runs.read_text() == "ran\n"


def offer_polls(market: Market) -> int:
    lines = market.live.log().splitlines()[market.log_start :]
    return sum(1 for line in lines if "GET /v1/api/provider/offers" in line)


def test_sigterm_with_drain_on_stop_waits_for_the_running_job_to_finish(
    market: Market, customer: Account, tmp_path: Path
) -> None:
    machine = market.machine(drain_on_stop=True, offer_wait_s=1)
    machine.start()
    go = tmp_path / "go"
    job_id = market.job(customer, code=job_code(go=go))
    wait_job(customer, job_id, status="RUNNING")

    machine.send(signal.SIGTERM)
    machine.wait_log("draining jobs=1")
    # The agent still polls while it drains, and declines what is offered meanwhile, for the
    # platform to match it elsewhere.
    polls = offer_polls(market)
    wait_for(lambda: offer_polls(market) >= polls + 2, what="polls during the drain")
    offered = market.job(customer)
    wait_for(lambda: declines(market, offered), what="the decline")
    assert machine.running
    go.touch()
    assert machine.wait_exit(timeout_s=30) == 0

    assert "drain complete jobs_left=0" in machine.log()
    assert get_status(customer, job_id) == "COMPLETED"
    assert paid(market, job_id)
    assert declines(market, offered) == [(machine.resource_id, "SHUTTING_DOWN")]
    assert get_status(customer, offered) == "CREATED"


def test_second_sigterm_during_the_drain_exits_at_once_leaving_the_job_running(
    market: Market, customer: Account, tmp_path: Path
) -> None:
    machine = market.machine(drain_on_stop=True)
    machine.start()
    job_id = market.job(customer, code=job_code(go=tmp_path / "go"))
    wait_job(customer, job_id, status="RUNNING")
    machine.send(signal.SIGTERM)
    machine.wait_log("draining jobs=1")

    started = time.monotonic()
    assert machine.stop(signal.SIGTERM) == 0
    assert time.monotonic() - started < 3

    assert "second stop signal: aborting" in machine.log()
    assert "drain complete jobs_left=1" in machine.log()
    assert alive(job_pid(machine, job_id))
    assert get_status(customer, job_id) == "RUNNING"


def test_sigterm_while_the_server_is_down_exits_at_once(
    module_server: LiveServer, open_market: OpenMarket
) -> None:
    machine = open_market(module_server).machine()
    machine.start()
    module_server.stop()
    try:
        # A heartbeat retries meanwhile: the stop neither waits for it nor hangs on it.
        machine.wait_log("api retry method=POST path=/api/provider/heartbeat")
        started = time.monotonic()
        assert machine.stop(signal.SIGTERM) == 0
        assert time.monotonic() - started < 3
    finally:
        module_server.start()


def test_job_accepted_just_before_a_crash_is_started_at_the_next_start(
    market: Market, machine: Machine, customer: Account, tmp_path: Path
) -> None:
    machine.start()
    machine.stop()
    runs = tmp_path / "runs"
    job_id = market.job(customer, code=job_code(runs))
    # The accept that the agent made before it died, without writing the job down.
    with machine.agent_client() as agent:
        wait_for(
            lambda: agent.post(f"/provider/offers/{job_id}/accept").status_code == 200,
            what="the job to be matched and accepted",
        )

    machine.start()
    wait_for(lambda: paid(market, job_id), what="the payment")

    assert f"job accepted before a restart, starting it job_id={job_id}" in machine.log()
    assert get_status(customer, job_id) == "COMPLETED"
    assert runs.read_text() == "ran\n"


def test_job_cancelled_while_the_agent_was_down_is_dropped_at_the_next_start(
    market: Market, machine: Machine, customer: Account, tmp_path: Path
) -> None:
    machine.start()
    go = tmp_path / "go"
    job_id = market.job(customer, code=job_code(go=go))
    wait_job(customer, job_id, status="RUNNING")
    machine.kill()
    assert customer.http.post(f"/jobs/{job_id}/cancel").status_code == 200

    machine.start()

    assert f"job no longer assigned to this machine, dropping it job_id={job_id}" in machine.log()
    assert "jobs recovered running=0 lost=0" in machine.log()
    # The platform's heartbeat answers name the job until the agent acknowledges the cancel.
    machine.wait_log(f"report sent job_id={job_id} status=CANCELLED")
    wait_for(lambda: outbox(machine, job_id) == 0, what="an empty outbox")
    assert get_status(customer, job_id) == "CANCELLED"
