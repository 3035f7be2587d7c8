"""What `calctra-agent probe` shows: a table for people, a dict for `--json`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from calctra_agent.errors import ConfigError
from calctra_agent.probe._engine import EngineInfo
from calctra_agent.probe._gpu import Gpu, GpuInventory
from calctra_agent.probe._machine import Capacity, MachineProbe, Reservation
from calctra_agent.probe._memory import to_gb

if TYPE_CHECKING:
    from rich.table import Table


def probe_as_json(probe: MachineProbe, reservation: Reservation | None = None) -> dict[str, Any]:
    """The probe's dataclasses as plain JSON values (sizes in bytes, as measured), and under
    "offered" the specs the resource would be registered with, as the API spells them; when
    the reservation does not fit the machine, "offered" is null and "problems" says why;
    "notes" tells what is offered short of what the machine has, and why."""
    data: dict[str, Any] = _plain(dataclasses.asdict(probe))
    try:
        capacity = probe.capacity(reservation)
    except ConfigError as exc:
        return {**data, "offered": None, "problems": exc.problems, "notes": []}
    offered = capacity.to_specs().model_dump(mode="json", by_alias=True, exclude_none=True)
    offered["gpuUuids"] = [gpu.uuid for gpu in capacity.gpus]
    return {**data, "offered": offered, "problems": [], "notes": _capacity_notes(capacity)}


def render_probe_table(probe: MachineProbe, reservation: Reservation | None = None) -> Table:
    """The probe for a terminal: one row per part of the machine, then what it offers."""
    # Imported here: the daemon imports this package but never draws tables.
    from rich.table import Table

    table = Table(title="This machine", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    table.add_row("cpu", _cpu_text(probe))
    table.add_row("memory", _memory_text(probe))
    table.add_row("storage", _storage_text(probe))
    for label, text in _gpu_rows(probe.gpu):
        table.add_row(label, text)
    table.add_row("container engine", _engine_text(probe.engine))
    table.add_section()
    table.add_row("offered", _offered_text(probe, reservation))
    return table


def _cpu_text(probe: MachineProbe) -> str:
    cpu = probe.cpu
    physical = "?" if cpu.physical_cores is None else str(cpu.physical_cores)
    clock = "" if cpu.frequency_mhz is None else f", {cpu.frequency_mhz:.0f} MHz"
    return (
        f"{cpu.model} ({cpu.architecture}), {cpu.logical_cores} logical / {physical} "
        f"physical cores{clock}"
    )


def _memory_text(probe: MachineProbe) -> str:
    memory = probe.memory
    total, available = to_gb(memory.total_bytes), to_gb(memory.available_bytes)
    return f"{total:.1f} GB, {available:.1f} GB available"


def _storage_text(probe: MachineProbe) -> str:
    storage = probe.storage
    total, free = to_gb(storage.total_bytes), to_gb(storage.free_bytes)
    return f"{total:.1f} GB, {free:.1f} GB free (filesystem of {storage.path})"


def _gpu_rows(inventory: GpuInventory) -> list[tuple[str, str]]:
    if not inventory.gpus:
        return [("gpus", f"none ({inventory.reason})")]
    driver = f"driver {inventory.driver_version or '?'}, CUDA {inventory.cuda_version or '?'}"
    rows = [("nvidia", driver)]
    return rows + [(f"gpu {gpu.index}", _gpu_text(gpu)) for gpu in inventory.gpus]


def _gpu_text(gpu: Gpu) -> str:
    load = [] if gpu.utilization_percent is None else [f"{gpu.utilization_percent:.0f}% busy"]
    if gpu.temperature_c is not None:
        load.append(f"{gpu.temperature_c:.0f} °C")
    live = f", {', '.join(load)}" if load else ""
    return f"{gpu.name}, {to_gb(gpu.memory_total_bytes):.1f} GB, {gpu.uuid}{live}"


def _engine_text(engine: EngineInfo | None) -> str:
    if engine is None:
        return "not checked"
    if not engine.reachable:
        return f"unreachable at {engine.host}: {engine.reason}"
    runtime = engine.gpu_runtime
    kinds = (["nvidia runtime"] if runtime.nvidia_runtime else []) + [
        f"cdi {device}" for device in runtime.cdi_devices
    ]
    gpus = ", ".join(kinds) if kinds else "none"
    return f"docker {engine.server_version} at {engine.host}; gpu access: {gpus}"


def _offered_text(probe: MachineProbe, reservation: Reservation | None) -> str:
    try:
        capacity = probe.capacity(reservation)
    except ConfigError as exc:
        return "nothing: " + "; ".join(exc.problems)
    specs = capacity.to_specs()
    parts = [f"{specs.cpu_cores} cores", f"{specs.memory_gb:g} GB memory"]
    parts.append(f"{specs.storage_gb:g} GB storage")
    if specs.gpu_model:
        parts.append(f"{specs.gpu_model} ({specs.gpu_memory_gb:g} GB each)")
    return ", ".join(parts + _capacity_notes(capacity))


def _capacity_notes(capacity: Capacity) -> list[str]:
    notes = [] if capacity.gpus_withheld is None else [f"no gpu: {capacity.gpus_withheld}"]
    return notes + [
        f"reserved gpu {held} is not on this machine" for held in capacity.unknown_reserved_gpus
    ]


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, Path):
        return str(value)
    return value
