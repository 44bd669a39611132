"""BaseService: the seed's constructor signature, its accessors and a subclass using them."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pydantic import BaseModel

from actionbus import (
    BaseRedisClient,
    BaseService,
    CommonAppSettings,
    ConfigurationError,
    DomainAction,
    RedisStateManager,
)

pytestmark = pytest.mark.backends

Settings = Callable[..., CommonAppSettings]


class CartState(BaseModel):
    """A cart."""

    items: list[str] = []


class ServiceSettings(CommonAppSettings):
    """A service's own settings extending the common ones."""

    cart_ttl: int = 60


def test_constructor_positional_seed_signature(conn: Any, make_settings: Settings) -> None:
    """BaseService(app_settings, service_redis_client, direct_redis_conn) keeps all three."""
    settings = make_settings(service_name="carts")
    client = BaseRedisClient("carts", conn, settings)
    service = BaseService(settings, client, conn)
    assert service.app_settings is settings
    assert service.service_name == "carts"
    assert service.service_redis_client is client
    assert service.direct_redis_conn is conn
    assert service.redis_client is client
    assert service.redis_conn is conn
    assert service.logger.name.endswith("carts")


def test_constructor_keywords_and_defaults(make_settings: Settings) -> None:
    """Only app_settings is required; the clients default to None."""
    service = BaseService(app_settings=make_settings())
    assert service.service_redis_client is None
    assert service.direct_redis_conn is None


def test_missing_clients_raise_clear_errors(make_settings: Settings) -> None:
    """Using a client the service was not given raises ConfigurationError saying which."""
    service = BaseService(make_settings())
    with pytest.raises(ConfigurationError, match="service_redis_client"):
        _ = service.redis_client
    with pytest.raises(ConfigurationError, match="direct_redis_conn"):
        _ = service.redis_conn


@pytest.mark.parametrize("bad", [None, {"service_name": "x"}, "settings"])
def test_app_settings_must_be_common_settings(bad: Any) -> None:
    """app_settings of another type is a ConfigurationError naming the type."""
    with pytest.raises(ConfigurationError, match="app_settings must be CommonAppSettings"):
        BaseService(bad)


async def test_subclass_with_settings_subclass_state_and_sending(
    bus: Any, redis_url: str
) -> None:
    """A subclass with its own settings class can keep state and send actions."""
    settings = ServiceSettings(_env_file=None, service_name="carts", redis_url=redis_url)

    class CartService(BaseService):
        def __init__(self, app_settings: ServiceSettings, client: BaseRedisClient, conn: Any):
            super().__init__(app_settings, client, conn)
            self.carts = RedisStateManager[CartState](conn, CartState, app_settings)
            self.ttl = app_settings.cart_ttl

        async def add(self, cart_id: str, item: str) -> CartState:
            def change(state: CartState | None) -> CartState:
                return CartState(items=[*(state.items if state else []), item])

            cart = await self.carts.update_state(cart_id, change, self.ttl)
            await self.redis_client.send_action_async(
                DomainAction(action_type="analytics.cart.changed", data={"cart": cart_id})
            )
            return cart

    service = CartService(settings, bus.client("carts"), bus.redis)
    await service.add("c1", "apple")
    assert (await service.add("c1", "pear")).items == ["apple", "pear"]
    assert await bus.redis.xlen("actionbus:dev:{analytics}:streams:main") == 2
