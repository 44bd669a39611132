"""Handler registration and the conversion of handler results into response data."""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from actionbus.exceptions import ActionRejected, HandlerError
from actionbus.models.actions import DomainAction, DomainActionResponse, check_action_type

__all__ = ["Handler", "HandlerRegistry", "Route", "result_data"]

Handler = Callable[[DomainAction, Any], Awaitable[Any]]
"""``async def handler(action, data)``: ``data`` is the validated model, or the raw dict."""

M = TypeVar("M", bound=BaseModel)
R = TypeVar("R")
ModelHandler = Callable[[DomainAction, M], Awaitable[R]]
"""A handler registered with ``data_model=M``: it receives ``data: M``."""
DictHandler = Callable[[DomainAction, dict[str, Any]], Awaitable[R]]
"""A handler registered without a data model: it receives ``data: dict[str, Any]``."""


@dataclass(frozen=True, slots=True)
class Route:
    """How one action type is handled."""

    action_type: str
    handler: Handler
    data_model: type[BaseModel] | None = None
    idempotent: bool = False
    timeout: float | None = None
    """Seconds before the handler is cancelled (``None``: the worker's default)."""

    def parse_data(self, action: DomainAction) -> Any:
        """Validate ``action.data`` against the route's model; ``ActionRejected`` if it fails."""
        if self.data_model is None:
            return action.data
        try:
            return self.data_model.model_validate(action.data)
        except ValidationError as exc:
            raise ActionRejected(
                f"data of {action.action_type} {action.action_id} does not match "
                f"{self.data_model.__name__}: {exc}",
                error_code="invalid_data",
            ) from exc


class HandlerRegistry:
    """Maps action types to routes."""

    def __init__(self) -> None:
        self._routes: dict[str, Route] = {}

    def add(
        self,
        action_type: str,
        handler: Handler,
        *,
        data_model: type[BaseModel] | None = None,
        idempotent: bool = False,
        timeout: float | timedelta | None = None,
    ) -> Route:
        """Register ``handler`` for ``action_type``; ``HandlerError`` on a bad declaration."""
        try:
            check_action_type(action_type)
        except ValueError as exc:
            raise HandlerError(str(exc)) from None
        if action_type in self._routes:
            raise HandlerError(f"a handler for {action_type!r} is already registered")
        if not inspect.iscoroutinefunction(handler):
            raise HandlerError(
                f"the handler for {action_type!r} must be an `async def` taking (action, data)"
            )
        if data_model is not None and not (
            isinstance(data_model, type) and issubclass(data_model, BaseModel)
        ):
            raise HandlerError(f"data_model for {action_type!r} must be a Pydantic model class")
        seconds = timeout.total_seconds() if isinstance(timeout, timedelta) else timeout
        if seconds is not None and not (isinstance(seconds, int | float) and seconds > 0):
            raise HandlerError(
                f"timeout for {action_type!r} must be a positive number of seconds or a "
                f"timedelta, got {timeout!r}"
            )
        route = Route(action_type, handler, data_model, idempotent,
                      None if seconds is None else float(seconds))
        self._routes[action_type] = route
        return route

    def get(self, action_type: str) -> Route | None:
        """The route for ``action_type``, if any."""
        return self._routes.get(action_type)

    def __contains__(self, action_type: object) -> bool:
        return action_type in self._routes

    @property
    def action_types(self) -> list[str]:
        """Every registered action type, sorted."""
        return sorted(self._routes)


def result_data(result: Any) -> dict[str, Any]:
    """Response data for a handler's return value: dict, Pydantic model or ``None``."""
    if result is None:
        return {}
    if isinstance(result, dict):
        return result
    if isinstance(result, BaseModel):
        return result.model_dump(mode="json")
    raise HandlerError(
        f"a handler returned {type(result).__name__}; return a dict, a Pydantic model, "
        "a DomainActionResponse or None"
    )


def is_response(result: Any) -> bool:
    """True if the handler built its own ``DomainActionResponse``."""
    return isinstance(result, DomainActionResponse)
