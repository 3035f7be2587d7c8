"""A job's life in its container: results, progress, logs, and every way it can end."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from calctra_agent.errors import RunnerError
from calctra_agent.runner import Completed, Grant
from calctra_agent.runner.docker import DockerRunner
from calctra_agent.wire import FailureReason
from tests.runner.conftest import (
    BUSYBOX_IMAGE,
    Events,
    Harness,
    failed,
    job,
    unpack,
    wait_idle,
)

SUCCEEDS = """
import os, time
out = os.environ["CALCTRA_OUTPUT_DIR"]
with open(os.environ["CALCTRA_PROGRESS_FILE"], "w") as progress:
    progress.write("30")
time.sleep(1.0)
print("CALCTRA_PROGRESS=70", flush=True)
time.sleep(1.0)
os.makedirs(os.path.join(out, "sub"))
with open(os.path.join(out, "result.txt"), "w") as result:
    result.write("42\\n")
with open(os.path.join(out, "sub", "bytes.bin"), "wb") as more:
    more.write(bytes(range(256)))
print("done computing")
"""


def test_job_that_succeeds_completes_with_its_output_packed(
    harness: Harness, tmp_path: Path
) -> None:
    runner, events = harness.runner(), Events()
    spec = job(SUCCEEDS)

    runner.start(spec, events)
    outcome = events.outcome(spec.job_id)

    assert events.started_jobs == [spec.job_id]
    assert unpack(outcome, tmp_path / "unpacked") == {
        "result.txt": b"42\n",
        "sub/bytes.bin": bytes(range(256)),
    }
    assert isinstance(outcome, Completed) and outcome.result is not None
    assert "done computing" in outcome.message
    assert outcome.result.path == harness.tmp_path / "state" / "results" / f"{spec.job_id}.tar.gz"
    assert harness.platform.log(spec.job_id) == b"CALCTRA_PROGRESS=70\ndone computing\n"


def test_progress_comes_from_the_progress_file_and_from_stdout_lines(harness: Harness) -> None:
    runner, events = harness.runner(), Events()
    spec = job(SUCCEEDS)

    runner.start(spec, events)
    events.outcome(spec.job_id)

    assert events.percents(spec.job_id) == [30, 70]


def test_container_and_job_directory_are_removed_after_the_outcome(harness: Harness) -> None:
    runner, events = harness.runner(), Events()
    spec = job("print('hello')")

    runner.start(spec, events)
    events.outcome(spec.job_id)

    wait_idle(runner)
    assert harness.containers(runner.instance_id) == []
    assert not (runner.settings.work_dir / spec.job_id).exists()


def test_failing_code_reports_its_exit_code_and_log_tail(harness: Harness) -> None:
    runner, events = harness.runner(), Events()
    spec = job(
        "import sys\nprint('reading input')\nprint('bad input', file=sys.stderr)\nsys.exit(3)"
    )

    runner.start(spec, events)
    outcome = failed(events.outcome(spec.job_id))

    assert outcome.reason is FailureReason.EXIT_CODE
    assert outcome.exit_code == 3
    assert outcome.message.startswith("exit code 3: ")
    assert "reading input" in outcome.message and "bad input" in outcome.message


def test_job_past_its_time_is_killed_as_timed_out(harness: Harness) -> None:
    runner, events = harness.runner(), Events()
    spec = job("import time\ntime.sleep(60)", timeout_s=1.5)

    started = time.monotonic()
    runner.start(spec, events)
    outcome = failed(events.outcome(spec.job_id))

    assert outcome.reason is FailureReason.TIMEOUT
    assert time.monotonic() - started < 10


def test_cancelled_job_is_killed_within_five_seconds(harness: Harness) -> None:
    runner, events = harness.runner(), Events()
    spec = job("import time\nprint('working', flush=True)\ntime.sleep(60)")
    runner.start(spec, events)
    events.wait_for(lambda: harness.platform.log(spec.job_id))

    cancelled = time.monotonic()
    runner.cancel(spec.job_id)
    outcome = failed(events.outcome(spec.job_id, timeout_s=5))

    assert outcome.reason is FailureReason.CANCELLED_BY_AGENT
    assert time.monotonic() - cancelled < 5


def test_job_over_its_memory_grant_is_out_of_memory(harness: Harness) -> None:
    runner, events = harness.runner(), Events()
    grant = Grant(cpu_cores=1, memory_gb=64 / 1024, storage_gb=1)
    code = "chunks = []\nwhile True:\n    chunks.append(b'x' * 2**20)"
    spec = job(code, grant=grant)

    runner.start(spec, events)
    outcome = failed(events.outcome(spec.job_id))

    assert outcome.reason is FailureReason.OUT_OF_MEMORY
    assert "more than its 0.0625 GB of memory" in outcome.message


def test_job_whose_output_grows_past_the_cap_is_stopped(harness: Harness) -> None:
    runner, events = harness.runner(settings=harness.settings(max_output_mb=1)), Events()
    code = """
