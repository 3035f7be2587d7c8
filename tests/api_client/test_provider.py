"""The client's provider methods against the real server: agent tokens, heartbeats, offers,
status reports and a claim signed by a wallet loaded from its file."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from calctra_agent import wallet, wire
from calctra_agent.api_client import CalctraClient
from calctra_agent.errors import (
    AuthenticationRequired,
    Conflict,
    PermissionDenied,
)
from tests.api_client.provision import Provision
from tests.conftest import Account, LiveServer, new_account

HEARTBEAT = wire.HeartbeatRequest(
    agent_version="0.1.0",
    utilization=wire.Utilization(cpu_percent=12.5, memory_used_gb=7.1),
)


@dataclass
class People:
    customer: Account
    provider: Account
    rival: Account


@pytest.fixture(scope="module")
def people(server: LiveServer) -> Iterator[People]:
    """Accounts shared by this module's tests (each registration costs an argon2 hash): a
    customer with 1000 tokens and two providers. Tests compare balances before and after."""
    made = People(
        customer=new_account(server, "Kim Customer", deposit=1000),
        provider=new_account(server, "Pat Provider"),
        rival=new_account(server, "Rita Rival"),
    )
    yield made
    for account in (made.customer, made.provider, made.rival):
        account.http.close()


def offered_ids(agent: CalctraClient, wait_s: float = 5) -> list[str]:
    return [offer.job_id for offer in agent.wait_for_offers(wait_s=wait_s).offers]


def test_agent_token_is_listed_and_dies_when_revoked(provision: Provision, people: People) -> None:
    machine = provision.machine(people.provider)

    first = machine.agent.heartbeat(HEARTBEAT)
    listed = machine.owner.list_agent_tokens()
    machine.owner.revoke_agent_token(machine.token_id)
    machine.owner.revoke_agent_token(machine.token_id)  # a repeat changes nothing

    assert first.active and first.cancelled_jobs == [] and first.next_heartbeat_in_s > 0
    token = next(t for t in listed.tokens if t.id == machine.token_id)
    assert (token.resource_id, token.name, token.revoked) == (
        machine.resource_id,
        "test agent",
        False,
    )
    assert token.last_used_at is not None
    with pytest.raises(AuthenticationRequired):
        machine.agent.heartbeat(HEARTBEAT)


def test_user_token_is_refused_on_provider_endpoints(provision: Provision, people: People) -> None:
    machine = provision.machine(people.provider)

    with pytest.raises(AuthenticationRequired, match="agent token"):
        machine.owner.heartbeat(HEARTBEAT)


def test_job_runs_through_the_protocol_and_is_paid_once(
    provision: Provision, people: People, tmp_path: Path
) -> None:
    customer = people.customer
    machine = provision.machine(people.provider, price_per_hour=2.0)
    balance_before = machine.owner.get_balance().balance
    keypair = wallet.create_wallet(tmp_path / "wallet.json")
    machine.owner.update_me(wallet_address=wallet.wallet_address(keypair))
    job_id = provision.job(customer, budget=10.0)

    assert job_id in offered_ids(machine.agent)
    accepted = machine.agent.accept_offer(job_id)
    held = machine.agent.list_assigned_jobs(status=wire.JobStatus.ACCEPTED)
    running = wire.StatusReport(status=wire.ReportableStatus.RUNNING, progress=40, message="4/10")
    machine.agent.report_status(job_id, running)
    again = machine.agent.report_status(job_id, running)  # a repeat changes nothing
    done = machine.agent.report_status(
        job_id, wire.StatusReport(status=wire.ReportableStatus.COMPLETED)
    )
    claim = wallet.claim_request(keypair, job_id, machine.resource_id)
    paid = machine.agent.claim_payment(job_id, claim)
    paid_again = machine.agent.claim_payment(job_id, claim)

    assert (accepted.job_id, accepted.code, accepted.price_per_hour) == (job_id, "print(1)", 2.0)
    assert [job.job_id for job in held.jobs] == [job_id]
    assert machine.agent.get_assigned_job(job_id).status == wire.JobStatus.COMPLETED
    assert (again.status, again.progress) == (wire.JobStatus.RUNNING, 40)
    assert (done.status, done.progress) == (wire.JobStatus.COMPLETED, 100)
    assert paid.payment.type == wire.TransactionType.PAYMENT and paid.payment.amount > 0
    assert paid_again.payment.id == paid.payment.id
    assert machine.owner.get_balance().balance == balance_before + paid.payment.amount
    customer_client = provision.client(customer.token)
    assert customer_client.get_job(job_id).status == wire.JobStatus.COMPLETED
    customer_client.rate_job(job_id, 5, "quick")
    assert customer_client.get_resource(machine.resource_id).reputation == 5.0


def test_claim_signed_by_another_wallet_is_refused(
    provision: Provision, people: People, tmp_path: Path
) -> None:
    machine = provision.machine(people.provider)
    balance_before = machine.owner.get_balance().balance
    owner_wallet = wallet.create_wallet(tmp_path / "owner.json")
    machine.owner.update_me(wallet_address=wallet.wallet_address(owner_wallet))
    job_id = provision.job(people.customer)
    machine.agent.accept_offer(job_id)
    for status in (wire.ReportableStatus.RUNNING, wire.ReportableStatus.COMPLETED):
        machine.agent.report_status(job_id, wire.StatusReport(status=status))

    stranger = wallet.create_wallet(tmp_path / "stranger.json")
    with pytest.raises(PermissionDenied, match="walletAddress"):
        machine.agent.claim_payment(
            job_id, wallet.claim_request(stranger, job_id, machine.resource_id)
        )

    assert machine.owner.get_balance().balance == balance_before


def test_second_provider_to_accept_gets_a_conflict(provision: Provision, people: People) -> None:
    first = provision.machine(people.provider)
    second = provision.machine(people.rival)
    job_id = provision.job(people.customer)

    first.agent.accept_offer(job_id)
    with pytest.raises(Conflict) as caught:
        second.agent.accept_offer(job_id)

    assert caught.value.details["status"] == "ACCEPTED"


def test_declined_offer_is_not_offered_again(provision: Provision, people: People) -> None:
    machine = provision.machine(people.provider)
    job_id = provision.job(people.customer)
    assert job_id in offered_ids(machine.agent)

    machine.agent.decline_offer(job_id, wire.DeclineReason.BUDGET_TOO_LOW, "too cheap")
    machine.agent.decline_offer(job_id, wire.DeclineReason.BUDGET_TOO_LOW)  # a repeat is fine

    assert job_id not in offered_ids(machine.agent, wait_s=0)


def test_owner_cancellation_reaches_the_agent_and_reports_conflict(
    provision: Provision, people: People
) -> None:
    machine = provision.machine(people.provider)
    job_id = provision.job(people.customer)
    machine.agent.accept_offer(job_id)
    machine.agent.report_status(
        job_id, wire.StatusReport(status=wire.ReportableStatus.RUNNING, progress=10)
    )

    provision.client(people.customer.token).cancel_job(job_id)
    heartbeat = machine.agent.heartbeat(HEARTBEAT)
    with pytest.raises(Conflict) as caught:
        machine.agent.report_status(
            job_id, wire.StatusReport(status=wire.ReportableStatus.RUNNING, progress=20)
        )
    machine.agent.report_status(job_id, wire.StatusReport(status=wire.ReportableStatus.CANCELLED))

    assert heartbeat.cancelled_jobs == [job_id]
    assert caught.value.details["status"] == "CANCELLED"
    assert machine.agent.heartbeat(HEARTBEAT).cancelled_jobs == []
