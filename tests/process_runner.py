"""A runner for the daemon's tests: each job's code runs as a detached Python process.

Like a container, a job's process outlives the agent: it writes its output, exit code and
progress into the job's directory, so an agent that restarts finds it again. It has no
isolation at all and runs only the tests' own code.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from calctra_agent.errors import RunnerError
from calctra_agent.runner import Completed, Failed, JobEvents, JobSpec, Recovery
from calctra_agent.wire import FailureReason

_POLL_S = 0.05


class ProcessRunner:
    """Runs `spec.code` with this interpreter in `work_dir/<job id>/`."""

    def __init__(self, work_dir: Path, gpu_runtime: bool = False) -> None:
        self.work_dir = work_dir
        self.gpu_runtime = gpu_runtime
        self._watchers: dict[str, threading.Thread] = {}
        self._cancelled: set[str] = set()
        self._detached = threading.Event()
        self.started_jobs: list[str] = []

    def start(self, spec: JobSpec, events: JobEvents) -> None:
        job_dir = self.work_dir / spec.job_id
        if (job_dir / "pid").exists():
            raise RunnerError(f"job {spec.job_id} was started before")
        job_dir.mkdir(parents=True)
        (job_dir / "code.py").write_text(spec.code)
        wrapper = (
            f"{sys.executable} code.py > out.txt 2>&1; echo $? > exit.tmp && mv exit.tmp exit"
        )
        process = subprocess.Popen(
            ["sh", "-c", wrapper], cwd=job_dir, start_new_session=True,
            env={**os.environ, "CALCTRA_PROGRESS_FILE": str(job_dir / "progress")},
        )  # fmt: skip
        (job_dir / "pid").write_text(str(process.pid))
        (job_dir / "deadline").write_text(str(time.time() + spec.timeout_s))
        self.started_jobs.append(spec.job_id)
        events.started(spec.job_id)
        self._watch(spec.job_id, events, process)

    def cancel(self, job_id: str) -> None:
        self._cancelled.add(job_id)
        self._kill(job_id)

    def recover(self, specs: list[JobSpec], events: JobEvents) -> Recovery:
        recovery = Recovery()
        for spec in specs:
            job_dir = self.work_dir / spec.job_id
            if not (job_dir / "pid").exists():
                recovery.lost.append(spec.job_id)
                continue
            recovery.running.append(spec.job_id)
            self._watch(spec.job_id, events, None)
        return recovery

    def running(self) -> list[str]:
        return [job_id for job_id, t in self._watchers.items() if t.is_alive()]

    def detach(self) -> None:
        self._detached.set()

    def _watch(
        self, job_id: str, events: JobEvents, process: subprocess.Popen[bytes] | None
    ) -> None:
        thread = threading.Thread(target=self._follow, args=(job_id, events, process), daemon=True)
        self._watchers[job_id] = thread
        thread.start()

    def _follow(
        self, job_id: str, events: JobEvents, process: subprocess.Popen[bytes] | None
    ) -> None:
        job_dir = self.work_dir / job_id
        deadline = float((job_dir / "deadline").read_text())
        last_progress = -1
        while not (job_dir / "exit").exists():
            if not _alive(job_dir, process) and not (job_dir / "exit").exists():
                self._vanished(job_id, events)
                return
            if self._detached.is_set():
                return
            if time.time() > deadline:
                self._kill(job_id)
                events.finished(job_id, Failed(FailureReason.TIMEOUT, "ran past its time"))
                return
            last_progress = self._report_progress(job_id, events, last_progress)
            time.sleep(_POLL_S)
        self._finish(job_id, events)

    def _report_progress(self, job_id: str, events: JobEvents, last: int) -> int:
        try:
            value = int(float((self.work_dir / job_id / "progress").read_text().strip()))
        except (OSError, ValueError):
            return last
        if value != last:
            events.progress(job_id, max(0, min(value, 100)), f"{value}%")
        return value

    def _finish(self, job_id: str, events: JobEvents) -> None:
        job_dir = self.work_dir / job_id
        code = int((job_dir / "exit").read_text().strip() or "1")
        output = (job_dir / "out.txt").read_text(errors="replace")[-2000:]
        if job_id in self._cancelled:
            events.finished(job_id, Failed(FailureReason.CANCELLED_BY_AGENT, "cancelled"))
        elif code == 0:
            events.finished(job_id, Completed(output))
        else:
            events.finished(
                job_id, Failed(FailureReason.EXIT_CODE, f"exit code {code}: {output}", code)
            )

    def _vanished(self, job_id: str, events: JobEvents) -> None:
        if job_id in self._cancelled:
            events.finished(job_id, Failed(FailureReason.CANCELLED_BY_AGENT, "cancelled"))
        else:
            events.finished(job_id, Failed(FailureReason.ERROR, "the job's process vanished"))

    def _kill(self, job_id: str) -> None:
        try:
            pid = int((self.work_dir / job_id / "pid").read_text())
            os.killpg(pid, signal.SIGKILL)
        except (OSError, ValueError):
            pass


def _alive(job_dir: Path, process: subprocess.Popen[bytes] | None) -> bool:
    if process is not None:
        return process.poll() is None  # also reaps the child once it ends
    try:
        os.kill(int((job_dir / "pid").read_text()), 0)
    except (OSError, ValueError):
        return False
    return True
