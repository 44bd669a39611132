"""The client's publish layers: a narrow onion around each send.

A layer is ``async def layer(action, call_next) -> str``: it may look at or change the
action (the client's own copy, never the caller's object), then ``return await
call_next(action)`` to pass it on, or raise to stop the send (nothing is written). The
innermost step validates, encodes and writes the action and returns its entry id.

Layers run in the order they were registered with ``client.use(layer)``, the first
outermost, after the built-in tracing layer.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from actionbus.models.actions import DomainAction
from actionbus.tracing import publish_span

__all__ = ["PublishLayer", "PublishNext", "build_chain", "tracing_layer"]

PublishNext = Callable[[DomainAction], Awaitable[str]]
"""The rest of the chain: hand it the action, get its stream entry id."""


class PublishLayer(Protocol):
    """One publish layer: ``async def __call__(action, call_next) -> str``."""

    async def __call__(self, action: DomainAction, call_next: PublishNext) -> str:
        """Handle ``action`` and (usually) pass it on with ``await call_next(action)``."""
        ...


async def tracing_layer(action: DomainAction, call_next: PublishNext) -> str:
    """Built-in: send inside a PRODUCER span whose context the action carries (no-op
    unless tracing is enabled)."""
    with publish_span(action):
        return await call_next(action)


def build_chain(layers: Sequence[PublishLayer], innermost: PublishNext) -> PublishNext:
    """Compose ``layers`` (first outermost) around ``innermost``."""
    chain = innermost
    for layer in reversed(layers):
        chain = _bind(layer, chain)
    return chain


def _bind(layer: PublishLayer, call_next: PublishNext) -> PublishNext:
    async def step(action: DomainAction) -> str:
        return await layer(action, call_next)

    return step
