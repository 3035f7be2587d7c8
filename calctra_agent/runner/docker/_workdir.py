"""A job's directory on the host: what the container mounts, and what only the agent sees.

<work_dir>/<job id>/          0700, the agent's
    code/main.py              the job's code        -> /job/code, read-only
    data/<dataset id>         each dataset          -> /job/data, read-only
    output/                   the job's result      -> /job/output, the job user's
    status/progress           the job's progress    -> /job/status, the job user's
    log-state.json            how much log the platform holds (not mounted)
    verdict                   why the agent stopped the job, if it did (not mounted)
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path

from calctra_agent.errors import RunnerError
from calctra_agent.wire import FailureReason

logger = logging.getLogger(__name__)

_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
_PROGRESS_READ_BYTES = 64


@dataclass(frozen=True)
class JobDir:
    path: Path

    @property
    def code(self) -> Path:
        return self.path / "code"

    @property
    def data(self) -> Path:
        return self.path / "data"

    @property
    def output(self) -> Path:
        return self.path / "output"

    @property
    def status(self) -> Path:
        return self.path / "status"

    @property
    def progress_file(self) -> Path:
        return self.status / "progress"

    @property
    def log_state(self) -> Path:
        return self.path / "log-state.json"

    @property
    def verdict(self) -> Path:
        return self.path / "verdict"


def check_id(kind: str, value: str) -> str:
    """A job or dataset id, safe as a file name; raises RunnerError otherwise."""
    if not _SAFE_ID.match(value):
        raise RunnerError(
            f"cannot run a job with {kind} id {value!r}: ids are letters, digits, '_', '-' "
            "and '.', at most 128"
        )
    return value


def job_dir(work_dir: Path, job_id: str) -> JobDir:
    return JobDir(work_dir / check_id("job", job_id))


def prepare(directory: JobDir, code: str, owner: tuple[int, int]) -> None:
    """Create the job's directory afresh with its code; the job user `owner` may write only
    output/ and status/."""
    remove(directory)
    try:
        directory.path.parent.mkdir(parents=True, exist_ok=True)
        directory.path.mkdir(mode=0o700)
        for readable in (directory.code, directory.data):
            readable.mkdir()
            readable.chmod(0o755)
        main = directory.code / "main.py"
        main.write_text(code, encoding="utf-8")
        main.chmod(0o644)
        for writable in (directory.output, directory.status):
            writable.mkdir()
            _give(writable, owner)
    except OSError as exc:
        raise RunnerError(f"cannot prepare the job directory {directory.path}: {exc}") from exc


def _give(path: Path, owner: tuple[int, int]) -> None:
    """Make `path` the job user's. An agent that is not root cannot give it away: the
    directory is opened to all then, which its 0700 parent keeps to the agent and the job."""
    if (os.getuid(), os.getgid()) == owner:
        path.chmod(0o700)
    elif os.getuid() == 0:
        os.chown(path, *owner)
        path.chmod(0o700)
    else:
        path.chmod(0o777)


def remove(directory: JobDir) -> None:
    """Remove the job's directory and everything the job wrote; a failure is logged, since
    the job's outcome is already known then."""
    if not directory.path.exists():
        return
    try:
        shutil.rmtree(directory.path)
    except OSError as exc:
        logger.warning("job directory not removed path=%s error=%s", directory.path, exc)


def read_progress(directory: JobDir) -> int | None:
    """The number the job last wrote to its progress file, within 0-100; None when there is
    none, or it is no number. The job owns the file: a link is not followed (it could point
    anywhere on the host) and a FIFO is not waited on."""
    try:
        fd = os.open(directory.progress_file, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        text = os.read(fd, _PROGRESS_READ_BYTES).decode("ascii", errors="replace")
        return clamp_percent(float(text.strip()))
    except (OSError, ValueError, OverflowError):
        return None
    finally:
        os.close(fd)


def clamp_percent(value: float) -> int:
    if value != value:  # NaN
        raise ValueError("progress is not a number")
    return max(0, min(100, int(value)))


def write_verdict(directory: JobDir, reason: FailureReason) -> None:
    """Remember why the agent stops the job before it does, so that an agent that restarts
    meanwhile reports the same reason."""
    _write_atomic(directory.verdict, reason.value)


def read_verdict(directory: JobDir) -> FailureReason | None:
    try:
        return FailureReason(directory.verdict.read_text().strip())
    except (OSError, ValueError):
        return None


def read_log_state(directory: JobDir) -> tuple[int, bool]:
    """(bytes of log the platform acknowledged, whether its cap was hit); (0, False) for a
    job that shipped nothing yet."""
    try:
        data = json.loads(directory.log_state.read_text())
        return int(data["offset"]), bool(data["truncated"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0, False


def write_log_state(directory: JobDir, offset: int, truncated: bool) -> None:
    _write_atomic(directory.log_state, json.dumps({"offset": offset, "truncated": truncated}))


def _write_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except OSError as exc:
        raise RunnerError(f"cannot write {path}: {exc}") from exc
