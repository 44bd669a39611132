"""actionbus: typed DomainActions between asyncio microservices over Redis Streams."""

from actionbus.clients import BaseRedisClient, QueueManager, RedisManager, RedisStateManager
from actionbus.clients.layers import PublishLayer, PublishNext
from actionbus.config import CommonAppSettings
from actionbus.dead_letters import DeadLetter, DeadLetterQueue
from actionbus.exceptions import (
    ActionBusError,
    ActionRejected,
    ClientNotInitializedError,
    ConfigurationError,
    ConsumerGroupError,
    DeadLetterError,
    EmbeddedRedisError,
    HandlerError,
    InvalidActionError,
    InvalidNameError,
    PayloadTooLargeError,
    RedisConnectionError,
    SendError,
    StateConflictError,
    StateError,
)
from actionbus.models.actions import DomainAction, DomainActionResponse, ErrorDetail

# The RedisPool instance stays at actionbus.redis_pool.redis_pool: re-exporting it here
# would hide the submodule of the same name (`import actionbus.redis_pool as m`).
from actionbus.redis_pool import RedisPool, close_redis_pool, get_redis_client
from actionbus.services import BaseService
from actionbus.workers import BaseWorker, Handler, WorkerSettings, WorkerStats

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
    "DeadLetter",
    "DeadLetterError",
    "DeadLetterQueue",
    "DomainAction",
    "DomainActionResponse",
    "EmbeddedRedisError",
    "ErrorDetail",
    "Handler",
    "HandlerError",
    "InvalidActionError",
    "InvalidNameError",
    "PayloadTooLargeError",
    "PublishLayer",
    "PublishNext",
    "QueueManager",
    "RedisConnectionError",
    "RedisManager",
    "RedisPool",
    "RedisStateManager",
    "SendError",
    "StateConflictError",
    "StateError",
    "WorkerSettings",
    "WorkerStats",
    "__version__",
    "close_redis_pool",
    "get_redis_client",
]
