"""``QueueManager``: every Redis key name actionbus uses, in one place.

Layout: ``{prefix}:{environment}:{<service>}:{kind}:{context}``, e.g.
``actionbus:dev:{inventory}:streams:main``. The braces around the service are a Redis
Cluster hash tag: every key of one service lives in one hash slot, so one Lua script can
move entries between its delayed set and its stream. Only the service segment is braced, so
ACL patterns such as ``~actionbus:dev:*`` keep matching. Every part is validated so that no
input can forge or collide with another key (names may not contain braces themselves).

A partitioned service (``partitions=N``) has one hash tag per partition, so its partitions'
slots spread over the cluster's masters: partition 0 keeps the service's own keys
(``{inventory}``), partition ``k`` >= 1 uses ``{inventory.p<k>}`` (a ``.`` cannot occur in a
service name, so no service's keys can collide with a partition's). ``partitions=1`` keeps
today's key names.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from functools import lru_cache

from actionbus.exceptions import InvalidNameError
from actionbus.models.actions import SERVICE_NAME_PATTERN
from actionbus.partitions import MAX_PARTITIONS

__all__ = ["KeyParts", "QueueManager"]

_NAMESPACE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
_SERVICE_RE = re.compile(SERVICE_NAME_PATTERN)
_CONTEXT_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")
_STATE_KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+=-]{0,511}")

STREAMS, RESPONSES, CALLBACKS, IDEMPOTENCY, STATE, DELAYED, SCHEDULES = (
    "streams", "responses", "callbacks", "idempotency", "state", "delayed", "schedules",
)
MAIN, DEAD, ORDERED = "main", "dead", "ordered"
PARTITIONS_KIND, ORDERING_KIND = "partitions", "ordering"
ORDERED_SUFFIX = f":{STREAMS}:{ORDERED}"
"""How every ordered stream's name ends."""

LANES = ("high", "normal", "low")
"""Priority lanes, most urgent first; ``normal`` is the main stream (``streams:main``)."""
LANES_KIND = "lanes"


@dataclass(frozen=True, slots=True)
class KeyParts:
    """The parts of a key that belongs to a ``QueueManager``'s namespace."""

    service: str
    kind: str
    context: str
    partition: int = 0
    """The partition the key belongs to (0: the service's own keys)."""


def _check(value: str, pattern: re.Pattern[str], what: str, rule: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value):
        raise InvalidNameError(f"{what} {value!r} is not allowed: {rule}")
    return value


def check_service(service: str) -> str:
    """Validate a service name for use in a key."""
    return _check(
        service, _SERVICE_RE, "service name",
        "use 1-64 letters, digits, '_' or '-', starting with a letter or digit",
    )


def check_partition(partition: int, partitions: int = MAX_PARTITIONS) -> int:
    """Validate a partition number (``0 <= partition < partitions``)."""
    if isinstance(partition, bool) or not isinstance(partition, int) \
            or not 0 <= partition < partitions:
        raise InvalidNameError(
            f"partition {partition!r} is not allowed: use 0 to {partitions - 1}")
    return partition


def check_context(context: str) -> str:
    """Validate a key's last segment (a context)."""
    return _check(
        context, _CONTEXT_RE, "context",
        "use 1-128 letters, digits, '_', '-' or '.', starting with a letter or digit "
        "(no ':', '*', braces or whitespace)",
    )


