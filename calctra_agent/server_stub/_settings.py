"""How a reference server is configured."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerSettings:
    """Settings of one reference server; everything it stores lives under `data_dir`."""

    data_dir: Path
    database_url: str | None = None
    dev_faucet: bool = False
    allow_private_webhooks: bool = False
    token_ttl_s: int = 86_400
    rate_limit: int = 600
    """Requests allowed per key (a user, or a client address on the auth endpoints) per window;
    0 turns rate limiting off."""
    rate_limit_window_s: int = 60
    max_upload_bytes: int = 1024 * 1024 * 1024
    """The largest dataset, and the largest result archive, the server takes."""
    max_log_bytes: int = 16 * 1024 * 1024
    """How much of a job's log the server keeps; later bytes are dropped."""
    webhook_max_attempts: int = 8
    webhook_backoff_base_s: float = 1.0
    webhook_backoff_max_s: float = 300.0
    webhook_timeout_s: float = 5.0
    matcher_interval_s: float = 5.0
    matches_per_job: int = 5
    heartbeat_interval_s: float = 30.0
    """How often agents are told to send a heartbeat (with +-10 % jitter)."""
    heartbeat_timeout_s: float = 90.0
    """A resource whose agent sent no heartbeat for this long turns inactive."""
    claim_max_skew_s: int = 600
    """How far a claim's timestamp may be from the server's clock."""

    @property
    def effective_database_url(self) -> str:
        return self.database_url or f"sqlite:///{self.data_dir / 'calctra.db'}"

    @property
    def uploads_dir(self) -> Path:
        return self.data_dir / "datasets"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def results_dir(self) -> Path:
        return self.data_dir / "results"
