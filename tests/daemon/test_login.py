"""`calctra-agent login`, `pricing`, `status`, `tokens` and the resource the agent keeps
current, as real CLI processes against the real server."""

from __future__ import annotations

import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

from calctra_agent.wallet import load_wallet, wallet_address
from tests.conftest import PASSWORD, Account
from tests.daemon.conftest import PRICE_PER_HOUR, Machine, Market, server_sql, wait_for


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def resource_of(machine: Machine) -> dict[str, object]:
    response = machine.owner.http.get(f"/resources/{machine.resource_id}")
    assert response.status_code == 200, response.text
    resource: dict[str, object] = response.json()
    return resource


def owner_args(machine: Machine) -> tuple[str, ...]:
    return ("--email", machine.owner.email, "--password-stdin")


def test_first_login_registers_the_machine_with_its_probed_specs_wallet_and_token(
    market: Market,
) -> None:
    machine = market.machine(login=False)

    out = machine.login().stdout

    assert f"registered this machine as resource {machine.resource_id}" in out
    offered = machine.json("probe")["offered"]
    resource = resource_of(machine)
    specs = resource["specs"]
    assert isinstance(specs, dict)
    assert (specs["cpuCores"], specs["memoryGb"]) == (offered["cpuCores"], offered["memoryGb"])
    assert abs(specs["storageGb"] - offered["storageGb"]) < 1  # free space moves a little
    assert specs["gpuModel"] is None
    assert (resource["name"], resource["pricePerHour"]) == (machine.root.name, PRICE_PER_HOUR)

    assert mode(machine.wallet_path) == 0o600
    address = wallet_address(load_wallet(machine.wallet_path))
    assert machine.owner.http.get("/users/me").json()["walletAddress"] == address
    assert f"set your profile's wallet address to {address}" in out

    assert mode(machine.state_dir / "agent.db") == 0o600
    token = machine.meta("agent_token")
    assert token is not None and token.startswith("cat_")
    with machine.agent_client() as agent:
        assert agent.get("/provider/resource").json()["id"] == machine.resource_id


def test_login_again_keeps_the_resource_and_revokes_the_replaced_token(
    market: Market, machine: Machine
) -> None:
    resource_id, old_token, old_token_id = (
        machine.resource_id, machine.meta("agent_token"), machine.meta("token_id"),
    )  # fmt: skip
    address = machine.owner.http.get("/users/me").json()["walletAddress"]

    out = machine.login().stdout

    assert "registered" not in out
    assert machine.resource_id == resource_id
    owned = server_sql(
        market.live, "SELECT COUNT(*) FROM resources WHERE owner_id = ?", machine.owner.user_id
    )
    assert owned == [(1,)]
    assert machine.meta("agent_token") != old_token
    with market.live.client(old_token) as stale:
        assert stale.get("/provider/resource").status_code == 401
    with machine.agent_client() as agent:
        assert agent.get("/provider/resource").status_code == 200
    tokens = {
        t["id"]: t["revoked"] for t in machine.owner.http.get("/agent-tokens").json()["tokens"]
    }
    assert tokens == {old_token_id: True, machine.meta("token_id"): False}
    assert machine.owner.http.get("/users/me").json()["walletAddress"] == address


def test_login_registers_the_machine_anew_when_its_resource_was_deleted(
    market: Market, machine: Machine
) -> None:
    old = machine.resource_id
    assert machine.owner.http.delete(f"/resources/{old}").status_code == 200

    out = machine.login().stdout

    assert f"resource {old} no longer exists; registering again" in out
    assert machine.resource_id != old
    with machine.agent_client() as agent:
        assert agent.get("/provider/resource").json()["id"] == machine.resource_id


def test_agent_start_updates_the_resource_after_a_price_or_reservation_change(
    market: Market, machine: Machine
) -> None:
    cores = machine.json("probe")["offered"]["cpuCores"]
    machine.write_config(price_per_hour=1800.0, reserve={"cpu_cores": 1})

    machine.start()

    resource = resource_of(machine)
    assert resource["pricePerHour"] == 1800
    assert resource["specs"]["cpuCores"] == cores - 1  # type: ignore[index]
    assert f"resource updated cores={cores - 1}" in machine.log()


def test_pricing_set_changes_the_price_on_the_server_for_the_running_agent_and_after(
    market: Market, machine: Machine, customer: Account
) -> None:
    machine.start()

    done = machine.cli("pricing", "set", "3.5")

    assert done.returncode == 0, done.stderr
    assert resource_of(machine)["pricePerHour"] == 3.5
    assert machine.json("pricing", "show") == {"pricePerHour": 3.5, "source": "pricing set"}
    assert "3.5 tokens/hour (from pricing set)" in machine.cli("pricing", "show").stdout
    # A budget of 1 covers 0.01 h at 3.5, not at the configured 3600: the agent takes it.
    job_id = market.job(customer, budget=1)
    wait_for(lambda: customer.http.get(f"/jobs/{job_id}").json()["status"] == "COMPLETED")
    assert machine.stop() == 0
    machine.start()
    assert resource_of(machine)["pricePerHour"] == 3.5


