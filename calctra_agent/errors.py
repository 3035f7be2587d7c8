"""The agent's errors: one root, a branch per boundary.

    CalctraError
    ├── ConfigError          a setting is missing or invalid
    ├── ApiError             the platform answered with an error envelope
    │   ├── AuthenticationRequired, PermissionDenied, NotFound, ValidationFailed,
    │   │   InsufficientFunds, Conflict, RateLimited, ServerError
    ├── ApiUnavailable       the platform could not be reached or did not answer in time
    ├── ProbeError           the machine could not be probed
    ├── WalletError          the wallet file is missing, unreadable or malformed
    ├── StateError           the agent's local state is unusable
    └── RunnerError          a job could not be run

Library code raises these; only the CLI turns them into one line and an exit code.
"""

from __future__ import annotations

from typing import Any


class CalctraError(Exception):
    """The root of every error this package raises on purpose."""


class ConfigError(CalctraError):
    """Invalid configuration: `problems` holds one line per bad setting."""

    def __init__(self, source: str, problems: list[str]) -> None:
        super().__init__(f"invalid configuration in {source}: " + "; ".join(problems))
        self.source = source
        self.problems = problems


class ApiError(CalctraError):
    """An error answer of the Calctra API, in its envelope."""

    def __init__(
        self, status_code: int, code: str, message: str, details: dict[str, Any] | None = None
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.status_code = status_code
        self.code = code
        self.message = message
        self.details = details or {}


class AuthenticationRequired(ApiError):
    pass


class PermissionDenied(ApiError):
    pass


class NotFound(ApiError):
    pass


class ValidationFailed(ApiError):
    pass


class InsufficientFunds(ApiError):
    pass


class Conflict(ApiError):
    pass


class RateLimited(ApiError):
    pass


class ServerError(ApiError):
    pass


class ApiUnavailable(CalctraError):
    """The platform could not be reached, or kept failing, within the retry budget."""


class ProbeError(CalctraError):
    pass


class WalletError(CalctraError):
    pass


class StateError(CalctraError):
    pass


class RunnerError(CalctraError):
    pass


_BY_CODE: dict[str, type[ApiError]] = {
    "AUTHENTICATION_REQUIRED": AuthenticationRequired,
    "PERMISSION_DENIED": PermissionDenied,
    "RESOURCE_NOT_FOUND": NotFound,
    "VALIDATION_ERROR": ValidationFailed,
    "INSUFFICIENT_FUNDS": InsufficientFunds,
    "CONFLICT": Conflict,
    "RATE_LIMIT_EXCEEDED": RateLimited,
    "INTERNAL_ERROR": ServerError,
}


def api_error(
    status_code: int, code: str, message: str, details: dict[str, Any] | None = None
) -> ApiError:
    """The typed exception for an error envelope; unknown codes fall back on the status."""
    kind = _BY_CODE.get(code)
    if kind is None:
        kind = ServerError if status_code >= 500 else ApiError
    return kind(status_code, code, message, details)
