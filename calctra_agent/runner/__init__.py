"""Running jobs: the interface the daemon calls, and its implementations."""

from calctra_agent.runner._default import default_runner
from calctra_agent.runner._interface import (
    Completed,
    Failed,
    Grant,
    JobEvents,
    JobSpec,
    Outcome,
    Recovery,
    Runner,
)

__all__ = [
    "Completed",
    "Failed",
    "Grant",
    "JobEvents",
    "JobSpec",
    "Outcome",
    "Recovery",
    "Runner",
    "default_runner",
]
