"""The runner `calctra-agent run` uses."""

from __future__ import annotations

from typing import Any

from calctra_agent.errors import RunnerError
from calctra_agent.runner._interface import Runner


def default_runner(settings: Any) -> Runner:
    """The Docker runner, which isolates each job in its own container."""
    try:
        from calctra_agent.runner.docker import DockerRunner  # type: ignore[import-not-found]
    except ImportError:
        raise RunnerError(
            "this version of calctra-agent has no job runner: running jobs needs the Docker "
            "runner (calctra_agent.runner.docker), which is not part of this build yet"
        ) from None
    runner: Runner = DockerRunner(settings)
    return runner
