"""Clients: connections, sending, key names and the state store."""

from actionbus.clients.base_redis_client import BaseRedisClient
from actionbus.clients.queue_manager import QueueManager
from actionbus.clients.redis_manager import RedisManager
from actionbus.clients.state_manager import RedisStateManager

__all__ = ["BaseRedisClient", "QueueManager", "RedisManager", "RedisStateManager"]
