"""Every error actionbus raises, under one root.

    ActionBusError
    ├── ConfigurationError          settings or arguments that cannot work
    ├── InvalidNameError            a service name, context or key part that could forge a key
    ├── RedisConnectionError        Redis could not be reached (host and port named, no password)
    ├── ClientNotInitializedError   a manager used before initialize() or after close()
    ├── SendError                   an action could not be sent
    │   └── PayloadTooLargeError    the serialized action is above the configured size limit
    ├── ConsumerGroupError          a consumer group could not be created or used
    ├── HandlerError                a handler is missing, registered twice, or has a bad signature
    ├── ActionRejected              an action that can never succeed: dead-lettered, not retried
    ├── DeadLetterError             a dead letter could not be found or replayed
    ├── InvalidReply                a reply arrived that is not a valid DomainActionResponse
    ├── StateError                  the state store could not complete an update
    │   └── StateConflictError      an optimistic update kept conflicting with other writers
    └── EmbeddedRedisError          a local redis-server could not be found, started or stopped

Errors say what happened, to what (key, service, action id) and what to do next.
They never contain a password. Redis-py's own ``ConnectionError``/``TimeoutError``
are wrapped, not shadowed.
"""

from __future__ import annotations

__all__ = [
    "ActionBusError",
    "ActionRejected",
    "ClientNotInitializedError",
    "ConfigurationError",
    "ConsumerGroupError",
    "DeadLetterError",
    "EmbeddedRedisError",
    "HandlerError",
    "InvalidNameError",
    "InvalidReply",
    "PayloadTooLargeError",
    "RedisConnectionError",
    "SendError",
    "StateConflictError",
    "StateError",
]


class ActionBusError(Exception):
    """Root of every error raised by actionbus."""


class ConfigurationError(ActionBusError):
    """Settings or constructor arguments that cannot work together."""


class InvalidNameError(ActionBusError, ValueError):
    """A service name, context or key part that is empty or could forge another key."""


class RedisConnectionError(ActionBusError):
    """Redis could not be reached within the connect timeout."""


class ClientNotInitializedError(ActionBusError):
    """A manager was used before ``initialize()`` or after ``close()``."""


class SendError(ActionBusError):
    """An action could not be written to its target stream."""


class PayloadTooLargeError(SendError):
    """The serialized action is larger than ``max_payload_bytes``; nothing was sent."""


class ConsumerGroupError(ActionBusError):
    """A consumer group could not be created or read (not BUSYGROUP/NOGROUP, which are handled)."""


class HandlerError(ActionBusError):
    """A handler is missing, registered twice for one action type, or badly declared."""


class ActionRejected(ActionBusError):
    """Raise from a handler for an action that can never succeed; it is not retried."""

    def __init__(self, message: str, *, error_code: str | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code


class DeadLetterError(ActionBusError):
    """A dead letter could not be found or replayed."""


class StateError(ActionBusError):
    """The state store could not complete an operation."""


class StateConflictError(StateError):
    """An optimistic ``update_state`` lost the race more times than allowed."""


class EmbeddedRedisError(ActionBusError):
    """A local ``redis-server`` could not be found, started or stopped."""


class InvalidReply(ActionBusError):
    """A reply that is not a valid ``DomainActionResponse`` (see docs/wire-format.md).

    ``raw`` is the payload as received, ``reason`` the validation message and
    ``correlation_id`` the payload's ``correlation_id`` when one could be read, so the
    waiting caller gets this error at once instead of a timeout.
    """

    def __init__(self, raw: str, reason: str, correlation_id: str | None = None) -> None:
        super().__init__(
            f"invalid reply (correlation_id {correlation_id!r}): {reason}; payload: "
            f"{raw[:300]!r}. The answering service must follow docs/wire-format.md."
        )
        self.raw = raw
        self.reason = reason
        self.correlation_id = correlation_id
