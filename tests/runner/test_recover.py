"""A runner that detaches and a new one that takes its jobs up: nothing runs twice, nothing
is lost, and what is not ours any more is removed."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from calctra_agent.probe import GpuRuntime
from calctra_agent.runner import Completed, Recovery
from calctra_agent.runner.docker import _workdir as workdir
from calctra_agent.runner.docker._container import create_kwargs, job_user
from calctra_agent.runner.docker._labels import Identity, labels
from calctra_agent.wire import FailureReason
from tests.runner.conftest import (
    PYTHON_IMAGE,
    Events,
    Harness,
    failed,
    job,
    unpack,
    wait_idle,
)

COUNTS = """
import os, time
for i in range(40):
    print(f"line {i:02d}", flush=True)
    if i % 10 == 0:
        print(f"CALCTRA_PROGRESS={i * 2}", flush=True)
    time.sleep(0.1)
with open(os.path.join(os.environ["CALCTRA_OUTPUT_DIR"], "count"), "w") as out:
    out.write("40")
"""
COUNTED = "".join(
    f"line {i:02d}\n" + (f"CALCTRA_PROGRESS={i * 2}\n" if i % 10 == 0 else "") for i in range(40)
).encode()
ENDS_ALONE = """
import os, time
time.sleep(0.5)
print("finished alone")
with open(os.path.join(os.environ["CALCTRA_OUTPUT_DIR"], "ok"), "w") as out:
    out.write("yes")
