"""The CPU: cores, model, architecture and clock."""

from __future__ import annotations

import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

_CPUINFO = Path("/proc/cpuinfo")
# x86 names the model "model name" (its "model" is a number); arm boards say "Model" or
# "Hardware" after the last processor, and MIPS says "cpu model".
_FALLBACK_MODEL_KEYS = ("Model", "Hardware", "cpu model")


@dataclass(frozen=True)
class CpuInfo:
    """The machine's processors, as the operating system sees them."""

    logical_cores: int
    physical_cores: int | None
    """None where the operating system does not say (some VMs and containers)."""
    model: str
    architecture: str
    frequency_mhz: float | None
    """The highest clock the kernel reports, or the current one where it gives no maximum."""


def probe_cpu() -> CpuInfo:
    return CpuInfo(
        logical_cores=os.cpu_count() or 1,
        physical_cores=psutil.cpu_count(logical=False),
        model=_cpu_model(),
        architecture=platform.machine() or "unknown",
        frequency_mhz=_frequency_mhz(),
    )


def _cpu_model() -> str:
    fallback = None
    try:
        with _CPUINFO.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                key, _, value = (part.strip() for part in line.partition(":"))
                if key == "model name" and value:
                    return value
                if fallback is None and key in _FALLBACK_MODEL_KEYS and value:
                    fallback = value
    except OSError as exc:
        logger.debug("cpu model unreadable path=%s reason=%s", _CPUINFO, exc)
    return fallback or platform.processor() or "unknown"


def _frequency_mhz() -> float | None:
    try:
        freq = psutil.cpu_freq()
    except (OSError, NotImplementedError):
        return None
    if freq is None:
        return None
    best = freq.max if freq.max > 0 else freq.current
    return round(best, 1) if best > 0 else None