import os, time
with open(os.path.join(os.environ["CALCTRA_OUTPUT_DIR"], "big"), "wb") as big:
    big.write(b"x" * 3 * 2**20)
time.sleep(60)
"""
    spec = job(code)

    started = time.monotonic()
    runner.start(spec, events)
    outcome = failed(events.outcome(spec.job_id))

    assert outcome.reason is FailureReason.OUTPUT_TOO_LARGE
    assert outcome.message == "its output grew past 1 MB"
    assert time.monotonic() - started < 15


def test_output_past_the_cap_at_exit_is_not_packed(harness: Harness) -> None:
    runner, events = harness.runner(settings=harness.settings(max_output_mb=1)), Events()
    code = """
import os
with open(os.path.join(os.environ["CALCTRA_OUTPUT_DIR"], "big"), "wb") as big:
    big.write(b"x" * 3 * 2**20)
"""
    spec = job(code)

    runner.start(spec, events)
    outcome = failed(events.outcome(spec.job_id))

    assert outcome.reason is FailureReason.OUTPUT_TOO_LARGE
    assert not (harness.tmp_path / "state" / "results" / f"{spec.job_id}.tar.gz").exists()


def test_datasets_are_mounted_read_only_under_their_ids(harness: Harness, tmp_path: Path) -> None:
    runner, events = harness.runner(), Events()
    digest = harness.platform.add_dataset("ds_points", b"x,y\n1,2\n3,4\n")
    code = """
import hashlib, os
data = os.environ["CALCTRA_DATA_DIR"]
with open(os.path.join(data, "ds_points"), "rb") as dataset:
    digest = hashlib.sha256(dataset.read()).hexdigest()
with open("/proc/self/mounts") as mounts:
    options = [line.split()[3] for line in mounts if line.split()[1] == data]
with open(os.path.join(os.environ["CALCTRA_OUTPUT_DIR"], "report"), "w") as report:
    report.write(f"{sorted(os.listdir(data))} {digest} {options[0].split(',')[0]}")
