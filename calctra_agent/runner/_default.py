"""The runner `calctra-agent run` uses."""

from __future__ import annotations

from typing import TYPE_CHECKING

from calctra_agent.runner._interface import JobPlatform, Runner

if TYPE_CHECKING:
    from calctra_agent.config import AgentSettings


def default_runner(
    settings: AgentSettings, platform: JobPlatform, resource_id: str, instance_id: str
) -> Runner:
    """The Docker runner, which isolates each job in its own container. `platform` is the API
    client, with the agent token of `resource_id`; `instance_id` names this installation of
    the agent on the engine, and must stay the same from one start to the next for the agent
    to find its jobs again. Raises RunnerError when the Docker engine does not answer."""
    from calctra_agent.runner.docker import DockerRunner

    runner: Runner = DockerRunner(settings, platform, resource_id, instance_id)
    return runner
