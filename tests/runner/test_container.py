"""The container a job gets, as a pure function of the job, the settings and the engine's GPU
runtime. No GPU is on this machine: the GPU runtime here is described, not detected."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from docker.types import DeviceRequest

from calctra_agent.config import ContainerSettings
from calctra_agent.errors import RunnerError
from calctra_agent.probe import GpuRuntime
from calctra_agent.runner import Grant, JobSpec
from calctra_agent.runner.docker._container import create_kwargs, device_requests, job_user
from calctra_agent.runner.docker._labels import Identity, container_name, labels
from calctra_agent.runner.docker._workdir import JobDir
from tests.runner.conftest import job

GPU_A = "GPU-5f3c0000-0000-0000-0000-00000000000a"
GPU_B = "GPU-5f3c0000-0000-0000-0000-00000000000b"
NVIDIA = GpuRuntime(nvidia_runtime=True)
NO_GPU_RUNTIME = GpuRuntime()


def gpu_job(*uuids: str) -> JobSpec:
    return job("1", grant=Grant(cpu_cores=2, memory_gb=4, storage_gb=1, gpu_uuids=uuids))


def test_gpu_grant_asks_the_nvidia_runtime_for_exactly_the_granted_uuids() -> None:
    requests = device_requests(gpu_job(GPU_A, GPU_B), NVIDIA)

    assert requests == [DeviceRequest(device_ids=[GPU_A, GPU_B], capabilities=[["gpu"]])]


def test_gpu_grant_uses_cdi_devices_of_the_same_uuids_without_the_nvidia_runtime() -> None:
    cdi = GpuRuntime(cdi_devices=(f"nvidia.com/gpu={GPU_A}", "nvidia.com/gpu=all"))

    requests = device_requests(gpu_job(GPU_A), cdi)

    assert requests == [DeviceRequest(driver="cdi", device_ids=[f"nvidia.com/gpu={GPU_A}"])]


def test_cdi_devices_that_do_not_name_the_granted_uuid_are_refused() -> None:
    cdi = GpuRuntime(cdi_devices=("nvidia.com/gpu=0",))

    with pytest.raises(RunnerError, match="--device-name-strategy=uuid"):
        device_requests(gpu_job(GPU_A), cdi)


def test_no_device_requests_for_a_job_without_gpus() -> None:
    assert device_requests(job("1"), NVIDIA) == []
    assert device_requests(job("1"), NO_GPU_RUNTIME) == []


def test_gpu_grant_without_a_gpu_runtime_is_refused() -> None:
    with pytest.raises(RunnerError, match="has no GPU runtime"):
        device_requests(gpu_job(GPU_A), NO_GPU_RUNTIME)


def test_create_kwargs_confine_the_job_to_its_grant(tmp_path: Path) -> None:
    spec = gpu_job(GPU_A)
    settings = ContainerSettings(pids_limit=200, tmp_size_mb=64, user="1000")
    job_labels = labels(spec, Identity("res_1", "inst_1"), deadline=1_800_000_000.5)

    kwargs = create_kwargs(
        spec, "python:3.12-slim", JobDir(tmp_path), settings, job_labels, NVIDIA
    )

    assert kwargs["mem_limit"] == kwargs["memswap_limit"] == 4 * 1024**3
    assert kwargs["nano_cpus"] == 2 * 10**9
    assert kwargs["pids_limit"] == 200
    assert kwargs["tmpfs"] == {"/tmp": "rw,nosuid,nodev,size=64m"}
    assert kwargs["user"] == "1000:1000"
    assert kwargs["network_mode"] == "none" and kwargs["read_only"] is True
    assert kwargs["cap_drop"] == ["ALL"] and kwargs["security_opt"] == ["no-new-privileges"]
    assert kwargs["device_requests"] == [DeviceRequest(device_ids=[GPU_A], capabilities=[["gpu"]])]
    assert kwargs["entrypoint"] + kwargs["command"] == ["python3", "/job/code/main.py"]
    assert kwargs["working_dir"] == "/job/output"
    assert set(kwargs["environment"]) == {
        "CALCTRA_JOB_ID", "CALCTRA_OUTPUT_DIR", "CALCTRA_DATA_DIR", "CALCTRA_PROGRESS_FILE",
        "HOME", "PYTHONUNBUFFERED",
    }  # fmt: skip
    assert job_labels["calctra.deadline"] == "1800000000.500"
    assert kwargs["name"] == container_name(spec.job_id, "inst_1")


def test_memory_below_the_engines_minimum_is_refused(tmp_path: Path) -> None:
    spec = job("1", grant=Grant(cpu_cores=1, memory_gb=0.001, storage_gb=1))

    with pytest.raises(RunnerError, match="below the engine's minimum"):
        create_kwargs(
            spec, "x", JobDir(tmp_path), ContainerSettings(), {"calctra.instance-id": "i"}, NVIDIA
        )


def test_job_user() -> None:
    assert job_user("1000") == (1000, 1000)
    assert job_user("1000:100") == (1000, 100)
    expected = (65534, 65534) if os.getuid() == 0 else (os.getuid(), os.getgid())
    assert job_user("auto") == expected


def test_container_names_differ_between_instances_and_stay_valid() -> None:
    one, other = container_name("job_1", "inst a"), container_name("job_1", "inst b")

    assert one != other
    assert one.startswith("calctra-job_1-") and " " not in one
