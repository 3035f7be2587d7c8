"""The agent daemon: heartbeats, offers, reports and claims around a runner."""

from calctra_agent.daemon._agent import Agent, AgentConfig
from calctra_agent.daemon._assemble import (
    Session,
    agent_token_checked,
    build_agent,
    effective_price,
    open_session,
    run_until_signalled,
    terms_for,
)
from calctra_agent.daemon._decide import (
    Accept,
    Decision,
    Decline,
    Terms,
    decide,
)
from calctra_agent.daemon._messages import TOKEN_REFUSED
from calctra_agent.daemon._notify import notify
from calctra_agent.daemon._resource import remember_registration, sync_resource
from calctra_agent.daemon._state import PRICE_OVERRIDE_KEY, Credentials, LocalJob, State

__all__ = [
    "PRICE_OVERRIDE_KEY",
    "TOKEN_REFUSED",
    "Session",
    "agent_token_checked",
    "build_agent",
    "effective_price",
    "open_session",
    "remember_registration",
    "run_until_signalled",
    "sync_resource",
    "terms_for",
    "Accept",
    "Agent",
    "AgentConfig",
    "Credentials",
    "Decision",
    "Decline",
    "LocalJob",
    "State",
    "Terms",
    "decide",
    "notify",
]
