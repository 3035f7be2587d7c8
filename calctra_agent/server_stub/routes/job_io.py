"""A job's logs and results: the agent that holds the job sends them, its owner reads them."""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from starlette.responses import StreamingResponse

from calctra_agent.server_stub._context import Agent, Context, UserId
from calctra_agent.server_stub._db import utcnow
from calctra_agent.server_stub._downloads import BINARY_BODY, file_download
from calctra_agent.server_stub._errors import ApiError
from calctra_agent.server_stub._job_logs import LogGap, append_log, log_path, log_state
from calctra_agent.server_stub._provider import held_job, require_open
from calctra_agent.server_stub._results import (
    SHA256_HEADER,
    check_upload,
    checked_sha256,
    final_path,
    record_result,
    result_out,
    upload_path,
)
from calctra_agent.server_stub._uploads import discard, read_body, receive_body
from calctra_agent.server_stub.routes.jobs import owned_job
from calctra_agent.wire import (
    MAX_LOG_APPEND_BYTES,
    ErrorCode,
    ErrorEnvelope,
    JobLogAppend,
    JobResult,
)

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/jobs", tags=["jobs"])

_MAX_OFFSET = 2**62


def _errors(*statuses: int) -> dict[int | str, dict[str, object]]:
    names = {409: "CONFLICT", 413: "PAYLOAD_TOO_LARGE"}
    return {status: {"model": ErrorEnvelope, "description": names[status]} for status in statuses}


# Logs


@router.post(
    "/{job_id}/logs",
    response_model=JobLogAppend,
    responses=_errors(409, 413),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": f"Bytes of the job's output, at most {MAX_LOG_APPEND_BYTES}",
            "content": {"application/octet-stream": BINARY_BODY},
        }
    },
)
async def append_logs(
    job_id: str,
    request: Request,
    context: Context,
    agent: Agent,
    offset: Annotated[
        int, Query(ge=0, le=_MAX_OFFSET, description="The log offset the body's bytes start at")
    ],
) -> JobLogAppend:
    """Append to the job's log (agent token of the resource that holds the job)."""
    with context.db.transaction() as session:
        job = held_job(session, agent, job_id, "send its logs")
        require_open(job, "append logs to")
    data = await read_body(request, MAX_LOG_APPEND_BYTES)
    settings = context.settings
    try:
        state = append_log(settings.logs_dir, job_id, offset, data, settings.max_log_bytes)
    except LogGap as gap:
        raise ApiError(
            ErrorCode.CONFLICT,
            f"cannot append to job {job_id}'s log at offset {offset}: it holds {gap.size} "
            f"bytes; send again from offset {gap.size}",
            jobId=job_id,
            size=gap.size,
        ) from None
    return JobLogAppend(size=state.size, truncated=state.truncated)


@router.get(
    "/{job_id}/logs",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The log's bytes from `offset`, as the agent sent them",
            "content": {"text/plain": BINARY_BODY},
        }
    },
)
async def read_logs(
    job_id: str,
    context: Context,
    user_id: UserId,
    offset: Annotated[int, Query(ge=0, le=_MAX_OFFSET, description="First byte to return")] = 0,
    limit: Annotated[
        int | None, Query(ge=1, le=_MAX_OFFSET, description="Most bytes to return")
    ] = None,
) -> Response:
    """The job's log (its owner only), with X-Log-Size and X-Log-Truncated."""
    with context.db.transaction() as session:
        owned_job(session, job_id, user_id)
    logs_dir = context.settings.logs_dir
    state = log_state(logs_dir, job_id)
    headers = {"x-log-size": str(state.size), "x-log-truncated": _flag(state.truncated)}
    content_type = "text/plain; charset=utf-8"
    # No further than the size in X-Log-Size, which bytes appended meanwhile may pass.
    length = max(state.size - offset, 0)
    if limit is not None:
        length = min(length, limit)
    try:
        return file_download(log_path(logs_dir, job_id), content_type, headers, offset, length)
    except FileNotFoundError:
        return Response(b"", headers={**headers, "content-type": content_type})


def _flag(value: bool) -> str:
    return "true" if value else "false"


# Results


@router.post(
    "/{job_id}/results",
    response_model=JobResult,
    status_code=201,
    responses=_errors(409, 413)
    | {200: {"model": JobResult, "description": "A repeat of the recorded archive"}},
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "The job's results as one tar.gz archive",
            "content": {"application/gzip": BINARY_BODY},
        }
    },
)
async def upload_results(
    job_id: str,
    request: Request,
    response: Response,
    context: Context,
    agent: Agent,
    sha256: Annotated[
        str | None,
        Header(alias=SHA256_HEADER, description="The archive's sha256, 64 hex digits"),
    ] = None,
) -> JobResult:
    """Upload the job's result archive (agent token of the resource that holds the job)."""
    expected = checked_sha256(sha256)
    with context.db.transaction() as session:
        job = held_job(session, agent, job_id, "upload its results")
        recorded = result_out(job)
        if recorded is None or recorded.sha256 != expected:
            require_open(job, "upload results for")
    settings = context.settings
    upload = await receive_body(
        request, upload_path(settings.results_dir, job_id), settings.max_upload_bytes
    )
    final = final_path(upload)
    try:
        check_upload(upload, expected)
        with context.db.transaction() as session:
            job = held_job(session, agent, job_id, "upload its results")
            stored = record_result(session, job, upload, final, utcnow())
    except BaseException:
        # A record that failed to commit leaves no file behind.
        discard(final)
        raise
    finally:
        discard(upload.path)
    if not stored.created:
        response.status_code = 200
        return stored.result
    if stored.replaced_file:
        discard(settings.results_dir / stored.replaced_file)
    logger.info("job results stored job_id=%s size=%d", job_id, stored.result.size)
    return stored.result


@router.get(
    "/{job_id}/results",
    response_class=StreamingResponse,
    responses={
        200: {"description": "The result archive", "content": {"application/gzip": BINARY_BODY}}
    },
)
async def download_results(job_id: str, context: Context, user_id: UserId) -> Response:
    """The job's result archive (its owner only); 404 while there is none."""
    # Twice at most: an upload that replaces the archive deletes the old file after its commit,
    # and so perhaps between the read of the record and the opening of the file.
    for _ in range(2):
        with context.db.transaction() as session:
            job = owned_job(session, job_id, user_id)
            result, file_name, status = result_out(job), job.result_file, job.status
        if result is None or file_name is None:
            raise ApiError(
                ErrorCode.RESOURCE_NOT_FOUND,
                f"job {job_id} has no results yet",
                jobId=job_id,
                status=status,
            )
        headers = {
            "x-content-sha256": result.sha256,
            "content-disposition": f'attachment; filename="{job_id}-results.tar.gz"',
        }
        try:
            return file_download(
                context.settings.results_dir / file_name, "application/gzip", headers
            )
        except FileNotFoundError:
            continue
    raise RuntimeError(f"job {job_id} records results in {file_name}, which is missing")
