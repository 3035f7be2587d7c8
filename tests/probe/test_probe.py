"""The machine probe, against this machine where it can run here.

This machine has no NVIDIA GPU and no NVML library, so NVML's answers are parsed from a fake
`pynvml` module in the tests that need GPUs; a test checks that the fake only uses names the
real module has. The Docker engine does not run here either: the engine is probed at a socket
that does not exist, and at a stand-in that answers the two Engine API calls over a unix
socket; GPU runtime detection is tested on `docker info` answers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import psutil
import pynvml
import pytest
from rich.console import Console

from calctra_agent.errors import ConfigError
from calctra_agent.probe import (
    GIB,
    CpuInfo,
    EngineInfo,
    Gpu,
    GpuInventory,
    GpuRuntime,
    MachineProbe,
    MemoryInfo,
    Reservation,
    StorageInfo,
    detect_gpu_runtime,
    probe_as_json,
    probe_engine,
    probe_gpus,
    probe_machine,
    render_probe_table,
    sample_utilization,
)
from tests.probe.engine_stub import API_VERSION, engine_stub

A100_UUID = "GPU-1b2c3d4e-0000-1111-2222-333344445555"
T4_UUID = "GPU-9f8e7d6c-0000-1111-2222-333344445555"


def nvml_present() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


class FakeNvmlError(Exception):
    def __init__(self, value: int) -> None:
        super().__init__(value)
        self.value = value

    def __str__(self) -> str:
        return {3: "Not Supported", 15: "GPU is lost"}.get(self.value, f"code {self.value}")


def fake_nvml(
    *, lost_index: int | None = None, init_error: int | None = None
) -> tuple[ModuleType, dict[str, int]]:
    """A stand-in for pynvml with an A100 (index 0) and a T4 (index 1, no temperature
    sensor), answering bytes as nvidia-ml-py before 11.515 did."""
    calls = {"init": 0, "shutdown": 0}
    names = {0: b"NVIDIA A100-SXM4-80GB", 1: b"Tesla T4"}
    uuids = {0: A100_UUID.encode(), 1: T4_UUID.encode()}
    memory = {0: 80 * GIB, 1: 15 * GIB}

    def init() -> None:
        if init_error is not None:
            raise FakeNvmlError(init_error)
        calls["init"] += 1

    def shutdown() -> None:
        calls["shutdown"] += 1

    def handle(index: int) -> int:
        if index == lost_index:
            raise FakeNvmlError(15)
        return index

    def temperature(index: int, sensor: int) -> int:
        assert sensor == 0
        if index == 1:
            raise FakeNvmlError(3)
        return 61

    module = ModuleType("pynvml")
    attributes: dict[str, Any] = {
        "NVMLError": FakeNvmlError,
        "NVML_TEMPERATURE_GPU": 0,
        "nvmlInit": init,
        "nvmlShutdown": shutdown,
        "nvmlDeviceGetCount": lambda: 2,
        "nvmlDeviceGetHandleByIndex": handle,
        "nvmlDeviceGetName": names.__getitem__,
        "nvmlDeviceGetUUID": uuids.__getitem__,
        "nvmlDeviceGetMemoryInfo": lambda i: SimpleNamespace(
            total=memory[i], used=4 * GIB * (i + 1), free=memory[i] - 4 * GIB * (i + 1)
        ),
        "nvmlDeviceGetUtilizationRates": lambda i: SimpleNamespace(gpu=40 + i, memory=10),
        "nvmlDeviceGetTemperature": temperature,
        "nvmlSystemGetDriverVersion": lambda: b"550.54.15",
        "nvmlSystemGetCudaDriverVersion": lambda: 12040,
    }
    module.__dict__.update(attributes)
    return module, calls


@pytest.fixture
def short_tmp() -> Iterator[Path]:
    """A directory with a short path: a unix socket's path may not pass 107 bytes."""
    with tempfile.TemporaryDirectory(prefix="calctra-", dir="/tmp") as path:
        yield Path(path)


