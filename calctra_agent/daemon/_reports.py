"""Sending the outbox: status reports and claims, in order, until the server answers them."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from calctra_agent.daemon._state import OutboxItem, State
from calctra_agent.errors import ApiError, ApiUnavailable, Conflict, ServerError, WalletError
from calctra_agent.wire import ClaimRequest, StatusReport

logger = logging.getLogger(__name__)

_BACKOFF_BASE_S = 1.0
_BACKOFF_MAX_S = 60.0


class ReportSender:
    """Drains the outbox. Each job's reports go out in order; a job whose head report cannot
    be sent waits with exponential backoff, while other jobs' reports go on."""

    def __init__(
        self,
        state: State,
        client: Any,
        sign_claim: Callable[[str], ClaimRequest],
        on_cancelled: Callable[[str], None],
    ) -> None:
        self.state = state
        self.client = client
        self.sign_claim = sign_claim
        self.on_cancelled = on_cancelled

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
        if item.kind == "claim":
            response = self.client.claim_payment(item.job_id, self.sign_claim(item.job_id))
            amount = response.payment.amount
            self.state.update_job(item.job_id, payment=amount, claimed=1)
            logger.info("payment claimed job_id=%s amount=%s", item.job_id, amount)
            return
        report = StatusReport.model_validate(item.payload)
        self.client.report_status(item.job_id, report)
        logger.info("report sent job_id=%s status=%s", item.job_id, report.status.value)

    def _conflict(self, item: OutboxItem, exc: Conflict) -> None:
        actual = exc.details.get("status")
        if actual == "CANCELLED":
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
