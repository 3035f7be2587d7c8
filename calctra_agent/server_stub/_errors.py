"""API errors and the handlers that put every failure into the documented envelope."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from calctra_agent.wire import ErrorCode

logger = logging.getLogger(__name__)

_STATUS = {
    ErrorCode.AUTHENTICATION_REQUIRED: 401,
    ErrorCode.PERMISSION_DENIED: 403,
    ErrorCode.RESOURCE_NOT_FOUND: 404,
    ErrorCode.VALIDATION_ERROR: 400,
    ErrorCode.INSUFFICIENT_FUNDS: 402,
    ErrorCode.RATE_LIMIT_EXCEEDED: 429,
    ErrorCode.INTERNAL_ERROR: 500,
    ErrorCode.CONFLICT: 409,
    ErrorCode.PAYLOAD_TOO_LARGE: 413,
    ErrorCode.METHOD_NOT_ALLOWED: 405,
}


class ApiError(Exception):
    """An error that the client caused or must know about, answered in the API's envelope."""

    def __init__(self, code: ErrorCode, message: str, **details: Any) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.details = details

    @property
    def status_code(self) -> int:
        return _STATUS[self.code]


def not_found(kind: str, key: str, value: str) -> ApiError:
    return ApiError(ErrorCode.RESOURCE_NOT_FOUND, f"{kind} {value} does not exist", **{key: value})


def validation_error(message: str, **details: Any) -> ApiError:
    return ApiError(ErrorCode.VALIDATION_ERROR, message, **details)


def error_response(
    code: ErrorCode, message: str, details: dict[str, Any] | None = None, status: int | None = None
) -> JSONResponse:
    body = {"error": {"code": code.value, "message": message, "details": details or {}}}
    return JSONResponse(body, status_code=status or _STATUS[code])


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)


async def _api_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.code, exc.message, exc.details)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    fields = [_describe(error) for error in exc.errors()]
    message = "request failed validation: " + "; ".join(
        f"{field['field']}: {field['problem']}" for field in fields[:5]
    )
    return error_response(ErrorCode.VALIDATION_ERROR, message, {"fields": fields})


def _describe(error: dict[str, Any]) -> dict[str, str]:
    if error.get("type") == "json_invalid":
        return {"field": "body", "problem": "the body is not valid JSON"}
    location = [str(part) for part in error.get("loc", ()) if part not in ("body", "query")]
    problem = str(error.get("msg", "is invalid"))
    if error.get("type") == "missing":
        problem = "is required"
    elif error.get("type") == "extra_forbidden":
        problem = "is not a known field"
    return {"field": ".".join(location) or "body", "problem": problem}


async def _http_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return error_response(ErrorCode.RESOURCE_NOT_FOUND, "no such endpoint")
    if exc.status_code == 405:
        response = error_response(
            ErrorCode.METHOD_NOT_ALLOWED, "method not allowed on this endpoint"
        )
        # RFC 9110 requires a 405 to name the methods that the endpoint does allow.
        response.headers.update(exc.headers or {})
        return response
    if exc.status_code == 401:
        return error_response(ErrorCode.AUTHENTICATION_REQUIRED, str(exc.detail))
    code = ErrorCode.VALIDATION_ERROR if exc.status_code < 500 else ErrorCode.INTERNAL_ERROR
    return error_response(code, str(exc.detail), status=exc.status_code)


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.error(
        "unexpected error method=%s path=%s", request.method, request.url.path, exc_info=exc
    )
    return error_response(ErrorCode.INTERNAL_ERROR, "the server hit an unexpected error")
