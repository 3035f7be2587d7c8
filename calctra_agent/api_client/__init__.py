"""A client for the Calctra API: `CalctraClient`, with typed errors, timeouts and retries."""

from calctra_agent.api_client._client import (
    DEFAULT_TIMEOUT_S,
    MAX_OFFER_WAIT_S,
    CalctraClient,
)
from calctra_agent.api_client._retry import RetryPolicy

__all__ = ["CalctraClient", "DEFAULT_TIMEOUT_S", "MAX_OFFER_WAIT_S", "RetryPolicy"]