@pytest.fixture
def use_fake_nvml(monkeypatch: pytest.MonkeyPatch) -> Callable[..., dict[str, int]]:
    def install(**kwargs: Any) -> dict[str, int]:
        module, calls = fake_nvml(**kwargs)
        monkeypatch.setitem(sys.modules, "pynvml", module)
        return calls

    return install


def machine(
    *,
    gpus: tuple[Gpu, ...] = (),
    engine: EngineInfo | None = None,
    cores: int = 16,
) -> MachineProbe:
    return MachineProbe(
        cpu=CpuInfo(cores, cores // 2, "AMD EPYC 7763", "x86_64", 2450.0),
        memory=MemoryInfo(total_bytes=64 * GIB, available_bytes=40 * GIB),
        storage=StorageInfo(Path("/var/lib"), total_bytes=1000 * GIB, free_bytes=600 * GIB),
        gpu=GpuInventory(gpus=gpus, driver_version="550.54.15", cuda_version="12.4"),
        engine=engine,
    )


def a100(index: int, uuid: str = A100_UUID) -> Gpu:
    return Gpu(index, uuid, "NVIDIA A100-SXM4-80GB", 80 * GIB)


ENGINE_WITH_GPUS = EngineInfo(
    host="unix:///var/run/docker.sock",
    reachable=True,
    server_version="28.3.0",
    gpu_runtime=GpuRuntime(nvidia_runtime=True),
)


# This machine


def test_probe_reports_this_machines_cores_memory_and_storage(tmp_path: Path) -> None:
    probe = probe_machine(tmp_path, with_engine=False)

    assert probe.cpu.logical_cores == os.cpu_count()
    assert probe.cpu.physical_cores is None or 0 < probe.cpu.physical_cores <= os.cpu_count()
    assert probe.cpu.model and probe.cpu.architecture
    assert probe.memory.total_bytes == psutil.virtual_memory().total
    assert 0 < probe.memory.available_bytes <= probe.memory.total_bytes
    usage = shutil.disk_usage(tmp_path)
    assert probe.storage.total_bytes == usage.total
    assert abs(probe.storage.free_bytes - usage.free) < GIB
    assert probe.engine is None


def test_storage_of_a_work_dir_not_created_yet_is_its_parents_filesystem(
    tmp_path: Path,
) -> None:
    probe = probe_machine(tmp_path / "jobs" / "not-yet", with_engine=False)

    assert probe.storage.path == tmp_path
    assert probe.storage.total_bytes == shutil.disk_usage(tmp_path).total


@pytest.mark.skipif(nvml_present(), reason="this machine has NVML")
def test_machine_without_nvml_has_no_gpu_and_says_so_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.INFO, logger="calctra_agent.probe"):
        inventory = probe_gpus()

    assert inventory.gpus == ()
    assert inventory.reason and "nvml unavailable" in inventory.reason
    gpu_lines = [r for r in caplog.records if r.name == "calctra_agent.probe._gpu"]
    assert [(r.levelno, r.getMessage()) for r in gpu_lines] == [
        (logging.INFO, f"no nvidia gpu found reason={inventory.reason}")
    ]


@pytest.mark.skipif(nvml_present(), reason="this machine has NVML")
def test_heartbeat_sample_of_a_machine_without_gpu(tmp_path: Path) -> None:
    probe_machine(tmp_path, with_engine=False)

    sample = sample_utilization()

    assert 0 <= sample.cpu_percent <= 100
    assert 0 < sample.memory_used_gb <= psutil.virtual_memory().total / GIB
    assert sample.gpus == []


# NVML, through the fake module


def test_fake_nvml_uses_only_names_the_real_pynvml_has() -> None:
    module, _ = fake_nvml()
    public = [name for name in vars(module) if name.startswith(("nvml", "NVML"))]

    assert public and [name for name in public if not hasattr(pynvml, name)] == []