"""
    spec = job(code, datasets=("ds_points",))

    runner.start(spec, events)
    files = unpack(events.outcome(spec.job_id), tmp_path / "unpacked")

    assert files["report"].decode() == f"['ds_points'] {digest} ro"


def test_dataset_that_cannot_be_downloaded_fails_the_job(harness: Harness) -> None:
    runner, events = harness.runner(), Events()
    spec = job("print('never')", datasets=("ds_missing",))

    runner.start(spec, events)
    outcome = failed(events.outcome(spec.job_id))

    assert outcome.reason is FailureReason.ERROR
    assert "cannot download dataset ds_missing" in outcome.message
    assert events.started_jobs == []
    assert harness.containers(runner.instance_id) == []


def test_image_not_on_the_allowlist_is_refused(harness: Harness) -> None:
    runner = harness.runner()

    with pytest.raises(RunnerError, match="image evil/miner:1 is not on this provider's list"):
        runner.start(job("print(1)", image="evil/miner:1"), Events())

    assert harness.containers(runner.instance_id) == []


def test_job_may_name_an_allowed_image(harness: Harness) -> None:
    runner, events = harness.runner(), Events()
    spec = job("print(1)", image=BUSYBOX_IMAGE)  # no python there: the job fails to run

    runner.start(spec, events)
    outcome = failed(events.outcome(spec.job_id))

    container_error = outcome.reason is FailureReason.ERROR and "python3" in outcome.message
    assert container_error or outcome.reason is FailureReason.EXIT_CODE, outcome


def test_image_that_cannot_be_pulled_fails_the_job_with_the_fix(harness: Harness) -> None:
    missing = "127.0.0.1:9/calctra/missing:1"  # the discard port: nothing answers there
    settings = harness.settings()
    settings.images.allowed_images.append(missing)
    runner, events = harness.runner(settings=settings), Events()
    spec = job("print(1)", image=missing)

    runner.start(spec, events)
    outcome = failed(events.outcome(spec.job_id))

    assert outcome.reason is FailureReason.ERROR
    assert f"cannot pull image {missing}" in outcome.message
    assert "docker pull or docker load" in outcome.message


def test_a_job_is_never_started_twice(harness: Harness) -> None:
    runner, events = harness.runner(), Events()
    spec = job("import time\ntime.sleep(60)")
    runner.start(spec, events)
    events.wait_for(lambda: events.started_jobs)

    with pytest.raises(RunnerError, match="is running here already"):
        runner.start(spec, events)
    runner.detach()
    with pytest.raises(RunnerError, match="has a container on this engine already"):
        harness.runner(runner.instance_id).start(spec, events)


def test_gpu_job_is_refused_without_a_gpu_runtime(harness: Harness) -> None:
    # This engine has no GPU runtime (no NVIDIA hardware here).
    runner = harness.runner()
    spec = job("print(1)", grant=Grant(1, 0.25, 1, ("GPU-5f3c0000-0000-0000-0000-000000000001",)))

    assert runner.gpu_runtime is False
    with pytest.raises(RunnerError, match="no GPU runtime"):
        runner.start(spec, Events())


def test_log_is_shipped_whole_in_bounded_batches(harness: Harness) -> None:
    runner, events = harness.runner(), Events()
    code = "import sys\nfor i in range(6000):\n    print(f'line {i:05d} ' + 'x' * 90)"
    spec = job(code)

    runner.start(spec, events)
    events.outcome(spec.job_id)

    expected = "".join(f"line {i:05d} {'x' * 90}\n" for i in range(6000)).encode()
    assert harness.platform.log(spec.job_id) == expected
    sizes = [size for job_id, _, size in harness.platform.appends if job_id == spec.job_id]
    assert len(sizes) >= 3 and max(sizes) <= 256 * 1024


def test_log_shipping_stops_at_the_platform_cap_while_progress_goes_on(
    harness: Harness,
) -> None:
    harness.platform.log_cap = 50_000
    runner, events = harness.runner(), Events()
    code = """
import time
for i in range(3000):
    print(f"noise {i:05d} " + "y" * 90)
time.sleep(1.5)
print("CALCTRA_PROGRESS=55", flush=True)
time.sleep(1.0)
print("the last line")
"""
    spec = job(code)

    runner.start(spec, events)
    outcome = events.outcome(spec.job_id)

    assert len(harness.platform.log(spec.job_id)) == 50_000
    assert len([a for a in harness.platform.appends if a[0] == spec.job_id]) <= 2
    assert events.percents(spec.job_id) == [55]
    assert outcome.message.endswith("the last line\n")


def test_job_cancelled_while_it_is_being_prepared_ends_cancelled(harness: Harness) -> None:
    runner, events = harness.runner(), Events()
    spec = job("import time\ntime.sleep(60)")

    runner.start(spec, events)
    runner.cancel(spec.job_id)
    outcome = failed(events.outcome(spec.job_id, timeout_s=5))

    assert outcome.reason is FailureReason.CANCELLED_BY_AGENT
    wait_idle(runner)
    assert harness.containers(runner.instance_id) == []


def test_unreachable_engine_is_a_clear_error(harness: Harness, tmp_path: Path) -> None:
    socket_path = tmp_path / "no-docker.sock"
    settings = harness.settings(docker_host=f"unix://{socket_path}")

    with pytest.raises(RunnerError) as raised:
        DockerRunner(settings, harness.platform, "res_test", "test-unreachable")

    assert str(raised.value) == (
        f"cannot reach the Docker engine at unix://{socket_path} (no such file or directory): "
        "is dockerd running, and is this user in the docker group?"
    )
