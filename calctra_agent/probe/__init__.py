"""Probing the machine: CPU, memory, storage, NVIDIA GPUs and the container engine."""

__all__: list[str] = []
