"""Putting a daemon together from the settings: state, credentials, wallet, probe, client."""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from calctra_agent.api_client import CalctraClient
from calctra_agent.config import AgentSettings, resource_request
from calctra_agent.daemon._agent import Agent, AgentConfig
from calctra_agent.daemon._decide import Terms
from calctra_agent.daemon._messages import TOKEN_REFUSED
from calctra_agent.daemon._resource import sync_resource
from calctra_agent.daemon._state import Credentials, State
from calctra_agent.errors import ApiUnavailable, AuthenticationRequired, ServerError, StateError
from calctra_agent.probe import Capacity, forget_nvml, probe_machine, sample_utilization
from calctra_agent.runner import Runner
from calctra_agent.wallet import ClaimSigner

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Session:
    """The agent's local state and an API client authenticated with its agent token."""

    state: State
    credentials: Credentials
    client: CalctraClient
    stop_requests: threading.Event = field(default_factory=threading.Event)
    """Set, it ends the client's waits between retries at once."""


def open_session(settings: AgentSettings) -> Session:
    """Open the state dir and a client for this machine's resource; raises StateError when
    `calctra-agent login` has not been run."""
    state = State(settings.state_dir)
    credentials = state.credentials()
    if credentials is None:
        state.close()
        raise StateError(
            f"this machine is not registered yet (no credentials in {settings.state_dir}); "
            "run `calctra-agent login` first"
        )
    stop_requests = threading.Event()
    client = CalctraClient(settings.api_url, token=credentials.agent_token, stop=stop_requests)
    return Session(state, credentials, client, stop_requests)


@contextmanager
def agent_token_checked() -> Iterator[None]:
    """Turn the platform's refusal of the agent token into the one thing to do about it."""
    try:
        yield
    except AuthenticationRequired as exc:
        raise StateError(TOKEN_REFUSED) from exc


def _check_token(client: CalctraClient) -> None:
    """Ask the platform once, at the start, whether it takes the agent token: a refused token
    stops the start with what to do. A platform that cannot be reached is no reason not to
    start: the agent keeps trying."""
    try:
        client.get_provider_resource()
    except (ApiUnavailable, ServerError) as exc:
        logger.warning("platform not reachable at the start error=%s", exc)


def effective_price(settings: AgentSettings, state: State) -> float | None:
    """The price set with `pricing set`, else the configured one."""
    override = state.price_override()
    return override if override is not None else settings.price_per_hour


def terms_for(
    settings: AgentSettings, state: State, gpu_runtime: bool, price: float | None = None
) -> Terms:
    availability = settings.availability.to_wire() if settings.availability else None
    return Terms(
        price_per_hour=price if price is not None else effective_price(settings, state) or 0.0,
        availability=availability.model_dump(by_alias=True) if availability else None,
        max_concurrent_jobs=settings.max_concurrent_jobs,
        gpu_runtime=gpu_runtime,
        permitted_images=settings.images.permitted,
    )


def build_agent(settings: AgentSettings, session: Session, runner: Runner) -> Agent:
    """Probe the machine, bring the resource up to date and assemble the daemon."""
    reservation = settings.reserve.to_reservation()
    probe = probe_machine(settings.work_dir)
    capacity: Capacity = probe.capacity(reservation)
    offers_gpus = bool(capacity.gpus)
    if not offers_gpus:
        forget_nvml()  # heartbeats will not ask NVML: there is no GPU to report on
    price = effective_price(settings, session.state)
    request = resource_request(
        settings.model_copy(update={"price_per_hour": price}), capacity.to_specs()
    )
    with agent_token_checked():
        _check_token(session.client)
        sync_resource(session.client, session.state, request)
    sign_claim = ClaimSigner(settings.wallet_path, session.credentials.resource_id)
    config = AgentConfig(
        capacity=capacity,
        terms=terms_for(settings, session.state, runner.gpu_runtime, price),
        heartbeat_interval_s=settings.heartbeat_interval_s,
        offer_wait_s=settings.offer_wait_s,
        outbox_interval_s=settings.outbox_interval_s,
        job_timeout_factor=settings.job_timeout_factor,
        drain_on_stop=settings.drain_on_stop,
        default_image=settings.images.default_image,
    )
    return Agent(
        config,
        session.state,
        session.client,
        runner,
        sign_claim=sign_claim,
        sample_utilization=lambda: sample_utilization(reservation, with_gpus=offers_gpus),
        stop_requests=session.stop_requests,
    )


def run_until_signalled(agent: Agent) -> None:
    """Run the daemon in this thread; SIGTERM or SIGINT stops it, a second one aborts."""
    worker_error: list[BaseException] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        logger.info("signal received signal=%s", signal.Signals(signum).name)
        agent.stop()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    offers = threading.Thread(
        target=_guarded, args=(agent.take_offers, worker_error, agent), name="offers", daemon=True
    )
    try:
        agent.startup()
        offers.start()
        # The offers go on while jobs drain; the thread's last long poll need not finish.
        agent.wait_stopped()
    finally:
        agent.shutdown()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if worker_error:
        raise worker_error[0]


def _guarded(target: Any, errors: list[BaseException], agent: Agent) -> None:
    try:
        target()
    except BaseException as exc:
        logger.exception("offer loop stopped on an error")
        errors.append(exc)
        agent.stop()
