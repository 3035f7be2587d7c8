"""Datasets: files that customers upload for their jobs."""

from __future__ import annotations

import logging
import mimetypes
import re
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from starlette.responses import StreamingResponse

from calctra_agent.server_stub._agent_tokens import AgentPrincipal
from calctra_agent.server_stub._context import AnyCaller, Caller, Context, UserId
from calctra_agent.server_stub._db import Dataset, Job, new_id, utcnow
from calctra_agent.server_stub._downloads import BINARY_BODY, file_download
from calctra_agent.server_stub._errors import ApiError, not_found, validation_error
from calctra_agent.server_stub._pagination import Pagination
from calctra_agent.server_stub._provider import OPEN_STATUSES
from calctra_agent.server_stub._uploads import discard, receive_upload
from calctra_agent.wire import (
    FINAL_JOB_STATUSES,
    DatasetCreated,
    DatasetPage,
    DatasetUpdate,
    ErrorCode,
    Message,
)
from calctra_agent.wire import Dataset as DatasetOut

logger = logging.getLogger(__name__)
router = APIRouter(prefix="/data", tags=["data"])

_BOOLEANS = {"true": True, "1": True, "false": False, "0": False}
_MEDIA_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*/[A-Za-z0-9][A-Za-z0-9!#$&^_.+-]*")
# The standard library's own table, not the machine's /etc/mime.types, so that a format means
# the same Content-Type on every server.
_MEDIA_TYPES = mimetypes.MimeTypes()


def dataset_out(row: Dataset) -> DatasetOut:
    return DatasetOut(
        id=row.id,
        name=row.name,
        description=row.description,
        type=row.type,
        size=row.size,
        format=row.format,
        sha256=row.sha256,
        is_encrypted=row.is_encrypted,
        is_public=row.is_public,
        created_at=row.created_at,
        access_count=row.access_count,
    )


def _form_metadata(fields: dict[str, str]) -> DatasetUpdate:
    """Validate the upload's form fields with the same rules as a metadata update."""
    unknown = sorted(
        set(fields) - {"name", "description", "type", "format", "isEncrypted", "isPublic"}
    )
    if unknown:
        raise validation_error(f"unknown form fields: {', '.join(unknown)}", fields=unknown)
    values: dict[str, object] = dict(fields)
    for flag in ("isEncrypted", "isPublic"):
        if flag in fields:
            parsed = _BOOLEANS.get(fields[flag].strip().lower())
            if parsed is None:
                raise validation_error(f"{flag} must be true or false", field=flag)
            values[flag] = parsed
    for required in ("name", "type", "format"):
        if not fields.get(required, "").strip():
            raise validation_error(f"the form field {required!r} is required", field=required)
    try:
        return DatasetUpdate.model_validate(values)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"])
        raise validation_error(f"{field}: {first['msg']}", field=field) from None


def _visible_dataset(session: Session, dataset_id: str, user_id: str) -> Dataset:
    row = session.get(Dataset, dataset_id)
    if row is None:
        raise not_found("dataset", "datasetId", dataset_id)
    if row.owner_id != user_id and not row.is_public:
        raise ApiError(
            ErrorCode.PERMISSION_DENIED,
            "this dataset is private to its owner",
            datasetId=dataset_id,
        )
    return row


def _owned_dataset(session: Session, dataset_id: str, user_id: str) -> Dataset:
    row = _visible_dataset(session, dataset_id, user_id)
    if row.owner_id != user_id:
        raise ApiError(
            ErrorCode.PERMISSION_DENIED,
            "only the dataset's owner may change it",
            datasetId=dataset_id,
        )
    return row


@router.post(
    "",
    response_model=DatasetCreated,
    status_code=201,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "required": ["name", "type", "format", "file"],
                        "properties": {
                            "name": {"type": "string"},
                            "description": {"type": "string"},
                            "type": {"type": "string"},
                            "format": {"type": "string"},
                            "isEncrypted": {"type": "boolean"},
                            "isPublic": {"type": "boolean"},
                            "file": {"type": "string", "format": "binary"},
                        },
                    }
                }
            },
        }
    },
)
async def upload_dataset(request: Request, context: Context, user_id: UserId) -> DatasetCreated:
    dataset_id = new_id("data")
    final_path = context.settings.uploads_dir / dataset_id
    temp_path = final_path.with_suffix(".part")
    upload = await receive_upload(request, temp_path, context.settings.max_upload_bytes)
    try:
        meta = _form_metadata(upload.fields)
        row = Dataset(
            id=dataset_id,
            owner_id=user_id,
            name=meta.name or "",
            description=meta.description or "",
            type=meta.type or "",
            format=meta.format or "",
            size=upload.size,
            sha256=upload.sha256,
            is_encrypted=bool(meta.is_encrypted),
            is_public=bool(meta.is_public),
            created_at=utcnow(),
        )
        assert upload.path is not None
        upload.path.rename(final_path)
        with context.db.transaction() as session:
            session.add(row)
    except BaseException:
        discard(upload.path)
        discard(final_path)
        raise
    logger.info("dataset uploaded dataset_id=%s size=%d", dataset_id, upload.size)
    return DatasetCreated(message="Dataset uploaded successfully", dataset_id=dataset_id)


