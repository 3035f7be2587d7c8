"""How the agent knows its containers on an engine that others may share: by their labels
and names."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from calctra_agent import __version__
from calctra_agent.runner._interface import JobSpec

LABEL_JOB_ID = "calctra.job-id"
LABEL_RESOURCE_ID = "calctra.resource-id"
LABEL_INSTANCE_ID = "calctra.instance-id"
LABEL_DEADLINE = "calctra.deadline"
LABEL_VERSION = "calctra.version"


@dataclass(frozen=True)
class Identity:
    """Whose containers these are: the resource, and this agent installation among those that
    may share the engine."""

    resource_id: str
    instance_id: str


def labels(spec: JobSpec, identity: Identity, deadline: float) -> dict[str, str]:
    return {
        LABEL_JOB_ID: spec.job_id,
        LABEL_RESOURCE_ID: identity.resource_id,
        LABEL_INSTANCE_ID: identity.instance_id,
        LABEL_DEADLINE: f"{deadline:.3f}",
        LABEL_VERSION: __version__,
    }


def instance_filter(instance_id: str, job_id: str | None = None) -> dict[str, list[str]]:
    """The engine's filter for the containers of this instance (and of one job)."""
    selected = [f"{LABEL_INSTANCE_ID}={instance_id}"]
    if job_id is not None:
        selected.append(f"{LABEL_JOB_ID}={job_id}")
    return {"label": selected}


def container_name(job_id: str, instance_id: str) -> str:
    """calctra-<job id>-<8 hex of the instance id>: readable in `docker ps`, and unique on
    an engine that several agents share."""
    instance_tag = hashlib.sha256(instance_id.encode()).hexdigest()[:8]
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"calctra-{job_id}-{instance_tag}")
