"""Heartbeats: a silent resource turns inactive, gets no matches, and returns with its agent."""

from __future__ import annotations

import time
from pathlib import Path

from tests.conftest import MakeServer
from tests.daemon.conftest import OpenMarket, job_code, own_server, wait_for
from tests.daemon.test_agent import get_job, wait_job


def test_stopped_agents_resource_turns_inactive_gets_no_matches_and_returns_on_restart(
    make_server: MakeServer, open_market: OpenMarket, tmp_path: Path
) -> None:
    live = own_server(make_server, "--heartbeat-timeout", "2")
    market = open_market(live)
    customer = market.account("Customer Carol", deposit=1000)
    machine = market.machine()
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