"""


def wait_exited(harness: Harness, instance_id: str, timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if all(c.status == "exited" for c in harness.containers(instance_id)):
            return
        time.sleep(0.1)
    raise AssertionError("the container did not exit")


def test_new_runner_reattaches_to_a_running_job_and_its_log_resumes(
    harness: Harness, tmp_path: Path
) -> None:
    first, first_events = harness.runner(), Events()
    spec = job(COUNTS)
    first.start(spec, first_events)
    first_events.wait_for(lambda: len(harness.platform.log(spec.job_id)) > 20)
    first.detach()
    shipped_before = harness.platform.log(spec.job_id)

    second, events = harness.runner(first.instance_id), Events()
    recovery = second.recover([spec], events)
    outcome = events.outcome(spec.job_id)

    assert recovery == Recovery(running=[spec.job_id], lost=[])
    assert first_events.outcomes == []
    assert COUNTED.startswith(shipped_before) and len(shipped_before) < len(COUNTED)
    assert harness.platform.log(spec.job_id) == COUNTED
    assert unpack(outcome, tmp_path / "unpacked") == {"count": b"40"}
    assert events.percents(spec.job_id)[-1] == 60
    wait_idle(second)
    assert harness.containers(first.instance_id) == []


def test_job_that_ended_while_detached_is_reported_by_recover(
    harness: Harness, tmp_path: Path
) -> None:
    first, first_events = harness.runner(), Events()
    spec = job(ENDS_ALONE)
    first.start(spec, first_events)
    first_events.wait_for(lambda: first_events.started_jobs)
    first.detach()
    wait_exited(harness, first.instance_id)

    second, events = harness.runner(first.instance_id), Events()
    recovery = second.recover([spec], events)

    assert recovery == Recovery(running=[], lost=[])
    [(job_id, outcome)] = events.outcomes  # reported before recover returned
    assert job_id == spec.job_id and isinstance(outcome, Completed)
    assert "finished alone" in outcome.message
    assert unpack(outcome, tmp_path / "unpacked") == {"ok": b"yes"}
    assert harness.platform.log(spec.job_id) == b"finished alone\n"
    assert first_events.outcomes == []
    assert harness.containers(first.instance_id) == []


def test_recovered_job_keeps_its_original_deadline(harness: Harness) -> None:
    first, first_events = harness.runner(), Events()
    spec = job("import time\ntime.sleep(60)", timeout_s=3)
    started = time.monotonic()
    first.start(spec, first_events)
    first_events.wait_for(lambda: first_events.started_jobs)
    first.detach()
    time.sleep(1)

    second, events = harness.runner(first.instance_id), Events()
    second.recover([spec], events)
    outcome = failed(events.outcome(spec.job_id))

    assert outcome.reason is FailureReason.TIMEOUT
    assert time.monotonic() - started < 3 + 3  # not 1 + 3 from the recovery on


def test_job_failed_while_detached_keeps_its_exit_code(harness: Harness) -> None:
    first, first_events = harness.runner(), Events()
    spec = job("import sys\nprint('oops')\nsys.exit(7)")
    first.start(spec, first_events)
    first_events.wait_for(lambda: first_events.started_jobs)
    first.detach()
    wait_exited(harness, first.instance_id)

    second, events = harness.runner(first.instance_id), Events()
    second.recover([spec], events)
    outcome = failed(events.outcome(spec.job_id, timeout_s=1))

    assert (outcome.reason, outcome.exit_code) == (FailureReason.EXIT_CODE, 7)
    assert "oops" in outcome.message


def test_cancel_of_a_job_stopped_while_detached_is_reported_at_recovery(harness: Harness) -> None:
    first, first_events = harness.runner(), Events()
    spec = job("import time\ntime.sleep(60)")
    first.start(spec, first_events)
    first_events.wait_for(lambda: first_events.started_jobs)
    first.detach()
    first.cancel(spec.job_id)
    wait_exited(harness, first.instance_id)

    second, events = harness.runner(first.instance_id), Events()
    second.recover([spec], events)

    assert failed(events.outcome(spec.job_id, 1)).reason is FailureReason.CANCELLED_BY_AGENT


def test_recover_removes_orphans_of_this_instance_only_and_reports_lost_jobs(
    harness: Harness,
) -> None:
    ours, theirs = harness.runner(), harness.runner()
    orphan, foreign = job("import time\ntime.sleep(60)"), job("import time\ntime.sleep(60)")
    for runner, spec in ((ours, orphan), (theirs, foreign)):
        events = Events()
        runner.start(spec, events)
        events.wait_for(lambda events=events: events.started_jobs)
        runner.detach()
    never_started = job("print('lost')")

    again, events = harness.runner(ours.instance_id), Events()
    recovery = again.recover([never_started], events)

    assert recovery == Recovery(running=[], lost=[never_started.job_id])
    assert harness.containers(ours.instance_id) == []
    assert not (ours.settings.work_dir / orphan.job_id).exists()
    [kept] = harness.containers(theirs.instance_id)
    assert kept.status == "running"
    assert events.outcomes == []


def test_runner_detached_before_the_container_starts_leaves_the_job_lost(
    harness: Harness,
) -> None:
    harness.platform.add_dataset("ds_slow", b"1,2,3\n")
    harness.platform.download_gate = threading.Event()
    first, first_events = harness.runner(), Events()
    spec = job("print('never')", datasets=("ds_slow",))
    first.start(spec, first_events)
    first_events.wait_for(lambda: harness.platform.downloads)
    threading.Timer(0.3, harness.platform.download_gate.set).start()
    first.detach()

    second, events = harness.runner(first.instance_id), Events()
    recovery = second.recover([spec], events)

    assert recovery == Recovery(running=[], lost=[spec.job_id])
    assert first_events.started_jobs == [] and first_events.outcomes == []
    assert harness.containers(first.instance_id) == []
    assert not (first.settings.work_dir / spec.job_id).exists()


def test_container_created_but_not_started_is_started_at_recovery(
    harness: Harness, tmp_path: Path
) -> None:
    runner = harness.runner()
    spec = job(ENDS_ALONE)
    directory = workdir.job_dir(runner.settings.work_dir, spec.job_id)
    workdir.prepare(directory, spec.code, job_user("auto"))
    identity = Identity("res_test", runner.instance_id)
    kwargs = create_kwargs(
        spec, PYTHON_IMAGE, directory, runner.settings.containers,
        labels(spec, identity, time.time() + 60), GpuRuntime(),
    )  # fmt: skip
    harness.client.containers.create(**kwargs)  # as an agent that stopped right after this

    events = Events()
    recovery = runner.recover([spec], events)
    outcome = events.outcome(spec.job_id)

    assert recovery.running == [spec.job_id]
    assert events.started_jobs == [spec.job_id]
    assert unpack(outcome, tmp_path / "unpacked") == {"ok": b"yes"}
