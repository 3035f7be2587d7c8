"""Sending the outbox: status reports and claims, in order, until the server answers them."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from calctra_agent.daemon._state import OutboxItem, State
from calctra_agent.errors import (
    ApiError,
    ApiUnavailable,
    CalctraError,
    Conflict,
    ServerError,
    WalletError,
)
from calctra_agent.wire import ClaimRequest, StatusReport

logger = logging.getLogger(__name__)

_BACKOFF_BASE_S = 1.0
_BACKOFF_MAX_S = 60.0


class ResultsRefused(Exception):
    """A job's results cannot be delivered, now or later."""


class ReportSender:
    """Drains the outbox. Each job's reports go out in order; a job whose head report cannot
    be sent waits with exponential backoff, while other jobs' reports go on."""

    def __init__(
        self,
        state: State,
        client: Any,
        sign_claim: Callable[[str], ClaimRequest],
        on_cancelled: Callable[[str], None],
        on_failed: Callable[[str, str], None],
    ) -> None:
        self.state = state
        self.client = client
        self.sign_claim = sign_claim
        self.on_cancelled = on_cancelled
        self.on_failed = on_failed
        """Reports a job FAILED after all, with the message (its results were refused)."""

    def flush(self) -> int:
        """Send what is due; returns how many items the server acknowledged."""
        sent = 0
        while True:
            items = self.state.due(time.time())
            if not items:
                return sent
            progressed = False
            for item in items:
                if self._send(item):
                    sent += 1
                    progressed = True
            if not progressed:
                return sent

    def _send(self, item: OutboxItem) -> bool:
        try:
            self._deliver(item)
        except (ApiUnavailable, ServerError) as exc:
            delay = min(_BACKOFF_BASE_S * 2**item.attempts, _BACKOFF_MAX_S)
            delay *= random.uniform(0.5, 1.0)
            logger.warning(
                "report deferred job_id=%s kind=%s attempt=%d retry_in_s=%.1f error=%s",
                item.job_id,
                item.kind,
                item.attempts + 1,
                delay,
                exc,
            )
            self.state.retry_later(item.seq, delay)
            return False
        except WalletError as exc:
            # The key is read at the first claim: a wallet broken since the start waits to be
            # fixed, without holding up other jobs' reports.
            logger.error("claim not signed job_id=%s error=%s", item.job_id, exc)
            self.state.retry_later(item.seq, _BACKOFF_MAX_S)
            return False
        except Conflict as exc:
            self._conflict(item, exc)
        except ResultsRefused as exc:
            self._results_refused(item, exc)
            return True
        except ApiError as exc:
            # The server refused this report for good: keeping it would block the job's queue.
            logger.error(
                "report refused job_id=%s kind=%s code=%s error=%s",
                item.job_id,
                item.kind,
                exc.code,
                exc.message,
            )
        self.state.done(item.seq)
        return True

    def _deliver(self, item: OutboxItem) -> None:
        if item.kind == "results":
            self._upload_results(item)
            return
        if item.kind == "claim":
            response = self.client.claim_payment(item.job_id, self.sign_claim(item.job_id))
            amount = response.payment.amount
            self.state.update_job(item.job_id, payment=amount, claimed=1)
            logger.info("payment claimed job_id=%s amount=%s", item.job_id, amount)
            return
        report = StatusReport.model_validate(item.payload)
        self.client.report_status(item.job_id, report)
        logger.info("report sent job_id=%s status=%s", item.job_id, report.status.value)

    def _upload_results(self, item: OutboxItem) -> None:
        """Upload the job's result archive, then delete it. An archive that is gone was
        uploaded already: it is deleted only after the platform stored it."""
        archive = Path(item.payload["path"])
        if not archive.exists():
            logger.info("results already uploaded job_id=%s", item.job_id)
            return
        try:
            result = self.client.upload_results(item.job_id, archive, item.payload["sha256"])
        except (Conflict, ApiUnavailable, ServerError):
            raise
        except ApiError as exc:
            raise ResultsRefused(f"the platform refused the results: {exc}") from exc
        except (CalctraError, OSError) as exc:
            raise ResultsRefused(f"cannot send the result archive {archive}: {exc}") from exc
        logger.info(
            "results uploaded job_id=%s bytes=%d sha256=%s",
            item.job_id,
            result.size,
            result.sha256,
        )
        archive.unlink(missing_ok=True)

    def _results_refused(self, item: OutboxItem, exc: ResultsRefused) -> None:
        """Results that cannot be delivered fail the job: its owner must not get COMPLETED,
        and a payment, for a job whose output never arrived."""
        logger.error("results refused job_id=%s error=%s", item.job_id, exc)
        Path(item.payload["path"]).unlink(missing_ok=True)
        self.state.drop_job_reports(item.job_id)
        self.on_failed(item.job_id, str(exc))

    def _conflict(self, item: OutboxItem, exc: Conflict) -> None:
        actual = exc.details.get("status")
        if actual == "CANCELLED":
            if item.kind == "results":
                Path(item.payload["path"]).unlink(missing_ok=True)
            logger.info("job was cancelled by its owner job_id=%s", item.job_id)
            self.state.drop_job_reports(item.job_id)
            self.on_cancelled(item.job_id)
            return
        logger.warning(
            "report conflicts with the platform job_id=%s kind=%s status=%s error=%s",
            item.job_id,
            item.kind,
            actual,
            exc.message,
        )
