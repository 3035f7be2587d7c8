"""Job results: the tar.gz archive that the resource holding a job uploads for its owner.

Each upload is received into a file of its own in the results dir and checked there; only a
good one is moved to its final name and recorded on the job, in one database transaction.
The job row names the file, so a record and the bytes it describes never disagree. A repeat
of the recorded archive (same sha256) changes nothing; another archive, while the job is
still open, replaces it, and the file it replaced is deleted once the new record is
committed.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from sqlalchemy.orm import Session

from calctra_agent.server_stub._db import Job
from calctra_agent.server_stub._errors import validation_error
from calctra_agent.server_stub._provider import require_open
from calctra_agent.server_stub._uploads import Upload
from calctra_agent.wire import JobResult, is_sha256

logger = logging.getLogger(__name__)

_GZIP_MAGIC = b"\x1f\x8b"
SHA256_HEADER = "X-Content-SHA256"


def result_out(job: Job) -> JobResult | None:
    if job.result_file is None or job.result_sha256 is None or job.result_uploaded_at is None:
        return None
    return JobResult(
        size=job.result_size or 0, sha256=job.result_sha256, uploaded_at=job.result_uploaded_at
    )


def checked_sha256(header: str | None) -> str:
    """The X-Content-SHA256 header's digest, lower-case; 400 when it is missing or malformed."""
    if header is None or not header.strip():
        raise validation_error(
            f"the {SHA256_HEADER} header is required: the archive's sha256 as 64 hex digits",
            field=SHA256_HEADER,
        )
    if not is_sha256(header.strip()):
        raise validation_error(
            f"the {SHA256_HEADER} header must be a sha256 as 64 hex digits, not {header!r}",
            field=SHA256_HEADER,
        )
    return header.strip().lower()


def upload_path(results_dir: Path, job_id: str) -> Path:
    """A new temporary file for one upload of the job's results."""
    return results_dir / f"{job_id}-{secrets.token_hex(8)}.part"


def check_upload(upload: Upload, expected_sha256: str) -> None:
    """400 unless the bytes received are the archive the header names, and gzip."""
    if upload.sha256 != expected_sha256:
        raise validation_error(
            f"the body's sha256 is {upload.sha256}, not the {expected_sha256} that "
            f"{SHA256_HEADER} names; the upload was corrupted or the header is wrong",
            field=SHA256_HEADER,
            received=upload.sha256,
        )
    assert upload.path is not None
    with upload.path.open("rb") as file:
        if file.read(len(_GZIP_MAGIC)) != _GZIP_MAGIC:
            raise validation_error("the body is not a gzip archive (tar.gz)", field="body")


@dataclass(frozen=True)
class Stored:
    result: JobResult
    created: bool
    """False for a repeat of the archive already recorded."""
    replaced_file: str | None = None
    """The file of the archive this one replaced, to delete once committed."""


def final_path(upload: Upload) -> Path:
    """Where the upload's archive is kept once it is recorded."""
    assert upload.path is not None
    return upload.path.with_suffix(".tar.gz")


def record_result(session: Session, job: Job, upload: Upload, final: Path, at: datetime) -> Stored:
    """Move the checked upload to `final` and record it on the job, unless the job holds
    this very archive already."""
    recorded = result_out(job)
    if recorded is not None and recorded.sha256 == upload.sha256:
        return Stored(recorded, created=False)
    require_open(job, "upload results for")
    assert upload.path is not None
    upload.path.rename(final)
    replaced = job.result_file
    job.result_file = final.name
    job.result_size = upload.size
    job.result_sha256 = upload.sha256
    job.result_uploaded_at = at
    result = result_out(job)
    assert result is not None
    return Stored(result, created=True, replaced_file=replaced)
