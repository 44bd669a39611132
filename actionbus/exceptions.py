"""Every error actionbus raises, under one root.

    ActionBusError
    ├── ConfigurationError          settings or arguments that cannot work
    ├── InvalidNameError            a service name, context or key part that could forge a key
    ├── RedisConnectionError        Redis could not be reached (host and port named, no password)
    │   ├── RedisAuthenticationError  the server refused the user name / password
    │   └── RedisTLSError           the TLS handshake failed (CA, host name, TLS port)
    ├── PermissionsError            the Redis user lacks commands or keys a role needs
    ├── ClientNotInitializedError   a manager used before initialize() or after close()
    ├── SendError                   an action could not be sent (``outcome_unknown``: may it be?)
    │   ├── PayloadTooLargeError    the serialized action is above the configured size limit
    │   ├── InvalidActionError      a bad field, data that is not JSON, NaN
    │   └── NotReplicatedError      written, but fewer replicas than ``wait_replicas`` confirmed
    ├── ConsumerGroupError          a consumer group could not be created or used
    ├── HandlerError                a handler is missing, registered twice, or has a bad signature
    ├── ActionRejected              an action that can never succeed: dead-lettered, not retried
    ├── HandlerTimeout              a handler overran its timeout and was cancelled (retried)
    ├── DeadLetterError             a dead letter could not be found or replayed
    ├── DelayedActionError          a delayed action or schedule that cannot be used as given
    ├── InvalidReply                a reply arrived that is not a valid DomainActionResponse
    ├── StateError                  the state store could not complete an update
    │   ├── StateConflictError      an optimistic update kept conflicting with other writers
    │   └── StateTypeError          a stored state belongs to another model (or version)
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
    "DelayedActionError",
    "EmbeddedRedisError",
    "HandlerError",
    "HandlerTimeout",
    "InvalidActionError",
    "InvalidNameError",
    "InvalidReply",
    "NotReplicatedError",
    "PayloadTooLargeError",
    "PermissionsError",
    "RedisAuthenticationError",
    "RedisConnectionError",
    "RedisTLSError",
    "SendError",
    "StateConflictError",
    "StateError",
    "StateTypeError",
    "UnknownActionType",
    "WorkerFailedError",
]


class ActionBusError(Exception):
    """Root of every error raised by actionbus."""


class ConfigurationError(ActionBusError):
    """Settings or constructor arguments that cannot work together."""


class InvalidNameError(ActionBusError, ValueError):
    """A service name, context or key part that is empty or could forge another key."""


class RedisConnectionError(ActionBusError):
    """Redis could not be reached within the connect timeout."""


class RedisAuthenticationError(RedisConnectionError):
    """The server refused the configured user name or password (no password in the text)."""


class RedisTLSError(RedisConnectionError):
    """The TLS handshake failed: unknown CA, host name not in the certificate, not a TLS port."""


class PermissionsError(ActionBusError):
    """The Redis user lacks commands or key access that a role needs.

    ``missing`` lists each denied ``(command, key)``; ``key`` is ``None`` for keyless commands.
    """

    def __init__(self, message: str, *, missing: list[tuple[str, str | None]]) -> None:
        super().__init__(message)
        self.missing = missing


class ClientNotInitializedError(ActionBusError):
    """A manager was used before ``initialize()`` or after ``close()``."""


class SendError(ActionBusError):
    """An action could not be written to its target stream.

    ``outcome_unknown`` is ``False`` when the action was certainly not written (refused,
    never sent) and ``True`` when the connection broke after the write left, so the action
    may have been delivered: resend with the same ``action_id`` only to idempotent handlers.
    """

    def __init__(self, message: str, *, outcome_unknown: bool = False) -> None:
        super().__init__(message)
        self.outcome_unknown = outcome_unknown


class PayloadTooLargeError(SendError):
    """The serialized action is larger than ``max_payload_bytes``; nothing was sent."""


class InvalidActionError(SendError, ValueError):
    """The action cannot be sent as it is (a field changed to a bad value, data that is not
    JSON, NaN or infinity); nothing was sent."""


class NotReplicatedError(SendError):
    """The action IS in its stream (``entry_id``) on the master, but only ``replicas`` of
    the ``wanted`` replicas confirmed it within the wait: a failover of that master now
    could lose it. ``outcome_unknown`` is False: it was written. Resending makes a
    duplicate (same ``action_id``), which only idempotent handlers skip."""

    def __init__(self, message: str, *, entry_id: str, replicas: int, wanted: int) -> None:
        super().__init__(message, outcome_unknown=False)
        self.entry_id = entry_id
        self.replicas = replicas
        self.wanted = wanted


class ConsumerGroupError(ActionBusError):
    """A consumer group could not be created or read (not BUSYGROUP/NOGROUP, which are handled)."""


class HandlerError(ActionBusError):
    """A handler is missing, registered twice for one action type, or badly declared."""


class ActionRejected(ActionBusError):
    """Raise from a handler for an action that can never succeed; it is not retried."""

    def __init__(self, message: str, *, error_code: str | None = None) -> None:
        super().__init__(message)
        self.error_code = error_code


class UnknownActionType(HandlerError, ActionRejected):
    """No handler (and no ``handle_action`` override) for an action's type: it is
    dead-lettered at once as ``unknown_action_type`` (a waiting caller gets the error)."""

    def __init__(self, message: str) -> None:
        ActionRejected.__init__(self, message, error_code="unknown_action_type")


class HandlerTimeout(ActionBusError):
    """A handler ran longer than its timeout and was cancelled: one failed attempt, retried
    or dead-lettered like any failure (a waiting caller gets this error at once)."""


class DeadLetterError(ActionBusError):
    """A dead letter could not be found or replayed."""


class DelayedActionError(ActionBusError, ValueError):
    """A delayed action or schedule that cannot be used as given (naive time, wrong service…)."""


class StateError(ActionBusError):
    """The state store could not complete an operation."""


class StateConflictError(StateError):
    """An optimistic ``update_state`` lost the race more times than allowed."""


class StateTypeError(StateError):
    """A stored state was written by another model type (or an unmigrated schema version)."""


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


class WorkerFailedError(ActionBusError):
    """A worker's background loop died for good; the worker stopped (``.cause`` says why)."""

    def __init__(self, message: str, *, cause: BaseException | None = None) -> None:
        super().__init__(message)
        self.cause = cause