def test_pricing_suggest_prints_the_median_price_of_comparable_resources(
    market: Market, machine: Machine
) -> None:
    offered = machine.json("probe")["offered"]
    others = [market.account("Provider Quinn"), market.account("Provider Rae")]
    cores = offered["cpuCores"]
    comparable = [(max(cores // 2, 1), 1.0), (cores, 2.0), (cores * 2, 10.0)]
    for n, (cores, price) in enumerate(comparable):
        specs = {"cpuCores": cores, "memoryGb": offered["memoryGb"], "storageGb": 100}
        body = {"name": f"node {n}", "specs": specs, "pricePerHour": price}
        market.resource(others[n % 2], body)
    big = {"cpuCores": cores * 8, "memoryGb": 512, "storageGb": 100}
    market.resource(others[0], {"name": "big node", "specs": big, "pricePerHour": 90.0})

    done = machine.cli("pricing", "suggest")

    assert done.returncode == 0, done.stderr
    assert "2 tokens/hour: the median of 3 comparable resources (yours is 3600)" in done.stdout
    assert machine.json("pricing", "suggest") == {"suggestedPricePerHour": 2.0, "compared": 3}


def test_status_shows_the_last_heartbeat_of_the_running_agent(machine: Machine) -> None:
    assert "last heartbeat never" in machine.cli("status").stdout
    before = datetime.now(UTC) - timedelta(seconds=1)

    machine.start()
    status = wait_for(
        lambda: (info := machine.json("status"))["lastHeartbeatAt"] and info,
        what="a heartbeat",
    )

    assert set(status) == {"resourceId", "name", "active", "lastHeartbeatAt", "pricePerHour",
                           "runningJobs", "earnings"}  # fmt: skip
    assert (status["resourceId"], status["active"]) == (machine.resource_id, True)
    assert before <= datetime.fromisoformat(status["lastHeartbeatAt"]) <= datetime.now(UTC)
    assert status["runningJobs"] == []
    assert status["earnings"] == {"tokens": 0, "paidJobs": 0}
    text = machine.cli("status").stdout
    assert "active" in text and "inactive" not in text
    assert "s ago)" in text


def refused(market: Market, request: str) -> int:
    """How many of `request` the server answered 401 since this test started."""
    return sum(
        1
        for line in market.live.log().splitlines()[market.log_start :]
        if request in line and line.endswith(" 401")
    )


def test_revoked_agent_token_fails_the_running_agents_heartbeats_logged_once(
    market: Market,
) -> None:
    # Short polls: the poll under way when the token is revoked began with a valid one.
    machine = market.machine(offer_wait_s=1)
    machine.start()
    token_id = machine.meta("token_id")
    listed = machine.cli("tokens", "list", "--json", *owner_args(machine), stdin=PASSWORD)
    assert listed.returncode == 0, listed.stderr
    assert '"revoked": false' in listed.stdout and token_id in listed.stdout

    revoked = machine.cli("tokens", "revoke", token_id, *owner_args(machine), stdin=PASSWORD)

    assert revoked.returncode == 0, revoked.stderr
    assert f"revoked {token_id}" in revoked.stdout
    machine.wait_log("heartbeat refused: the platform refused this machine's agent token")
    assert "run `calctra-agent login` again error=AUTHENTICATION_REQUIRED" in machine.log()
    wait_for(
        lambda: (
            refused(market, "POST /v1/api/provider/heartbeat") >= 3
            and refused(market, "GET /v1/api/provider/offers") >= 2
        ),
        what="more refused heartbeats and polls",
    )
    assert machine.log().count("heartbeat refused") == 1
    assert machine.log().count("waiting for offers failed") == 1
    tokens = machine.owner.http.get("/agent-tokens").json()["tokens"]
    assert [t["revoked"] for t in tokens if t["id"] == token_id] == [True]


def test_status_and_run_with_a_revoked_token_say_to_log_in_again(market: Market) -> None:
    machine = market.machine()
    token_id = machine.meta("token_id")
    revoked = machine.cli("tokens", "revoke", token_id, *owner_args(machine), stdin=PASSWORD)
    assert revoked.returncode == 0, revoked.stderr

    status, run = machine.cli("status"), machine.cli("run")

    expected = (
        "calctra-agent: the platform refused this machine's agent token (revoked, or its "
        "resource deleted); run `calctra-agent login` again"
    )
    assert (status.returncode, status.stderr.strip()) == (1, expected)
    # The daemon logs its start on stderr before it asks the platform.
    assert (run.returncode, run.stderr.strip().splitlines()[-1]) == (1, expected)
    assert "Traceback" not in run.stderr


def test_login_while_the_agent_runs_with_a_revoked_token_gets_it_going_again(
    market: Market,
) -> None:
    machine = market.machine(offer_wait_s=1)
    machine.start()
    token_id = machine.meta("token_id")
    revoked = machine.cli("tokens", "revoke", token_id, *owner_args(machine), stdin=PASSWORD)
    assert revoked.returncode == 0, revoked.stderr
    machine.wait_log("heartbeat refused")

    machine.login()

    machine.wait_log(f"agent token renewed by a login token_id={machine.meta('token_id')}")
    machine.wait_log("heartbeat ok active=True", occurrences=2)
