"""actionbus: typed DomainActions between asyncio microservices over Redis Streams."""

from actionbus.clients import BaseRedisClient, QueueManager, RedisManager, RedisStateManager
from actionbus.clients.layers import PublishLayer, PublishNext
from actionbus.config import CommonAppSettings
from actionbus.dead_letters import DeadLetter, DeadLetterQueue
from actionbus.delayed import DelayedQueue
from actionbus.exceptions import (
    ActionBusError,
    ActionRejected,
    ClientNotInitializedError,
    ConfigurationError,
    ConsumerGroupError,
    DeadLetterError,
    DelayedActionError,
    EmbeddedRedisError,
    HandlerError,
    HandlerTimeout,
    InvalidActionError,
    InvalidNameError,
    InvalidReply,
    NotReplicatedError,
    PayloadTooLargeError,
    PermissionsError,
    RedisAuthenticationError,
    RedisConnectionError,
    RedisTLSError,
    SendError,
    StateConflictError,
    StateError,
    StateTypeError,
    UnknownActionType,
    WorkerFailedError,
)
from actionbus.inspect import ConsumerInfo, GroupInfo, LaneInfo, ServiceInfo, inspect_service
from actionbus.models.actions import DomainAction, DomainActionResponse, ErrorDetail
from actionbus.models.parsing import parse_reply
from actionbus.permissions import acl_setuser, check_permissions

# The RedisPool instance stays at actionbus.redis_pool.redis_pool: re-exporting it here
# would hide the submodule of the same name (`import actionbus.redis_pool as m`).
from actionbus.redis_pool import RedisPool, close_redis_pool, get_redis_client
from actionbus.schedule import Schedule
from actionbus.services import BaseService
from actionbus.workers import BaseWorker, Handler, WorkerSettings, WorkerStats
from actionbus.workers.context import WorkerContext
from actionbus.workers.health import HealthStatus
from actionbus.workers.pipeline import Layer
from actionbus.workers.policy import FailurePolicy

__version__ = "0.1.0"

__all__ = [
    "ActionBusError",
    "ActionRejected",
    "BaseRedisClient",
    "BaseService",
    "BaseWorker",
    "ClientNotInitializedError",
    "CommonAppSettings",
    "ConfigurationError",
    "ConsumerGroupError",
    "ConsumerInfo",
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterQueue",
    "DelayedActionError",
    "DelayedQueue",
    "DomainAction",
    "DomainActionResponse",
    "EmbeddedRedisError",
    "ErrorDetail",
    "FailurePolicy",
    "GroupInfo",
    "Handler",
    "HandlerError",
    "HandlerTimeout",
    "HealthStatus",
    "InvalidActionError",
    "InvalidNameError",
    "InvalidReply",
    "LaneInfo",
    "Layer",
    "NotReplicatedError",
    "PayloadTooLargeError",
    "PermissionsError",
    "PublishLayer",
    "PublishNext",
    "QueueManager",
    "RedisAuthenticationError",
    "RedisConnectionError",
    "RedisManager",
    "RedisPool",
    "RedisStateManager",
    "RedisTLSError",
    "Schedule",
    "SendError",
    "ServiceInfo",
    "StateConflictError",
    "StateError",
    "StateTypeError",
    "UnknownActionType",
    "WorkerContext",
    "WorkerFailedError",
    "WorkerSettings",
    "WorkerStats",
    "__version__",
    "acl_setuser",
    "check_permissions",
    "close_redis_pool",
    "get_redis_client",
    "inspect_service",
    "parse_reply",
]
