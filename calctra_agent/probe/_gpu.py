"""NVIDIA GPUs, through NVML (the `nvidia-ml-py` package, imported as `pynvml`).

A machine without NVML or without a GPU is normal: the inventory is empty and says why.
NVML's exceptions never leave this module.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass, replace
from types import ModuleType
from typing import Any, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Gpu:
    """One GPU. The live readings are None where NVML could not give them (a datacenter GPU
    with no temperature sensor exposed, a MIG-enabled GPU's utilization) or were not asked."""

    index: int
    uuid: str
    name: str
    memory_total_bytes: int
    memory_used_bytes: int | None = None
    utilization_percent: float | None = None
    temperature_c: float | None = None


@dataclass(frozen=True)
class GpuInventory:
    gpus: tuple[Gpu, ...] = ()
    driver_version: str | None = None
    cuda_version: str | None = None
    """The highest CUDA version the driver supports, such as "12.4"."""
    reason: str | None = None
    """Why there is no GPU; None when NVML listed at least one."""


def probe_gpus(*, with_utilization: bool = True, log_missing: bool = True) -> GpuInventory:
    """The NVIDIA GPUs of this machine; `log_missing=False` logs their absence at DEBUG only,
    for callers that sample often."""
    inventory = _read_nvml(with_utilization)
    if not inventory.gpus:
        level = logging.INFO if log_missing else logging.DEBUG
        logger.log(level, "no nvidia gpu found reason=%s", inventory.reason)
    return inventory


def _read_nvml(with_utilization: bool) -> GpuInventory:
    try:
        import pynvml
    except ImportError:
        return GpuInventory(reason="nvidia-ml-py is not installed")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as exc:
        return GpuInventory(reason=f"nvml unavailable: {exc}")
    try:
        return _inventory(pynvml, with_utilization)
    except pynvml.NVMLError as exc:
        logger.warning("nvml query failed reason=%s", exc)
        return GpuInventory(reason=f"nvml query failed: {exc}")
    finally:
        _shutdown(pynvml)


def _inventory(nvml: ModuleType, with_utilization: bool) -> GpuInventory:
    count = nvml.nvmlDeviceGetCount()
    gpus = tuple(gpu for index in range(count) if (gpu := _device(nvml, index, with_utilization)))
    cuda = _reading(nvml, nvml.nvmlSystemGetCudaDriverVersion)
    driver = _reading(nvml, nvml.nvmlSystemGetDriverVersion)
    return GpuInventory(
        gpus=gpus,
        driver_version=None if driver is None else _text(driver),
        cuda_version=None if cuda is None else cuda_version(cuda),
        reason=None if gpus else f"nvml lists {count} usable gpus",
    )


def _device(nvml: ModuleType, index: int, with_utilization: bool) -> Gpu | None:
    try:
        handle = nvml.nvmlDeviceGetHandleByIndex(index)
        name = _text(nvml.nvmlDeviceGetName(handle))
        uuid = _text(nvml.nvmlDeviceGetUUID(handle))
        memory = nvml.nvmlDeviceGetMemoryInfo(handle)
    except nvml.NVMLError as exc:
        # A GPU that fell off the bus must not hide the others.
        logger.warning("gpu skipped index=%d reason=%s", index, exc)
        return None
    gpu = Gpu(index, uuid, name, int(memory.total), int(memory.used))
    if not with_utilization:
        return gpu
    rates = _reading(nvml, lambda: nvml.nvmlDeviceGetUtilizationRates(handle))
    temperature = _reading(
        nvml, lambda: nvml.nvmlDeviceGetTemperature(handle, nvml.NVML_TEMPERATURE_GPU)
    )
    return replace(
        gpu,
        utilization_percent=None if rates is None else float(rates.gpu),
        temperature_c=None if temperature is None else float(temperature),
    )


def _reading(nvml: ModuleType, read: Callable[[], T]) -> T | None:
    try:
        return read()
    except nvml.NVMLError as exc:
        logger.debug("nvml reading unavailable reason=%s", exc)
        return None


def _shutdown(nvml: ModuleType) -> None:
    try:
        nvml.nvmlShutdown()
    except nvml.NVMLError as exc:
        logger.debug("nvml shutdown failed reason=%s", exc)


def _text(value: Any) -> str:
    # nvidia-ml-py before 11.515 returned bytes for strings.
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def cuda_version(encoded: int) -> str:
    """NVML's CUDA version as text: 12040 is "12.4"."""
    return f"{encoded // 1000}.{encoded % 1000 // 10}"


def forget_nvml() -> None:
    """Unload the NVML bindings, for a process that will not ask NVML again: on a machine
    without GPUs they are over 1 MB of an idle daemon's memory for nothing."""
    sys.modules.pop("pynvml", None)