def test_two_gpus_are_parsed_from_nvml(use_fake_nvml: Callable[..., dict[str, int]]) -> None:
    calls = use_fake_nvml()

    inventory = probe_gpus()

    assert inventory.driver_version == "550.54.15"
    assert inventory.cuda_version == "12.4"
    assert inventory.reason is None
    assert inventory.gpus == (
        Gpu(0, A100_UUID, "NVIDIA A100-SXM4-80GB", 80 * GIB, 4 * GIB, 40.0, 61.0),
        Gpu(1, T4_UUID, "Tesla T4", 15 * GIB, 8 * GIB, 41.0, None),
    )
    assert calls == {"init": 1, "shutdown": 1}


def test_probe_without_utilization_leaves_live_readings_out(
    use_fake_nvml: Callable[..., dict[str, int]],
) -> None:
    use_fake_nvml()

    gpus = probe_gpus(with_utilization=False).gpus

    assert [(g.utilization_percent, g.temperature_c) for g in gpus] == [(None, None)] * 2
    assert [g.memory_total_bytes for g in gpus] == [80 * GIB, 15 * GIB]


def test_lost_gpu_is_skipped_and_the_others_still_listed(
    use_fake_nvml: Callable[..., dict[str, int]], caplog: pytest.LogCaptureFixture
) -> None:
    calls = use_fake_nvml(lost_index=0)

    inventory = probe_gpus()

    assert [gpu.uuid for gpu in inventory.gpus] == [T4_UUID]
    assert "gpu skipped index=0 reason=GPU is lost" in caplog.text
    assert calls["shutdown"] == 1


def test_nvml_that_fails_to_start_means_no_gpu(
    use_fake_nvml: Callable[..., dict[str, int]],
) -> None:
    calls = use_fake_nvml(init_error=9)

    inventory = probe_gpus()

    assert inventory.gpus == ()
    assert inventory.reason == "nvml unavailable: code 9"
    assert calls["shutdown"] == 0


def test_heartbeat_sample_leaves_out_held_back_gpus_and_reports_missing_readings_as_none(
    use_fake_nvml: Callable[..., dict[str, int]],
) -> None:
    use_fake_nvml()

    everything = sample_utilization()
    none_offered = sample_utilization(Reservation(gpus=(0,)))

    # The T4 has no temperature sensor: its reading is None, the rest is still reported.
    assert [(g.uuid, g.temperature_c) for g in everything.gpus] == [
        (A100_UUID, 61.0),
        (T4_UUID, None),
    ]
    assert everything.gpus[0].utilization_percent == 40.0
    assert everything.gpus[0].memory_used_gb == 4.0
    assert [g.uuid for g in none_offered.gpus] == [T4_UUID]


# The container engine


def test_engine_at_a_missing_socket_is_unreachable_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = f"unix://{tmp_path / 'docker.sock'}"
    monkeypatch.setenv("DOCKER_HOST", host)

    engine = probe_engine(timeout_s=1)

    assert engine.reachable is False
    assert engine.host == host
    assert engine.reason and "no such file or directory" in engine.reason
    assert engine.gpu_runtime.usable is False


def test_nvidia_runtime_in_docker_info_gives_gpus() -> None:
    runtime = detect_gpu_runtime(
        {"Runtimes": {"runc": {"path": "runc"}, "nvidia": {"path": "nvidia-container-runtime"}}}
    )

    assert runtime == GpuRuntime(nvidia_runtime=True)
    assert runtime.usable


def test_runtime_under_another_name_is_found_by_its_binary() -> None:
    runtime = detect_gpu_runtime(
        {"Runtimes": {"gpu": {"path": "/usr/bin/nvidia-container-runtime"}, "runc": {}}}
    )

    assert runtime.nvidia_runtime


