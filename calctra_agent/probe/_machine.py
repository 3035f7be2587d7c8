"""The whole machine: what it has, what its owner holds back, and what it offers."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil

from calctra_agent.errors import ConfigError
from calctra_agent.probe._cpu import CpuInfo, probe_cpu
from calctra_agent.probe._engine import EngineInfo, probe_engine
from calctra_agent.probe._gpu import Gpu, GpuInventory, probe_gpus
from calctra_agent.probe._memory import GIB, MemoryInfo, probe_memory, to_gb
from calctra_agent.probe._storage import StorageInfo, probe_storage
from calctra_agent.wire import GpuUtilization, Specs, Utilization

_MAX_GPU_MODEL_CHARS = 200


@dataclass(frozen=True)
class Reservation:
    """What the owner keeps for themselves. `gpus` names GPUs by NVML index (0, "1") or by
    UUID ("GPU-5f3c…"); a name that matches no GPU holds nothing back."""

    cpu_cores: int = 0
    memory_gb: float = 0.0
    storage_gb: float = 0.0
    gpus: tuple[int | str, ...] = ()

    def holds(self, gpu: Gpu) -> bool:
        return any(_names(held, gpu) for held in self.gpus)

    def unknown_gpus(self, gpus: Iterable[Gpu]) -> tuple[int | str, ...]:
        """The held-back names that match none of `gpus`: likely typos."""
        gpus = tuple(gpus)
        return tuple(held for held in self.gpus if not any(_names(held, g) for g in gpus))


def _names(held: int | str, gpu: Gpu) -> bool:
    if isinstance(held, int) or held.isdigit():
        return int(held) == gpu.index
    return held.lower() == gpu.uuid.lower()


@dataclass(frozen=True)
class Capacity:
    """What the machine offers to jobs: the probe less the reservation. Memory is the
    machine's total less the reserve; storage is the free space of the work dir's filesystem
    less the reserve (never below zero); GPUs are those not held back."""

    cpu_cores: int
    memory_gb: float
    storage_gb: float
    gpus: tuple[Gpu, ...] = ()
    gpus_withheld: str | None = None
    """Why the machine's GPUs are not offered although NVML lists them, if they are not."""
    unknown_reserved_gpus: tuple[int | str, ...] = ()
    """Names in the reservation that match no GPU of this machine: likely a typo."""

    def to_specs(self) -> Specs:
        """The resource's specs on the API.

        Several GPUs are described by one `gpuModel`, "2x NVIDIA A100-SXM4-80GB" (or
        "1x NVIDIA L4 + 1x NVIDIA T4" for a mix), and `gpuMemoryGb` is the memory of one GPU,
        the smallest one's in a mix: a job's `minGpuMemoryGb` must fit on any single GPU.
        """
        return Specs(
            cpu_cores=self.cpu_cores,
            memory_gb=self.memory_gb,
            storage_gb=self.storage_gb,
            gpu_model=gpu_model(self.gpus),
            gpu_memory_gb=_floor_gb(min(g.memory_total_bytes for g in self.gpus))
            if self.gpus
            else None,
        )


@dataclass(frozen=True)
class MachineProbe:
    """Everything the agent knows about its machine at one moment."""

    cpu: CpuInfo
    memory: MemoryInfo
    storage: StorageInfo
    gpu: GpuInventory
    engine: EngineInfo | None = None
    """None when the container engine was not asked."""

    def capacity(self, reservation: Reservation | None = None) -> Capacity:
        """Raises ConfigError, one line per setting, when the reservation holds back more than
        the machine has, or every CPU core: such a machine has nothing to offer."""
        reservation = reservation or Reservation()
        _check_reservation(self, reservation)
        gpus, withheld = self._offered_gpus(reservation)
        storage_bytes = self.storage.free_bytes - reservation.storage_gb * GIB
        return Capacity(
            cpu_cores=self.cpu.logical_cores - reservation.cpu_cores,
            memory_gb=_floor_gb(self.memory.total_bytes - reservation.memory_gb * GIB),
            storage_gb=_floor_gb(max(storage_bytes, 0)),
            gpus=gpus,
            gpus_withheld=withheld,
            unknown_reserved_gpus=reservation.unknown_gpus(self.gpu.gpus),
        )

    def to_specs(self, reservation: Reservation | None = None) -> Specs:
        return self.capacity(reservation).to_specs()

    def _offered_gpus(self, reservation: Reservation) -> tuple[tuple[Gpu, ...], str | None]:
        gpus = tuple(gpu for gpu in self.gpu.gpus if not reservation.holds(gpu))
        # A GPU the engine cannot hand to a container would only fail the jobs sent for it.
        if gpus and self.engine is not None and not self.engine.gpu_runtime.usable:
            reason = self.engine.reason or "it has no nvidia runtime and lists no cdi gpu"
            return (), f"the container engine cannot give containers a gpu: {reason}"
        return gpus, None


