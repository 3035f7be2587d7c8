"""The whole path of a job, end to end: `calctra-agent run` with the Docker runner, against the
reference server on loopback and the real Docker engine.

The runner's own behaviour (isolation, limits, each failure) is in tests/runner; these tests
are about the agent and the platform together: results and logs reaching the job's owner, a
dataset fetched from the platform, payment, restarts, cancels and orphans.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from tests.conftest import Account, MakeServer
from tests.daemon.conftest import (
    Machine,
    Market,
    OpenMarket,
    declines,
    outbox,
    own_server,
    paid,
    transactions,
    wait_for,
    wait_job,
)
from tests.docker_support import PYTHON_IMAGE, docker_client, require_images


@pytest.fixture(autouse=True, scope="module")
def _images() -> None:
    client = docker_client()
    try:
        require_images(client)
    finally:
        client.close()


def docker_machine(market: Market, **config: object) -> Machine:
    settings: dict[str, object] = {
        "images": {"default_image": PYTHON_IMAGE, "min_free_gb": 0},
        "containers": {"progress_interval_s": 0.5},
    }
    settings.update(config)
    return market.machine(docker=True, **settings)


STEPS_JOB = """\
import os, pathlib, time
print("job starting", flush=True)
for step in range(1, 5):
    pathlib.Path(os.environ["CALCTRA_PROGRESS_FILE"]).write_text(str(step * 25))
    print(f"step {step}", flush=True)
    time.sleep(0.4)
out = pathlib.Path(os.environ["CALCTRA_OUTPUT_DIR"])
(out / "answer.txt").write_text("42\\n")
(out / "sub").mkdir()
(out / "sub" / "job-id.txt").write_text(os.environ["CALCTRA_JOB_ID"])
"""


def results_of(customer: Account, job_id: str) -> dict[str, str]:
    response = customer.http.get(f"/jobs/{job_id}/results")
    assert response.status_code == 200, response.text
    with tarfile.open(fileobj=io.BytesIO(response.content), mode="r:gz") as tar:
        return {
            member.name.removeprefix("./"): tar.extractfile(member).read().decode()  # type: ignore[union-attr]
            for member in tar.getmembers()
            if member.isfile()
        }


def logs_of(customer: Account, job_id: str) -> str:
    response = customer.http.get(f"/jobs/{job_id}/logs")
    assert response.status_code == 200, response.text
    return response.text


def test_job_runs_in_a_container_and_its_owner_gets_progress_results_logs_and_the_bill(
    market: Market, customer: Account
) -> None:
    machine = docker_machine(market)
    machine.start()
    job_id = market.job(customer, code=STEPS_JOB)

    running = wait_job(customer, job_id, status="RUNNING")
    seen = {running["progress"]}
    while (job := customer.http.get(f"/jobs/{job_id}").json())["status"] == "RUNNING":
        seen.add(job["progress"])
    wait_for(lambda: paid(market, job_id), what="the payment")

    job = wait_job(customer, job_id, status="COMPLETED")
    assert job["progress"] == 100
    assert seen & {25, 50, 75}, seen
    assert job["result"]["size"] > 0
    assert results_of(customer, job_id) == {"answer.txt": "42\n", "sub/job-id.txt": job_id}
    log = logs_of(customer, job_id)
    assert log.startswith("job starting\nstep 1\n") and "step 4\n" in log
    assert len(transactions(market, job_id, "PAYMENT")) == 1
    wait_for(lambda: outbox(machine, job_id) == 0, what="an empty outbox")
    wait_for(lambda: not machine.containers(), what="the container to be removed")
    assert not list((machine.state_dir / "results").glob("*")), "archive left behind"


def test_job_reads_its_dataset_fetched_from_the_platform(
    market: Market, customer: Account, tmp_path: Path
) -> None:
    source = tmp_path / "numbers.csv"
    source.write_text("".join(f"{n}\n" for n in range(100)))
    with source.open("rb") as file:
        uploaded = customer.http.post(
            "/data",
            data={"name": "numbers", "type": "table", "format": "csv"},
            files={"file": ("numbers.csv", file, "text/csv")},
        )
    assert uploaded.status_code == 201, uploaded.text
    dataset_id = uploaded.json()["datasetId"]
    code = f"""\
