"""The Docker runner: every job in a container of its own, confined to its grant."""

from calctra_agent.runner.docker._images import ensure_image_present
from calctra_agent.runner.docker._runner import DockerRunner

__all__ = ["DockerRunner", "ensure_image_present"]