def test_cdi_gpu_devices_in_docker_info_give_gpus() -> None:
    runtime = detect_gpu_runtime(
        {
            "Runtimes": {"runc": {"path": "runc"}},
            "CDISpecDirs": ["/etc/cdi", "/var/run/cdi"],
            "DiscoveredDevices": [
                {"Source": "cdi", "ID": "nvidia.com/gpu=0"},
                {"Source": "cdi", "ID": "nvidia.com/gpu=all"},
                {"Source": "cdi", "ID": "vendor.com/fpga=0"},
            ],
        }
    )

    assert runtime == GpuRuntime(cdi_devices=("nvidia.com/gpu=0", "nvidia.com/gpu=all"))
    assert runtime.usable


@pytest.mark.parametrize(
    "info",
    [
        {"Runtimes": {"runc": {"path": "runc"}, "io.containerd.runc.v2": {"path": "runc"}}},
        {"Runtimes": {"runc": {}}, "CDISpecDirs": ["/etc/cdi"]},
        {"Runtimes": None, "CDISpecDirs": [], "DiscoveredDevices": None},
        {},
    ],
    ids=["runc-only", "cdi-enabled-without-devices", "nulls", "empty"],
)
def test_engine_without_nvidia_runtime_or_cdi_gpu_gives_no_gpu(info: dict[str, Any]) -> None:
    assert detect_gpu_runtime(info).usable is False


# Reservation and specs


def test_offered_is_the_machine_less_the_reservation() -> None:
    probe = machine(gpus=(a100(0), a100(1, T4_UUID)), engine=ENGINE_WITH_GPUS)

    capacity = probe.capacity(Reservation(cpu_cores=4, memory_gb=8, storage_gb=100, gpus=(0,)))

    assert (capacity.cpu_cores, capacity.memory_gb, capacity.storage_gb) == (12, 56.0, 500.0)
    assert [gpu.uuid for gpu in capacity.gpus] == [T4_UUID]


def test_gpu_is_held_back_by_uuid_in_any_case_or_by_index_as_text() -> None:
    probe = machine(gpus=(a100(0), a100(1, T4_UUID), a100(2, "GPU-third")))

    capacity = probe.capacity(Reservation(gpus=(A100_UUID.lower(), "2")))

    assert [gpu.index for gpu in capacity.gpus] == [1]
    assert capacity.unknown_reserved_gpus == ()


def test_reserved_gpu_that_is_not_on_the_machine_is_pointed_out() -> None:
    capacity = machine(gpus=(a100(0),)).capacity(Reservation(gpus=(3, "GPU-typo")))

    assert [gpu.index for gpu in capacity.gpus] == [0]
    assert capacity.unknown_reserved_gpus == (3, "GPU-typo")


def test_reservation_larger_than_the_machine_is_refused_field_by_field() -> None:
    probe = machine(cores=8)

    with pytest.raises(ConfigError) as caught:
        probe.capacity(Reservation(cpu_cores=8, memory_gb=65, storage_gb=2000))

    assert [line.split(":")[0] for line in caught.value.problems] == [
        "reserve.cpu_cores",
        "reserve.memory_gb",
        "reserve.storage_gb",
    ]
    assert "holds back 8 of this machine's 8 cores" in caught.value.problems[0]
    assert "has 64.0 GB" in caught.value.problems[1]


def test_storage_reserve_above_free_space_offers_none_but_is_allowed() -> None:
    capacity = machine().capacity(Reservation(storage_gb=800))

    assert capacity.storage_gb == 0.0


def test_specs_of_a_cpu_machine() -> None:
    specs = machine().to_specs()

    assert specs.model_dump(by_alias=True, exclude_none=True) == {
        "cpuCores": 16,
        "memoryGb": 64.0,
        "storageGb": 600.0,
    }


def test_specs_of_one_gpu_name_it_and_its_memory() -> None:
    specs = machine(gpus=(a100(0),), engine=ENGINE_WITH_GPUS).to_specs()

    assert (specs.gpu_model, specs.gpu_memory_gb) == ("NVIDIA A100-SXM4-80GB", 80.0)


