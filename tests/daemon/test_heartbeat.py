"""Heartbeats: a silent resource turns inactive, gets no matches, and returns with its agent."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import Account
from tests.daemon.conftest import Machine, Market, job_code, wait_for, wait_job
from tests.server_stub.provider_support import get_job


def test_stopped_agents_resource_turns_inactive_gets_no_matches_and_returns_on_restart(
    market: Market, machine: Machine, customer: Account, tmp_path: Path
) -> None:
    # The daemon tests' server expires a resource after 3 s without a heartbeat.
    machine.start()
    resource = f"/resources/{machine.resource_id}"

    assert machine.stop() == 0
    stopped = time.monotonic()
    wait_for(lambda: not machine.owner.http.get(resource).json()["active"], timeout_s=20)
    assert time.monotonic() - stopped < 10
    assert machine.json("status")["active"] is False
    runs = tmp_path / "runs"
    job_id = market.job(customer, code=job_code(runs))
    job = get_job(customer, job_id)
    assert (job["status"], job["matchedResources"]) == ("CREATED", [])

    machine.start()
    job = wait_job(customer, job_id, status="COMPLETED")
    assert job["assignedResource"] == machine.resource_id
    assert machine.owner.http.get(resource).json()["active"] is True
    assert runs.read_text() == "ran\n"