class QueueManager:
    """Names the streams, response lists and other keys of every service.

    ``QueueManager(environment, prefix)``: ``prefix`` defaults to ``"actionbus"``;
    deployments that already use another prefix set it (``key_prefix`` setting).
    """

    def __init__(self, environment: str = "dev", prefix: str = "actionbus") -> None:
        rule = "use 1-100 letters, digits, '_', '-' or '.' (no ':', '*', braces or whitespace)"
        self.environment = _check(environment, _NAMESPACE_RE, "environment", rule)
        self.prefix = _check(prefix, _NAMESPACE_RE, "key prefix", rule)
        self._base = f"{self.prefix}:{self.environment}:"
        # Key names are built once per service, not once per message.
        self._key = lru_cache(maxsize=4096)(self._build_key)

    def __repr__(self) -> str:
        return f"QueueManager(environment={self.environment!r}, prefix={self.prefix!r})"

    def _build_key(self, service: str, kind: str, context: str, partition: int = 0) -> str:
        check_service(service)
        check_context(context)
        return f"{self._base}{{{self._tag(service, partition)}}}:{kind}:{context}"

    @staticmethod
    def _tag(service: str, partition: int) -> str:
        """The hash tag of a service's partition: ``service`` (0) or ``service.p<k>``."""
        return service if partition == 0 else f"{service}.p{check_partition(partition)}"

    def service_tag(self, service: str) -> str:
        """The hash-tagged service segment shared by all of a service's keys: ``{service}``."""
        return f"{{{check_service(service)}}}"

    def get_service_action_stream(self, service: str) -> str:
        """The stream a service's workers consume: ``…:{service}:streams:main``.

        The braces are literal: ``actionbus:dev:{inventory}:streams:main``.
        """
        return self._key(service, STREAMS, MAIN)

    def get_partition_stream(self, service: str, partition: int) -> str:
        """Partition ``partition`` of a service's action stream: the main stream for 0,
        ``…:{service.p<k>}:streams:main`` for ``k`` >= 1."""
        return self._key(service, STREAMS, MAIN, partition)

    def get_partition_streams(self, service: str, partitions: int) -> list[str]:
        """The action streams of partitions ``0 .. partitions - 1``."""
        check_partition(partitions - 1)
        return [self.get_partition_stream(service, k) for k in range(partitions)]

    def get_ordered_stream(self, service: str, partition: int = 0) -> str:
        """Where a partition's actions with an ``ordering_key`` go:
        ``…:{service}:streams:ordered`` / ``…:{service.p<k>}:streams:ordered``."""
        return self._key(service, STREAMS, ORDERED, partition)

    def get_partitions_key(self, service: str) -> str:
        """The descriptor a service's workers keep alive: ``…:{service}:partitions:main``
        (value: their partition count, decimal; with a TTL)."""
        return self._key(service, PARTITIONS_KIND, MAIN)

    def get_ordering_lease_key(self, service: str, partition: int = 0) -> str:
        """The lease of the one worker that handles a partition's ordered actions:
        ``…:{service}:ordering:lease`` / ``…:{service.p<k>}:ordering:lease``."""
        return self._key(service, ORDERING_KIND, "lease", partition)

    def get_lane_stream(self, service: str, lane: str | None) -> str:
        """The stream of one priority lane: ``…:{service}:streams:high`` / ``:low``; the
        ``normal`` lane (or ``None``) is the main stream, ``…:{service}:streams:main``."""
        if lane is None or lane == "normal":
            return self.get_service_action_stream(service)
        if lane not in LANES:
            raise InvalidNameError(
                f"priority {lane!r} is not a lane: use one of {', '.join(LANES)}")
        return self._key(service, STREAMS, lane)

    def get_lane_streams(self, service: str) -> list[str]:
        """Every lane stream of ``service``, most urgent first (main in the middle)."""
        return [self.get_lane_stream(service, lane) for lane in LANES]

    def get_lanes_key(self, service: str) -> str:
        """The descriptor a lane-reading worker keeps alive: ``…:{service}:lanes:main``
        (value: the lanes it reads, comma-separated; with a TTL)."""
        return self._key(service, LANES_KIND, MAIN)

    def get_dead_letter_stream(self, service: str) -> str:
        """Where a service's failed or malformed actions go: ``…:{service}:streams:dead``."""
        return self._key(service, STREAMS, DEAD)

    def get_response_queue(self, service: str, context: str | None = None) -> str:
        """A response list owned by ``service``: ``…:{service}:responses:{context}``.

        Without ``context`` a unique one is generated.
        """
        return self._key(service, RESPONSES, context or uuid.uuid4().hex)

    def get_callback_queue(self, service: str, context: str | None = None) -> str:
        """Where callbacks for ``service`` are delivered: its own action stream.

        Callbacks are ordinary ``DomainAction``s, so they are as durable as any action and
        reach the same handlers. ``context`` does not change the destination; the client
        carries it in the action's ``metadata["callback_context"]``. It is validated like
        any key part, so it stays safe wherever a service uses it.
        """
        if context is not None:
            check_context(context)
        return self.get_service_action_stream(service)

    def get_idempotency_key(self, service: str, action_id: str) -> str:
        """The marker that records a guarded handler already ran for ``action_id``."""
        return self._key(service, IDEMPOTENCY, action_id)

    def get_consumer_lease_key(self, service: str, lease_id: str) -> str:
        """The lease a running worker holds on its consumer name: ``…:{service}:consumers:<id>``."""
        return self._build_key(service, "consumers", lease_id)

    def get_delayed_set(
        self, service: str, lane: str | None = None, partition: int = 0
    ) -> str:
        """The sorted set of a service's delayed actions: ``…:{service}:delayed:main``
        (a lane's retries: ``…:{service}:delayed:high`` / ``:low``; partition ``k``'s:
        ``…:{service.p<k>}:delayed:main``).

        Members are action JSON, scores the due time in epoch milliseconds; it shares its
        stream's hash slot (see ``actionbus.delayed``).
        """
        if lane is None or lane == "normal":
            return self._key(service, DELAYED, MAIN, partition)
        self.get_lane_stream(service, lane)  # checks the lane
        return self._key(service, DELAYED, lane)

    def partition_of(self, stream: str) -> int:
        """The partition a key of this namespace belongs to (0: the service's own keys)."""
        return self.parse(stream).partition

    def lane_of(self, stream: str) -> str:
        """The lane an action stream of this namespace is: ``high``, ``normal`` or ``low``."""
        context = self.parse(stream).context
        return "normal" if context == MAIN else context

    def get_schedules_key(self, service: str) -> str:
        """The hash of a service's periodic actions: schedule name -> last tick (epoch ms)."""
        return self._key(service, SCHEDULES, MAIN)

    def get_state_key(self, service: str, state_key: str) -> str:
        """The key holding a ``RedisStateManager`` value: ``…:{service}:state:{state_key}``.

        ``state_key`` may contain ``:`` (e.g. ``user_session:42``): it can only extend the
        service's own namespace, never leave it.
        """
        check_service(service)
        _check(
            state_key, _STATE_KEY_RE, "state key",
            "use 1-512 letters, digits or _.:@/+=- , starting with a letter or digit "
            "(no '*', braces or whitespace)",
        )
        return f"{self._base}{{{service}}}:{STATE}:{state_key}"

    def parse(self, key: str) -> KeyParts:
        """Split a key of this namespace into its parts; ``InvalidNameError`` otherwise."""
        if not isinstance(key, str) or not key.startswith(self._base):
            raise InvalidNameError(
                f"key {key!r} is not in the namespace {self._base!r}: replies and callbacks "
                "may only go to keys of this prefix and environment"
            )
        parts = key[len(self._base):].split(":")
        tagged = parts[0]
        if len(parts) != 3 or len(tagged) < 3 or tagged[0] != "{" or tagged[-1] != "}":
            raise InvalidNameError(
                f"key {key!r} does not have the form {self._base}{{<service>}}:<kind>:<context>"
            )
        service, kind, context = tagged[1:-1], parts[1], parts[2]
        partition = 0
        base, dot, number = service.rpartition(".p")
        if dot and number.isdigit() and number == str(int(number)) and int(number) > 0:
            service, partition = base, check_partition(int(number))
        check_service(service)
        check_context(context)
        return KeyParts(service, kind, context, partition)

    def check_response_queue(self, key: str) -> KeyParts:
        """Accept ``key`` only if it is a response list of this namespace."""
        parts = self.parse(key)
        if parts.kind != RESPONSES or parts.partition:
            raise InvalidNameError(
                f"callback_queue_name {key!r} is not a response list "
                f"(expected {self._base}{{<service>}}:{RESPONSES}:<id>)"
            )
        return parts

    def check_action_stream(self, key: str) -> KeyParts:
        """Accept ``key`` only if it is a service's action stream of this namespace."""
        parts = self.parse(key)
        if parts.kind != STREAMS or parts.context != MAIN or parts.partition:
            raise InvalidNameError(
                f"callback_queue_name {key!r} is not an action stream "
                f"(expected {self._base}{{<service>}}:{STREAMS}:{MAIN})"
            )
        return parts
