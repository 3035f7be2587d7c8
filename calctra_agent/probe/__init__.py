"""Probing the machine: CPU, memory, storage, NVIDIA GPUs and the container engine."""

from calctra_agent.probe._cpu import CpuInfo, probe_cpu
from calctra_agent.probe._engine import (
    EngineApi,
    EngineInfo,
    EngineUnavailable,
    GpuRuntime,
    detect_gpu_runtime,
    probe_engine,
)
from calctra_agent.probe._gpu import Gpu, GpuInventory, cuda_version, forget_nvml, probe_gpus
from calctra_agent.probe._machine import (
    Capacity,
    MachineProbe,
    Reservation,
    gpu_model,
    probe_machine,
    sample_utilization,
)
from calctra_agent.probe._memory import GIB, MemoryInfo, probe_memory, to_gb
from calctra_agent.probe._render import probe_as_json, render_probe_table
from calctra_agent.probe._storage import StorageInfo, probe_storage

__all__ = [
    "Capacity",
    "CpuInfo",
    "EngineApi",
    "EngineInfo",
    "EngineUnavailable",
    "GIB",
    "Gpu",
    "GpuInventory",
    "GpuRuntime",
    "MachineProbe",
    "MemoryInfo",
    "Reservation",
    "StorageInfo",
    "cuda_version",
    "detect_gpu_runtime",
    "forget_nvml",
    "gpu_model",
    "probe_as_json",
    "probe_cpu",
    "probe_engine",
    "probe_gpus",
    "probe_machine",
    "probe_memory",
    "probe_storage",
    "render_probe_table",
    "sample_utilization",
    "to_gb",
]
