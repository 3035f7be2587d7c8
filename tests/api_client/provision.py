"""Resources and jobs that one test of the client makes on the real server, removed after it.

Each Provision puts its resources and jobs on a core count of its own, larger than any other
test's machine, so that its jobs match only its own resources.
"""

from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass

from calctra_agent import wire
from calctra_agent.api_client import CalctraClient
from calctra_agent.errors import CalctraError
from tests.conftest import Account, LiveServer

_cores = itertools.count(3001)


@dataclass
class Machine:
    """A provider's resource and the agent client that holds its agent token."""

    owner: CalctraClient
    agent: CalctraClient
    resource_id: str
    token_id: str


class Provision:
    """Registers resources for providers and jobs for customers, all on one core count."""

    def __init__(self, live: LiveServer) -> None:
        self.live = live
        self.cores = next(_cores)
        self.clients: list[CalctraClient] = []
        self.machines: list[Machine] = []
        self.jobs: list[tuple[CalctraClient, str]] = []

    def client(self, token: str) -> CalctraClient:
        client = CalctraClient(self.live.url, token, max_retries=0)
        self.clients.append(client)
        return client

    def machine(self, owner: Account, price_per_hour: float = 2.0) -> Machine:
        user = self.client(owner.token)
        specs = wire.Specs(cpu_cores=self.cores, memory_gb=64, storage_gb=100)
        resource = wire.ResourceRequest(
            name="agent node", specs=specs, price_per_hour=price_per_hour
        )
        resource_id = user.create_resource(resource).resource_id
        issued = user.create_agent_token(resource_id, name="test agent")
        machine = Machine(user, self.client(issued.token), resource_id, issued.token_id)
        self.machines.append(machine)
        return machine

    def job(self, customer: Account, budget: float = 10.0, datasets: tuple[str, ...] = ()) -> str:
        requirements = wire.Requirements(min_cpu_cores=self.cores, estimated_duration_hours=1)
        job = wire.JobRequest(
            name="agent job",
            code="print(1)",
            requirements=requirements,
            budget=budget,
            datasets=list(datasets),
        )
        owner = self.client(customer.token)
        job_id = owner.create_job(job).job_id
        self.jobs.append((owner, job_id))
        return job_id

    def close(self) -> None:
        """Cancel what is still open, so that the resources can go, then delete them."""
        for owner, job_id in self.jobs:
            with contextlib.suppress(CalctraError):  # ended already
                owner.cancel_job(job_id)
        for machine in self.machines:
            machine.owner.delete_resource(machine.resource_id)
        for client in self.clients:
            client.close()