import os, pathlib
path = pathlib.Path(os.environ["CALCTRA_DATA_DIR"]) / {dataset_id!r}
total = sum(int(line) for line in path.read_text().split())
try:
    path.write_text("changed")
    writable = "yes"
except OSError:
    writable = "no"
(pathlib.Path(os.environ["CALCTRA_OUTPUT_DIR"]) / "sum.txt").write_text(f"{{total}} {{writable}}")
"""
    machine = docker_machine(market)
    machine.start()
    job_id = market.job(customer, code=code, datasets=[dataset_id])
    wait_for(lambda: paid(market, job_id), what="the payment")

    assert results_of(customer, job_id) == {"sum.txt": "4950 no"}
    assert customer.http.get(f"/data/{dataset_id}").json()["accessCount"] == 1


def test_failing_job_is_reported_failed_with_its_exit_code_and_is_not_paid(
    market: Market, customer: Account
) -> None:
    machine = docker_machine(market)
    machine.start()
    job_id = market.job(customer, code="import sys\nprint('bad input')\nsys.exit(3)\n")

    job = wait_job(customer, job_id, status="FAILED")
    assert "exit code 3" in job["statusMessage"] and "bad input" in job["statusMessage"]
    assert logs_of(customer, job_id) == "bad input\n"
    wait_for(lambda: outbox(machine, job_id) == 0, what="an empty outbox")
    assert not paid(market, job_id)


def test_job_cancelled_by_its_owner_is_killed_within_five_seconds(
    market: Market, customer: Account
) -> None:
    machine = docker_machine(market)
    machine.start()
    job_id = market.job(customer, code="import time\nprint('up', flush=True)\ntime.sleep(120)\n")
    wait_job(customer, job_id, status="RUNNING")

    assert customer.http.post(f"/jobs/{job_id}/cancel").status_code == 200
    wait_for(lambda: not machine.containers(), timeout_s=5, what="the container to go")

    machine.wait_log(f"report sent job_id={job_id} status=CANCELLED")
    assert wait_job(customer, job_id, status="CANCELLED")
    assert not paid(market, job_id)


FAKE_NVML = """\
# NVML as a machine with one 16 GB GPU would answer: there is no GPU on the test machines.
class NVMLError(Exception):
    pass
NVML_TEMPERATURE_GPU = 0
class _Memory:
    total, used, free = 16 * 2**30, 0, 16 * 2**30
class _Rates:
    gpu, memory = 0, 0
def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlDeviceGetCount(): return 1
def nvmlDeviceGetHandleByIndex(index): return index
def nvmlDeviceGetName(handle): return "Tesla T4"
def nvmlDeviceGetUUID(handle): return "GPU-00000000-0000-0000-0000-000000000001"
def nvmlDeviceGetMemoryInfo(handle): return _Memory()
def nvmlDeviceGetUtilizationRates(handle): return _Rates()
def nvmlDeviceGetTemperature(handle, sensor): return 40
def nvmlSystemGetDriverVersion(): return "550.54.15"
def nvmlSystemGetCudaDriverVersion(): return 12040
"""


def test_gpu_job_is_declined_by_a_machine_whose_engine_has_no_gpu_runtime(
    market: Market, customer: Account, tmp_path: Path
) -> None:
    # NVML is faked (no GPU here): the machine has a GPU, but the engine (the real one) has no
    # GPU runtime, so the agent does not offer it. The platform still lists the GPU, as it
    # would when the runtime went away after the machine registered.
    fake = tmp_path / "fake-nvml"
    fake.mkdir()
    (fake / "pynvml.py").write_text(FAKE_NVML)
    root = Path(__file__).resolve().parents[2]
    machine = docker_machine(market, login=False)
    machine.env["PYTHONPATH"] = f"{fake}:{root}"
    machine.login()
    machine.start()
    resource = machine.owner.http.get(f"/resources/{machine.resource_id}").json()
    specs = {**resource["specs"], "gpuModel": "Tesla T4", "gpuMemoryGb": 16}
    update = {k: resource[k] for k in ("name", "description", "type", "pricePerHour")}
    updated = machine.owner.http.put(
        f"/resources/{machine.resource_id}", json={**update, "specs": specs}
    )
    assert updated.status_code == 200, updated.text
    requirements = {
        "minCpuCores": 1,
        "minMemoryGb": 1,
        "estimatedDurationHours": 0.01,
        "needsGpu": True,
        "minGpuMemoryGb": 1,
    }
    job_id = market.job(customer, requirements=requirements)

    wait_for(lambda: declines(market, job_id), what="the decline")
    assert declines(market, job_id) == [(machine.resource_id, "GPU_UNAVAILABLE")]
    declined = "reason=GPU_UNAVAILABLE detail=this machine offers no GPU: the container engine"
    assert f"{declined} has no GPU runtime" in machine.log()
    assert not machine.containers()


def test_agent_killed_while_its_container_runs_finishes_the_job_once_after_a_restart(
    market: Market, customer: Account, tmp_path: Path
) -> None:
    machine = docker_machine(market)
    machine.start()
    code = """\