def test_specs_of_several_gpus_count_them_and_give_the_smallest_memory() -> None:
    t4 = Gpu(2, T4_UUID, "Tesla T4", 15 * GIB + GIB // 2)
    probe = machine(gpus=(a100(0), a100(1, "GPU-other"), t4), engine=ENGINE_WITH_GPUS)

    specs = probe.to_specs()

    assert specs.gpu_model == "2x NVIDIA A100-SXM4-80GB + 1x Tesla T4"
    assert specs.gpu_memory_gb == 15.5


def test_gpus_are_not_offered_when_the_engine_cannot_give_them_to_containers() -> None:
    no_runtime = EngineInfo(host="unix:///var/run/docker.sock", reachable=True)

    capacity = machine(gpus=(a100(0),), engine=no_runtime).capacity()

    assert capacity.gpus == ()
    assert capacity.to_specs().gpu_model is None
    assert capacity.gpus_withheld and "no nvidia runtime" in capacity.gpus_withheld


# What `calctra-agent probe` prints


def test_probe_json_holds_the_machine_and_the_offered_specs() -> None:
    probe = machine(gpus=(a100(0), a100(1, T4_UUID)), engine=ENGINE_WITH_GPUS)

    data = json.loads(json.dumps(probe_as_json(probe, Reservation(cpu_cores=2, gpus=(1,)))))

    assert data["cpu"]["logical_cores"] == 16
    assert data["gpu"]["gpus"][1]["uuid"] == T4_UUID
    assert data["engine"]["gpu_runtime"]["nvidia_runtime"] is True
    assert data["offered"] == {
        "cpuCores": 14,
        "memoryGb": 64.0,
        "storageGb": 600.0,
        "gpuModel": "NVIDIA A100-SXM4-80GB",
        "gpuMemoryGb": 80.0,
        "gpuUuids": [A100_UUID],
    }
    assert data["problems"] == [] and data["notes"] == []


def test_probe_json_of_a_reservation_too_large_offers_nothing_and_says_why() -> None:
    data = probe_as_json(machine(cores=4), Reservation(cpu_cores=6))

    assert data["offered"] is None
    assert data["problems"][0].startswith("reserve.cpu_cores: holds back 6")


def test_probe_table_shows_each_part_and_what_is_offered() -> None:
    unreachable = EngineInfo(
        host="unix:///run/docker.sock", reachable=False, reason="no such file or directory"
    )
    probe = machine(gpus=(a100(0),), engine=unreachable)
    console = Console(record=True, width=200)

    console.print(render_probe_table(probe, Reservation(cpu_cores=2)))
    text = console.export_text()

    assert "AMD EPYC 7763 (x86_64), 16 logical / 8 physical cores, 2450 MHz" in text
    assert "driver 550.54.15, CUDA 12.4" in text
    assert f"NVIDIA A100-SXM4-80GB, 80.0 GB, {A100_UUID}" in text
    assert "unreachable at unix:///run/docker.sock: no such file or directory" in text
    assert "14 cores, 64 GB memory, 600 GB storage, no gpu:" in text


def test_reachable_engine_reports_its_version_and_gpu_runtime(
    short_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    socket_path = short_tmp / "docker.sock"
    monkeypatch.setenv("DOCKER_HOST", f"unix://{socket_path}")
    info = {
        "ServerVersion": "28.3.0",
        "Runtimes": {"runc": {"path": "runc"}},
        "DiscoveredDevices": [{"Source": "cdi", "ID": "nvidia.com/gpu=0"}],
    }

    with engine_stub(socket_path, info) as paths:
        engine = probe_engine(timeout_s=2)

    assert engine == EngineInfo(
        host=f"unix://{socket_path}",
        reachable=True,
        server_version="28.3.0",
        gpu_runtime=GpuRuntime(cdi_devices=("nvidia.com/gpu=0",)),
    )
    assert paths == ["/version", f"/v{API_VERSION}/info"]


def test_public_names_are_exported_and_sorted() -> None:
    import calctra_agent.probe as probe

    assert probe.__all__ == sorted(probe.__all__)
    assert [name for name in probe.__all__ if not hasattr(probe, name)] == []
