"""What a job's container is made of: mounts, limits, devices, environment and user.

Everything here is a pure function of the job, the settings and the engine's GPU runtime, so
that the confinement of a job can be read, and tested, without starting one.
"""

from __future__ import annotations

import os
from typing import Any

from docker.types import DeviceRequest, LogConfig, Mount

from calctra_agent.config import ContainerSettings
from calctra_agent.errors import RunnerError
from calctra_agent.probe import GpuRuntime
from calctra_agent.runner._interface import JobSpec
from calctra_agent.runner.docker._labels import LABEL_INSTANCE_ID, container_name
from calctra_agent.runner.docker._workdir import JobDir

CODE_DIR = "/job/code"
DATA_DIR = "/job/data"
OUTPUT_DIR = "/job/output"
STATUS_DIR = "/job/status"
PROGRESS_FILE = f"{STATUS_DIR}/progress"
COMMAND = ["python3", f"{CODE_DIR}/main.py"]

NOBODY = (65534, 65534)
GIB = 1024**3
_MIN_MEMORY_BYTES = 6 * 1024**2
"""The engine refuses a smaller memory limit."""
LOG_MAX_SIZE = "64m"
LOG_MAX_FILES = 2
"""The engine keeps at most 2 x 64 MiB of a job's log on its disk: well past what the
platform stores of it, so that the agent ships every byte the platform takes."""
_CDI_GPU_KIND = "nvidia.com/gpu"


def job_user(setting: str) -> tuple[int, int]:
    """The uid and gid jobs run as. "auto": nobody when the agent is root, else the agent's
    own ids, so that the agent can always read and remove what a job wrote. A uid given
    alone is also the gid: the engine would otherwise pick group root."""
    if setting == "auto":
        return NOBODY if os.getuid() == 0 else (os.getuid(), os.getgid())
    uid, _, gid = setting.partition(":")
    return int(uid), int(gid or uid)


def create_kwargs(
    spec: JobSpec,
    image: str,
    job_dir: JobDir,
    settings: ContainerSettings,
    job_labels: dict[str, str],
    gpu: GpuRuntime,
) -> dict[str, Any]:
    """The keyword arguments of `containers.create` for the job."""
    uid, gid = job_user(settings.user)
    return {
        "image": image,
        "entrypoint": COMMAND[:1],
        "command": COMMAND[1:],
        "name": container_name(spec.job_id, job_labels[LABEL_INSTANCE_ID]),
        "labels": job_labels,
        "environment": environment(spec),
        "working_dir": OUTPUT_DIR,
        "user": f"{uid}:{gid}",
        "mounts": mounts(job_dir),
        "network_mode": "none",
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "read_only": True,
        "tmpfs": {"/tmp": f"rw,nosuid,nodev,size={settings.tmp_size_mb}m"},
        "pids_limit": settings.pids_limit,
        **resource_limits(spec),
        "device_requests": device_requests(spec, gpu),
        "log_config": LogConfig(
            type=LogConfig.types.JSON,
            config={"max-size": LOG_MAX_SIZE, "max-file": str(LOG_MAX_FILES)},
        ),
        "auto_remove": False,
        "detach": True,
    }


def environment(spec: JobSpec) -> dict[str, str]:
    """The whole environment of the job, beyond the image's PATH: nothing of the agent's."""
    return {
        "CALCTRA_JOB_ID": spec.job_id,
        "CALCTRA_OUTPUT_DIR": OUTPUT_DIR,
        "CALCTRA_DATA_DIR": DATA_DIR,
        "CALCTRA_PROGRESS_FILE": PROGRESS_FILE,
        "HOME": "/tmp",
        "PYTHONUNBUFFERED": "1",
    }


def mounts(job_dir: JobDir) -> list[Mount]:
    """The job's code and datasets read-only, its output and status writable; nothing else of
    the host."""
    return [
        Mount(CODE_DIR, str(job_dir.code), type="bind", read_only=True),
        Mount(DATA_DIR, str(job_dir.data), type="bind", read_only=True),
        Mount(OUTPUT_DIR, str(job_dir.output), type="bind", read_only=False),
        Mount(STATUS_DIR, str(job_dir.status), type="bind", read_only=False),
    ]


def resource_limits(spec: JobSpec) -> dict[str, int]:
    """Memory (swap included, so no swap) and CPU time as granted."""
    grant = spec.grant
    memory = int(grant.memory_gb * GIB)
    if memory < _MIN_MEMORY_BYTES:
        raise RunnerError(
            f"cannot run job {spec.job_id}: its memory grant of {grant.memory_gb:g} GB is below "
            "the engine's minimum of 6 MiB"
        )
    if grant.cpu_cores < 1:
        raise RunnerError(f"cannot run job {spec.job_id}: it was granted no CPU core")
    return {"mem_limit": memory, "memswap_limit": memory, "nano_cpus": grant.cpu_cores * 10**9}


def device_requests(spec: JobSpec, gpu: GpuRuntime) -> list[DeviceRequest]:
    """The granted GPUs, by UUID, and no other: through the nvidia runtime, or else as the CDI
    devices of the same UUIDs. None for a job granted no GPU."""
    uuids = list(spec.grant.gpu_uuids)
    if not uuids:
        return []
    if gpu.nvidia_runtime:
        return [DeviceRequest(device_ids=uuids, capabilities=[["gpu"]])]
    if not gpu.cdi_devices:
        raise RunnerError(
            f"cannot run job {spec.job_id}: it was granted GPUs {', '.join(uuids)} but the "
            "Docker engine has no GPU runtime (install nvidia-container-toolkit)"
        )
    names = [f"{_CDI_GPU_KIND}={uuid}" for uuid in uuids]
    missing = [name for name in names if name not in gpu.cdi_devices]
    if missing:
        raise RunnerError(
            f"cannot run job {spec.job_id}: the engine's CDI devices do not include "
            f"{', '.join(missing)}; generate them with `nvidia-ctk cdi generate "
            "--device-name-strategy=uuid`"
        )
    return [DeviceRequest(driver="cdi", device_ids=names)]
