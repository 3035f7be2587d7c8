"""The reference server's FastAPI application."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI
from fastapi_offline import FastAPIOffline

from calctra_agent import __version__
from calctra_agent.server_stub._context import ServerContext
from calctra_agent.server_stub._db import Database, utcnow
from calctra_agent.server_stub._errors import install_error_handlers
from calctra_agent.server_stub._heartbeats import SYNC_INTERVAL_S, expire_silent_resources
from calctra_agent.server_stub._jobs import match_waiting_jobs
from calctra_agent.server_stub._ratelimit import RateLimiter, RateLimitMiddleware
from calctra_agent.server_stub._security import TokenSigner, load_or_create_secret
from calctra_agent.server_stub._settings import ServerSettings
from calctra_agent.server_stub._webhooks import OutboxWorker
from calctra_agent.server_stub.routes import (
    agent_tokens,
    auth,
    data,
    job_io,
    jobs,
    provider,
    provider_resource,
    resources,
    tokens,
    users,
    webhooks,
)
from calctra_agent.wire import ErrorEnvelope

logger = logging.getLogger(__name__)

_ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    code: {"model": ErrorEnvelope, "description": description}
    for code, description in [
        (400, "VALIDATION_ERROR"),
        (401, "AUTHENTICATION_REQUIRED"),
        (403, "PERMISSION_DENIED"),
        (404, "RESOURCE_NOT_FOUND"),
        (429, "RATE_LIMIT_EXCEEDED"),
        (500, "INTERNAL_ERROR"),
    ]
}


def create_app(settings: ServerSettings) -> FastAPI:
    """Build the application; its database and background workers start with its lifespan."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    for directory in (settings.uploads_dir, settings.logs_dir, settings.results_dir):
        directory.mkdir(exist_ok=True)
    secret = load_or_create_secret(settings.data_dir / "jwt-secret")
    signer = TokenSigner(secret, settings.token_ttl_s)
    context = ServerContext(
        settings=settings, db=Database(settings.effective_database_url), signer=signer
    )

    # The docs page's scripts are served by the server itself, so it works offline.
    app = FastAPIOffline(
        title="Calctra API (reference server)",
        version=__version__,
        openapi_url="/v1/openapi.json",
        docs_url="/v1/docs",
        redoc_url=None,
        static_url="/v1/docs-static",
        lifespan=_lifespan,
        responses=_ERROR_RESPONSES,
    )
    app.state.context = context
    context.db.on_commit(context.offers.committed)
    context.db.on_commit(context.cancelled.committed)
    install_error_handlers(app)
    # The provider's routes first: routes are matched in order, and agents' heartbeats and
    # long polls are most of the requests.
    routers = (provider, provider_resource, agent_tokens, auth, users, resources, jobs, job_io,
               data, tokens, webhooks)  # fmt: skip
    # Each onto the app, not through one /v1/api router: FastAPI matches every level of
    # included routers again, and the extra level cost a quarter of GET /users/me's CPU.
    for module in routers:
        app.include_router(module.router, prefix="/v1/api")
    _document_400_not_422(app)
    limiter = RateLimiter(settings.rate_limit, settings.rate_limit_window_s)
    app.add_middleware(
        RateLimitMiddleware, limiter=limiter, signer=signer, agent_tokens=context.agent_tokens
    )
    return app


def _document_400_not_422(app: FastAPI) -> None:
    """FastAPI documents a 422 for every endpoint that validates input, but this server answers
    a bad request 400 in the error envelope (see _errors.py): drop the 422s from the schema."""
    generate = app.openapi

    def openapi() -> dict[str, Any]:
        schema = generate()
        for operations in schema.get("paths", {}).values():
            for operation in operations.values():
                operation.get("responses", {}).pop("422", None)
        for name in ("HTTPValidationError", "ValidationError"):
            schema.get("components", {}).get("schemas", {}).pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


@contextlib.asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    context: ServerContext = app.state.context
    context.outbox_wakeup = asyncio.Event()
    worker = OutboxWorker(context)
    context.cancelled.reload(context.db)
    tasks = [
        asyncio.create_task(worker.run(), name="webhook-outbox"),
        asyncio.create_task(_run_matcher(context), name="matcher"),
        asyncio.create_task(_run_heartbeat_sync(context), name="heartbeat-sync"),
    ]
    logger.info("background workers started")
    try:
        yield
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await worker.close()
        _sync_heartbeats(context)
        context.db.dispose()
        logger.info("background workers stopped")


async def _run_matcher(context: ServerContext) -> None:
    settings = context.settings
    # Often enough that a silent resource turns inactive within 1.5 heartbeat timeouts.
    interval_s = min(settings.matcher_interval_s, settings.heartbeat_timeout_s / 2)
    while True:
        await asyncio.sleep(interval_s)
        try:
            # Heartbeats first, so that none waiting in memory lets its resource expire.
            context.heartbeats.flush(context.db)
            with context.db.transaction() as session:
                expire_silent_resources(session, settings.heartbeat_timeout_s, utcnow())
                changed = match_waiting_jobs(session, settings.matches_per_job)
            if changed:
                context.outbox_wakeup.set()
        except Exception:
            logger.exception("matcher pass failed; retrying at the next interval")


async def _run_heartbeat_sync(context: ServerContext) -> None:
    while True:
        await asyncio.sleep(SYNC_INTERVAL_S)
        _sync_heartbeats(context)


def _sync_heartbeats(context: ServerContext) -> None:
    """Write the heartbeats kept in memory and read the cancellations anew."""
    try:
        context.heartbeats.flush(context.db)
        context.cancelled.reload(context.db)
    except Exception:
        logger.exception("syncing heartbeats failed; retrying in %g s", SYNC_INTERVAL_S)