@router.get("", response_model=DatasetPage)
async def list_datasets(
    context: Context,
    user_id: UserId,
    page: Pagination,
    type: Annotated[str | None, Query(max_length=100)] = None,
) -> DatasetPage:
    conditions = [Dataset.owner_id == user_id]
    if type is not None:
        conditions.append(Dataset.type == type)
    with context.db.transaction() as session:
        total = session.scalar(select(func.count(Dataset.id)).where(*conditions)) or 0
        rows = session.scalars(
            select(Dataset)
            .where(*conditions)
            .order_by(Dataset.created_at.desc(), Dataset.id.desc())
            .offset(page.offset)
            .limit(page.limit)
        ).all()
        datasets = [dataset_out(row) for row in rows]
    return DatasetPage(total=total, page=page.page, limit=page.limit, datasets=datasets)


@router.get("/{dataset_id}", response_model=DatasetOut)
async def read_dataset(dataset_id: str, context: Context, user_id: UserId) -> DatasetOut:
    with context.db.transaction() as session:
        return dataset_out(_visible_dataset(session, dataset_id, user_id))


@router.get(
    "/{dataset_id}/content",
    response_class=StreamingResponse,
    responses={
        200: {
            "description": "The dataset's file, with X-Content-SHA256",
            "content": {"application/octet-stream": BINARY_BODY},
        }
    },
)
async def download_dataset(dataset_id: str, context: Context, caller: AnyCaller) -> Response:
    """The dataset's file: for its owner, for anyone when it is public, and for the agent of
    a resource that holds an ACCEPTED or RUNNING job naming it (a user or an agent token)."""
    with context.db.transaction() as session:
        row = session.get(Dataset, dataset_id)
        if row is None:
            raise not_found("dataset", "datasetId", dataset_id)
        _check_readable(session, row, caller)
        headers = {"x-content-sha256": row.sha256}
        download = file_download(
            context.settings.uploads_dir / dataset_id, _media_type(row.format), headers
        )
        session.execute(
            update(Dataset)
            .where(Dataset.id == dataset_id)
            .values(access_count=Dataset.access_count + 1)
            .execution_options(synchronize_session=False)
        )
    logger.info("dataset downloaded dataset_id=%s agent=%s", dataset_id, caller.agent is not None)
    return download


def _check_readable(session: Session, row: Dataset, caller: Caller) -> None:
    if row.is_public or (caller.agent is None and row.owner_id == caller.user_id):
        return
    if caller.agent is not None and _runs_job_naming(session, caller.agent, row.id):
        return
    raise ApiError(
        ErrorCode.PERMISSION_DENIED,
        f"dataset {row.id} is private: only its owner, and the agent of a resource that holds "
        "an ACCEPTED or RUNNING job naming it, may download it",
        datasetId=row.id,
    )


def _runs_job_naming(session: Session, agent: AgentPrincipal, dataset_id: str) -> bool:
    """Whether the agent's resource holds an open job that names the dataset."""
    rows = session.scalars(
        select(Job.datasets).where(
            Job.assigned_resource_id == agent.resource_id, Job.status.in_(OPEN_STATUSES)
        )
    )
    return any(dataset_id in datasets for datasets in rows)


def _media_type(data_format: str) -> str:
    """The Content-Type of a dataset: its format when that is a media type (text/csv), the
    type of files with that extension (CSV), else application/octet-stream."""
    if _MEDIA_TYPE.fullmatch(data_format):
        return data_format.lower()
    guessed, encoding = _MEDIA_TYPES.guess_type(f"dataset.{data_format.lower()}", strict=False)
    if encoding == "gzip":
        return "application/gzip"
    return guessed if guessed and encoding is None else "application/octet-stream"


@router.put("/{dataset_id}", response_model=Message)
async def update_dataset(
    dataset_id: str, body: DatasetUpdate, context: Context, user_id: UserId
) -> Message:
    with context.db.transaction() as session:
        row = _owned_dataset(session, dataset_id, user_id)
        for name, value in body.model_dump(exclude_none=True).items():
            setattr(row, name, value)
    return Message(message="Dataset metadata updated successfully")


@router.delete("/{dataset_id}", response_model=Message)
async def delete_dataset(dataset_id: str, context: Context, user_id: UserId) -> Message:
    with context.db.transaction() as session:
        row = _owned_dataset(session, dataset_id, user_id)
        in_use = _job_using(session, dataset_id)
        if in_use:
            raise ApiError(
                ErrorCode.CONFLICT,
                f"dataset {dataset_id} is used by job {in_use}, which has not ended",
                datasetId=dataset_id,
                jobId=in_use,
            )
        session.delete(row)
    discard(context.settings.uploads_dir / dataset_id)
    logger.info("dataset deleted dataset_id=%s", dataset_id)
    return Message(message="Dataset deleted successfully")


def _job_using(session: Session, dataset_id: str) -> str | None:
    open_statuses = [s.value for s in FINAL_JOB_STATUSES]
    for job_id, datasets in session.execute(
        select(Job.id, Job.datasets).where(Job.status.not_in(open_statuses))
    ):
        if dataset_id in datasets:
            return str(job_id)
    return None
