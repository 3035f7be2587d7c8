"""Streaming uploads: a multipart form's file part, or a raw body, goes to disk chunk by chunk,
hashed on the way, and the upload stops as soon as it passes the size limit."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.requests import ClientDisconnect, Request

from calctra_agent.server_stub._errors import ApiError, validation_error
from calctra_agent.wire import ErrorCode

MAX_FIELD_BYTES = 16 * 1024
MAX_FIELDS = 20


@dataclass
class Upload:
    """A received file, on disk under a temporary name until the caller keeps it."""

    fields: dict[str, str]
    path: Path | None = None
    size: int = 0
    sha256: str = ""


@dataclass
class _Part:
    name: str = ""
    filename: str | None = None
    value: bytearray = field(default_factory=bytearray)


class _Receiver:
    def __init__(self, temp_path: Path, max_bytes: int) -> None:
        self.temp_path = temp_path
        self.max_bytes = max_bytes
        self.upload = Upload(fields={})
        self._hash = hashlib.sha256()
        self._file: IO[bytes] | None = None
        self._part = _Part()
        self._header_field = bytearray()
        self._header_value = bytearray()
        self._headers: dict[str, bytes] = {}
        self.complete = False

    def callbacks(self) -> dict[str, object]:
        return {
            "on_part_begin": self._part_begin,
            "on_header_field": lambda d, s, e: self._header_field.extend(d[s:e]),
            "on_header_value": lambda d, s, e: self._header_value.extend(d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_finished,
            "on_part_data": self._part_data,
            "on_part_end": self._part_end,
            "on_end": self._end,
        }

    def _part_begin(self) -> None:
        self._part = _Part()
        self._headers = {}

    def _header_end(self) -> None:
        self._headers[self._header_field.decode("latin-1").lower()] = bytes(self._header_value)
        self._header_field.clear()
        self._header_value.clear()

    def _headers_finished(self) -> None:
        _, options = parse_options_header(self._headers.get("content-disposition", b""))
        self._part.name = options.get(b"name", b"").decode("utf-8", "replace")
        filename = options.get(b"filename")
        if filename is not None:
            if self._part.name != "file" or self.upload.path is not None:
                raise validation_error("send exactly one file, in the field 'file'", field="file")
            self._part.filename = filename.decode("utf-8", "replace")
            self._file = open(self.temp_path, "xb")  # noqa: SIM115 - closed in _part_end
            self.upload.path = self.temp_path

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._file is None:
            self._part.value.extend(chunk)
            if len(self._part.value) > MAX_FIELD_BYTES:
                raise validation_error(
                    f"form field {self._part.name!r} is longer than {MAX_FIELD_BYTES} bytes",
                    field=self._part.name,
                )
            return
        self.upload.size += len(chunk)
        if self.upload.size > self.max_bytes:
            raise too_large("the file", self.max_bytes)
        self._hash.update(chunk)
        self._file.write(chunk)

    def _part_end(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self.upload.sha256 = self._hash.hexdigest()
            return
        if len(self.upload.fields) >= MAX_FIELDS:
            raise validation_error(f"the form has more than {MAX_FIELDS} fields")
        try:
            self.upload.fields[self._part.name] = self._part.value.decode("utf-8")
        except UnicodeDecodeError:
            raise validation_error(
                f"form field {self._part.name!r} is not UTF-8 text", field=self._part.name
            ) from None

    def _end(self) -> None:
        self.complete = True

    def abort(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        self.temp_path.unlink(missing_ok=True)


async def receive_upload(request: Request, temp_path: Path, max_bytes: int) -> Upload:
    """Read a multipart/form-data body into form fields and at most one file on disk."""
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    boundary = params.get(b"boundary")
    if content_type != b"multipart/form-data" or not boundary:
        raise validation_error("send the dataset as multipart/form-data with a 'file' part")
    _refuse_declared_length(request, max_bytes, slack=64 * 1024)
    receiver = _Receiver(temp_path, max_bytes)
    parser = MultipartParser(boundary, receiver.callbacks())  # type: ignore[arg-type]
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        # python-multipart's finalize() does not check that the closing boundary arrived, and
        # a body cut short would otherwise be kept as a truncated file.
        if not receiver.complete:
            raise validation_error("the multipart body ends before its closing boundary")
    except ApiError:
        receiver.abort()
        raise
    except ClientDisconnect:
        receiver.abort()
        raise validation_error("the client disconnected before the upload finished") from None
    except Exception as exc:
        receiver.abort()
        raise validation_error(f"the multipart body is malformed: {exc}") from None
    if receiver.upload.path is None:
        raise validation_error("the form has no 'file' part", field="file")
    return receiver.upload


async def receive_body(request: Request, temp_path: Path, max_bytes: int) -> Upload:
    """Stream a raw request body into `temp_path`, hashing it on the way; 413 as soon as it
    passes `max_bytes`, with or without a Content-Length. The file is removed on any failure."""
    _refuse_declared_length(request, max_bytes)
    digest = hashlib.sha256()
    size = 0
    try:
        with open(temp_path, "xb") as file:
            async for chunk in request.stream():
                size += len(chunk)
                if size > max_bytes:
                    raise too_large("the upload", max_bytes)
                digest.update(chunk)
                file.write(chunk)
    except ClientDisconnect:
        temp_path.unlink(missing_ok=True)
        raise validation_error("the client disconnected before the upload finished") from None
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise
    return Upload(fields={}, path=temp_path, size=size, sha256=digest.hexdigest())


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The whole raw request body, for small bodies only; 413 past `max_bytes`."""
    _refuse_declared_length(request, max_bytes)
    body = bytearray()
    try:
        async for chunk in request.stream():
            body.extend(chunk)
            if len(body) > max_bytes:
                raise too_large("the body", max_bytes)
    except ClientDisconnect:
        raise validation_error("the client disconnected before the body arrived") from None
    return bytes(body)


def too_large(what: str, max_bytes: int) -> ApiError:
    return ApiError(
        ErrorCode.PAYLOAD_TOO_LARGE,
        f"{what} is larger than this server's limit of {max_bytes} bytes",
        limitBytes=max_bytes,
    )


def _refuse_declared_length(request: Request, max_bytes: int, slack: int = 0) -> None:
    """Refuse at once a body whose Content-Length already passes the limit."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + slack:
        raise too_large("the upload", max_bytes)


def discard(path: Path | None) -> None:
    if path is not None:
        path.unlink(missing_ok=True)
