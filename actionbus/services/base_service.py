"""``BaseService``: the base class of a service's business logic."""

from __future__ import annotations

import logging

from actionbus.clients.base_redis_client import BaseRedisClient
from actionbus.config import CommonAppSettings
from actionbus.connection import AnyRedis
from actionbus.exceptions import ConfigurationError

__all__ = ["BaseService"]


class BaseService:
    """Holds what business logic needs: settings, a client to send actions, a raw connection.

    ``BaseService(app_settings, service_redis_client=None, direct_redis_conn=None)``;
    subclasses add their state managers and methods (see the README's example).
    """

    def __init__(
        self,
        app_settings: CommonAppSettings,
        service_redis_client: BaseRedisClient | None = None,
        direct_redis_conn: AnyRedis | None = None,
    ) -> None:
        if not isinstance(app_settings, CommonAppSettings):
            raise ConfigurationError(
                f"app_settings must be CommonAppSettings, got {type(app_settings).__name__}"
            )
        self.app_settings = app_settings
        self.service_name = app_settings.service_name
        self.service_redis_client = service_redis_client
        self.direct_redis_conn = direct_redis_conn
        self.logger = logging.getLogger(f"actionbus.service.{self.service_name}")

    @property
    def redis_client(self) -> BaseRedisClient:
        """The client for sending actions; a clear error if the service was given none."""
        if self.service_redis_client is None:
            raise ConfigurationError(
                f"{type(self).__name__} was created without service_redis_client; pass a "
                "BaseRedisClient to send actions"
            )
        return self.service_redis_client

    @property
    def redis_conn(self) -> AnyRedis:
        """The direct Redis connection; a clear error if the service was given none."""
        if self.direct_redis_conn is None:
            raise ConfigurationError(
                f"{type(self).__name__} was created without direct_redis_conn; pass "
                "RedisManager.get_client() to use state managers"
            )
        return self.direct_redis_conn