import os, pathlib, time
print("job starting", flush=True)
for step in range(1, 9):
    print(f"step {step}", flush=True)
    time.sleep(0.5)
(pathlib.Path(os.environ["CALCTRA_OUTPUT_DIR"]) / "done.txt").write_text("done")
"""
    job_id = market.job(customer, code=code)
    wait_job(customer, job_id, status="RUNNING")
    wait_for(lambda: "step 2" in logs_of(customer, job_id), what="the first log lines")

    machine.kill()
    (container,) = machine.containers()
    assert container.status == "running"
    machine.start()
    wait_for(lambda: paid(market, job_id), timeout_s=60, what="the payment")

    assert "jobs recovered running=1 lost=0" in machine.log()
    assert results_of(customer, job_id) == {"done.txt": "done"}
    log = logs_of(customer, job_id)
    assert log == "job starting\n" + "".join(f"step {n}\n" for n in range(1, 9)), log
    assert len(transactions(market, job_id, "PAYMENT")) == 1
    wait_for(lambda: not machine.containers(), what="the container to be removed")


def test_container_whose_job_was_cancelled_while_the_agent_was_down_is_removed(
    market: Market, customer: Account
) -> None:
    machine = docker_machine(market)
    machine.start()
    job_id = market.job(customer, code="import time\ntime.sleep(120)\n")
    wait_job(customer, job_id, status="RUNNING")
    machine.kill()
    assert customer.http.post(f"/jobs/{job_id}/cancel").status_code == 200

    machine.start()

    assert f"dropping it job_id={job_id}" in machine.log()
    assert not machine.containers()
    # The platform may still ask for the cancel to be acknowledged: the ack is sent, and then
    # nothing is left to send for the job.
    wait_for(lambda: outbox(machine, job_id) == 0, what="an empty outbox for the job")


def test_results_the_platform_refuses_fail_the_job_unpaid(
    make_server: MakeServer, open_market: OpenMarket
) -> None:
    market = open_market(own_server(make_server, "--max-upload-mb", "1"))
    customer = market.account("Customer Carol", deposit=1000)
    machine = docker_machine(market)
    machine.start()
    # 3 MB of random bytes: the archive stays over the server's 1 MB upload limit.
    code = (
        "import os, pathlib\n"
        "out = pathlib.Path(os.environ['CALCTRA_OUTPUT_DIR'])\n"
        "(out / 'noise.bin').write_bytes(os.urandom(3 * 2**20))\n"
    )
    job_id = market.job(customer, code=code)

    job = wait_job(customer, job_id, status="FAILED", timeout_s=60)
    assert "the platform refused the results" in job["statusMessage"]
    wait_for(lambda: outbox(machine, job_id) == 0, what="an empty outbox")
    assert not paid(market, job_id)
    assert f"results refused job_id={job_id}" in machine.log()
    assert not list((machine.state_dir / "results").glob("*")), "archive left behind"
