"""Main memory."""

from __future__ import annotations

from dataclasses import dataclass

import psutil

GIB = 1024**3
"""Gigabytes in this package are binary (2**30 bytes), as `free -g` and `nvidia-smi` count."""


def to_gb(n_bytes: int) -> float:
    return n_bytes / GIB


@dataclass(frozen=True)
class MemoryInfo:
    total_bytes: int
    available_bytes: int

    @property
    def used_bytes(self) -> int:
        """Memory in use: what is not available to a new process without swapping."""
        return max(self.total_bytes - self.available_bytes, 0)


def probe_memory() -> MemoryInfo:
    memory = psutil.virtual_memory()
    return MemoryInfo(total_bytes=memory.total, available_bytes=memory.available)
