"""``WorkerSettings``: every option of a worker in one model (env prefix ``ACTIONBUS_WORKER_``)."""

from __future__ import annotations

from typing import Literal

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
    trim_stuck_after_s: float | None = Field(
        600.0, ge=0, description="When entries pending longer than this block trimming, "
        "delete the processed entries after them (pending ones are kept; None: never)."
    )
    maintenance_interval_s: float = Field(10.0, gt=0, description="Trim and consumer cleanup.")
    consumer_gone_after_s: float = Field(
        3600.0, gt=0, description="Idle consumers with nothing pending are removed after this."
    )
    idempotency_ttl_s: int = Field(86_400, ge=1, description="How long duplicates are detected.")
    outage_log_every_s: float = Field(30.0, gt=0, description="Log an outage at most this often.")
    check_permissions: bool = Field(
        True, description="At start, check with ACL DRYRUN that the Redis user may run every "
        "command a worker needs; refuse to start (PermissionsError) naming each missing one."
    )

    clock_skew_s: float = Field(
        1.0, ge=0, description="Tolerated difference between a caller's and this worker's "
        "clocks: an action counts as expired only this long after its expires_at."
    )
    callback_targets: list[str] = Field(
        default_factory=list, description="Services (besides the request's origin_service) "
        "whose streams may receive this worker's callbacks; '*' allows any service."
    )
    consumer_lease_ttl_s: float = Field(
        15.0, gt=0, description="The consumer-name lease: a second process with the same "
        "consumer_name waits this long for it, then refuses to start."
    )
    dead_letter_max_len: int | None = Field(
        100_000, ge=1, description="Keep at most this many dead letters (oldest trimmed)."
    )
    dead_letter_max_age_s: float | None = Field(
        30 * 86_400.0, gt=0, description="Trim dead letters older than this (default 30 days)."
    )
    dead_letter_body_bytes: int = Field(
        65_536, ge=0, description="Of an oversize entry, the dead letter keeps this many bytes."
    )
    read_budget_bytes: int = Field(
        16 * 1_048_576, ge=1, description="Once large entries are seen, one read asks for at "
        "most this many bytes' worth of them (fewer entries per read for a minute)."
    )

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

    lanes: bool = Field(
        False, description="Read the priority lanes (streams:high, streams:main, streams:low) "
        "and announce it, so senders route priority= and pseudo-sync calls to them."
    )
    lane_mode: Literal["weighted", "strict"] = Field(
        "weighted", description="strict: a lower lane is read only when the higher ones are "
        "empty; weighted: each read gives every lane a share (lane_weights), so none starves."
    )
    lane_weights: tuple[int, int, int] = Field(
        (6, 3, 1), description="Shares of one read for high, normal and low (weighted mode)."
    )
    lanes_ttl_s: int = Field(
        30, ge=3, description="TTL of the lanes and partitions descriptors (refreshed every "
        "third of it)."
    )
    ordering_on_failure: Literal["hold", "skip"] = Field(
        "hold", description="A failing action with an ordering_key: hold (retry it in place; "
        "its key's later actions wait until it succeeds or is dead-lettered) or skip (retry "
        "it later like an unordered action; its key's later actions go on)."
    )
    ordering_lease_ttl_s: float = Field(
        10.0, gt=0, description="Lease of the one worker handling a partition's ordered "
        "actions: when its holder dies, another worker takes over after this long."
    )

    @model_validator(mode="after")
    def _consistent(self) -> WorkerSettings:
        if self.retry_backoff_max_s < self.retry_backoff_base_s:
            raise ValueError("retry_backoff_max_s must be >= retry_backoff_base_s")
        if any(w < 1 for w in self.lane_weights):
            raise ValueError("lane_weights must be positive integers (high, normal, low)")
        return self

    def retry_delay(self, deliveries: int) -> float:
        """Backoff before the attempt after ``deliveries`` failed ones (what the worker's
        ``FailurePolicy.retry_delay`` uses)."""
        return exponential(self.retry_backoff_base_s, self.retry_backoff_max_s, deliveries - 1)
