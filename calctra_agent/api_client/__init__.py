"""A client for the Calctra API: `CalctraClient`, with typed errors, timeouts and retries."""

import sys

# httpx imports its own command-line client whenever click, pygments and rich are installed,
# as they are here for our CLI and the reference server: about 3-6 MB of modules in every
# process that uses the API. Marking it absent makes httpx skip it; nothing here runs it.
sys.modules.setdefault("httpx._main", None)  # type: ignore[arg-type]

from calctra_agent.api_client._client import (  # noqa: E402
    DEFAULT_TIMEOUT_S,
    MAX_OFFER_WAIT_S,
    CalctraClient,
)
from calctra_agent.api_client._retry import RetryPolicy  # noqa: E402

__all__ = ["CalctraClient", "DEFAULT_TIMEOUT_S", "MAX_OFFER_WAIT_S", "RetryPolicy"]