def probe_machine(
    work_dir: Path,
    *,
    with_engine: bool = True,
    with_utilization: bool = True,
    engine_timeout_s: float = 2.0,
) -> MachineProbe:
    """Probes CPU, memory, the storage holding `work_dir`, the GPUs and (`with_engine`) the
    container engine. Raises ProbeError only when the storage cannot be examined."""
    # Starts psutil's CPU counter, so that the first sample_utilization() has a baseline.
    psutil.cpu_percent(interval=None)
    return MachineProbe(
        cpu=probe_cpu(),
        memory=probe_memory(),
        storage=probe_storage(work_dir),
        gpu=probe_gpus(with_utilization=with_utilization),
        engine=probe_engine(timeout_s=engine_timeout_s) if with_engine else None,
    )


def sample_utilization(
    reservation: Reservation | None = None, *, with_gpus: bool = True
) -> Utilization:
    """The live load for a heartbeat: CPU percent since the previous sample (no waiting),
    memory in use, and each offered GPU's load (None for what NVML cannot read); with
    `with_gpus=False`, for a machine that offers none, NVML is not asked."""
    reservation = reservation or Reservation()
    gpus = probe_gpus(log_missing=False).gpus if with_gpus else ()
    return Utilization(
        cpu_percent=min(float(psutil.cpu_percent(interval=None)), 100.0),
        memory_used_gb=round(to_gb(probe_memory().used_bytes), 2),
        gpus=[_gpu_sample(gpu) for gpu in gpus if not reservation.holds(gpu)],
    )


def gpu_model(gpus: tuple[Gpu, ...]) -> str | None:
    """One line for a set of GPUs: "NVIDIA A100", "2x NVIDIA A100" or "1x A + 2x B"."""
    if not gpus:
        return None
    if len(gpus) == 1:
        return gpus[0].name[:_MAX_GPU_MODEL_CHARS]
    counts = Counter(gpu.name for gpu in gpus)
    text = " + ".join(f"{count}x {name}" for name, count in counts.items())
    return text[:_MAX_GPU_MODEL_CHARS]


def _gpu_sample(gpu: Gpu) -> GpuUtilization:
    utilization = gpu.utilization_percent
    used = gpu.memory_used_bytes
    return GpuUtilization(
        uuid=gpu.uuid,
        utilization_percent=None if utilization is None else min(utilization, 100.0),
        memory_used_gb=None if used is None else round(to_gb(used), 2),
        temperature_c=gpu.temperature_c,
    )


def _check_reservation(probe: MachineProbe, reservation: Reservation) -> None:
    cores, memory_gb = probe.cpu.logical_cores, to_gb(probe.memory.total_bytes)
    storage_gb = to_gb(probe.storage.total_bytes)
    problems = []
    if reservation.cpu_cores >= cores:
        problems.append(
            f"reserve.cpu_cores: holds back {reservation.cpu_cores} of this machine's "
            f"{cores} cores; leave at least one to offer"
        )
    if reservation.memory_gb > memory_gb:
        problems.append(
            f"reserve.memory_gb: holds back {reservation.memory_gb:g} GB but this machine "
            f"has {memory_gb:.1f} GB"
        )
    if reservation.storage_gb > storage_gb:
        problems.append(
            f"reserve.storage_gb: holds back {reservation.storage_gb:g} GB but the "
            f"filesystem of {probe.storage.path} has {storage_gb:.1f} GB"
        )
    if problems:
        raise ConfigError("the reservation", problems)


def _floor_gb(n_bytes: float) -> float:
    """Gigabytes rounded down to 0.1, so that a resource never claims more than it has."""
    return math.floor(n_bytes / GIB * 10) / 10
