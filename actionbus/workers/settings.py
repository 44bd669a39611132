"""``WorkerSettings``: every option of a worker in one model (env prefix ``ACTIONBUS_WORKER_``)."""

from __future__ import annotations

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from actionbus.backoff import exponential

__all__ = ["WorkerSettings"]


class WorkerSettings(BaseSettings):
    """How a ``BaseWorker`` reads, retries, reclaims, trims and shuts down."""

    model_config = SettingsConfigDict(env_prefix="ACTIONBUS_WORKER_", extra="ignore")

    group_name: str | None = Field(None, description="Consumer group; defaults to the service.")
    consumer_name: str | None = Field(None, description="Defaults to host-pid-random.")
    concurrency: int = Field(128, ge=1, description="Actions handled at the same time.")
    batch_size: int = Field(100, ge=1, description="Entries read per XREADGROUP.")
    block_ms: int = Field(2000, ge=10, description="How long one read blocks waiting.")

    max_deliveries: int = Field(5, ge=1, description="Attempts before an action is dead-lettered.")
    retry_backoff_base_s: float = Field(0.2, gt=0, description="First retry delay; doubles.")
    retry_backoff_max_s: float = Field(30.0, gt=0)

    claim_idle_ms: int = Field(
        30_000, ge=100, description="Pending this long without a heartbeat = abandoned; reclaim."
    )
    reclaim_interval_s: float = Field(5.0, gt=0, description="How often to look for abandoned.")

    shutdown_grace_s: float = Field(10.0, ge=0, description="In-flight handlers get this long.")

    stream_retention: int | None = Field(
        100_000, ge=1, description="Above this many entries, fully processed ones are trimmed "
        "(checked every maintenance interval and every retention/10 acknowledgements)."
    )
    maintenance_interval_s: float = Field(10.0, gt=0, description="Trim and consumer cleanup.")
    consumer_gone_after_s: float = Field(
        3600.0, gt=0, description="Idle consumers with nothing pending are removed after this."
    )
    idempotency_ttl_s: int = Field(86_400, ge=1, description="How long duplicates are detected.")
    outage_log_every_s: float = Field(30.0, gt=0, description="Log an outage at most this often.")

    retry_in_slot: bool = Field(
        False, description="Old behaviour: a retry waits its backoff inside a concurrency slot "
        "(default: acknowledged and re-added to the delayed set, the slot freed at once)."
    )
    delayed_poll_s: float = Field(
        0.05, gt=0, le=60, description="The mover's longest sleep: bounds delayed-action lateness."
    )
    delayed_batch: int = Field(500, ge=1, description="Due delayed actions moved per script.")
    handler_timeout_s: float | None = Field(
        None, gt=0, description="Default handler timeout (None = none); register(timeout=) wins."
    )
    slow_handler_warn_s: float | None = Field(
        None, gt=0, description="Warn once about a handler running this long without a "
        "timeout (None = 2 x claim_idle_ms)."
    )

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSettings:
        if self.retry_backoff_max_s < self.retry_backoff_base_s:
            raise ValueError("retry_backoff_max_s must be >= retry_backoff_base_s")
        return self

    def retry_delay(self, deliveries: int) -> float:
        """Backoff before the attempt after ``deliveries`` failed ones (what the worker's
        ``FailurePolicy.retry_delay`` uses)."""
        return exponential(self.retry_backoff_base_s, self.retry_backoff_max_s, deliveries - 1)
