"""QueueManager: the key layout, and refusal of every input that could forge a key."""

from __future__ import annotations

import pytest

from actionbus import InvalidNameError, QueueManager
from actionbus.clients.queue_manager import KeyParts, check_partition
from actionbus.partitions import MAX_PARTITIONS

FORGED = ["", "a:b", "a*", "a{b", "a}b", "{tag}", "has space", "tab\tx", "nl\nx", "-x"]


@pytest.fixture
def qm() -> QueueManager:
    """A QueueManager for environment 'dev' with the default prefix."""
    return QueueManager("dev")


def test_default_layout(qm: QueueManager) -> None:
    """Keys follow ``{prefix}:{environment}:{<service>}:{kind}:{context}``, service braced."""
    assert qm.get_service_action_stream("inventory") == "actionbus:dev:{inventory}:streams:main"
    assert qm.get_dead_letter_stream("inventory") == "actionbus:dev:{inventory}:streams:dead"
    assert qm.get_response_queue("orders", "abc") == "actionbus:dev:{orders}:responses:abc"
    assert qm.get_idempotency_key("orders", "id-1") == "actionbus:dev:{orders}:idempotency:id-1"
    assert qm.get_state_key("orders", "user_session:42") == (
        "actionbus:dev:{orders}:state:user_session:42"
    )
    assert qm.get_delayed_set("inventory") == "actionbus:dev:{inventory}:delayed:main"
    assert qm.get_schedules_key("inventory") == "actionbus:dev:{inventory}:schedules:main"
    assert qm.service_tag("inventory") == "{inventory}"


def test_keys_of_a_service_share_one_cluster_hash_slot(qm: QueueManager) -> None:
    """Every key of one service hashes to the same Redis Cluster slot; other services differ."""
    from redis.crc import key_slot

    keys = [
        qm.get_service_action_stream("inventory"), qm.get_dead_letter_stream("inventory"),
        qm.get_delayed_set("inventory"), qm.get_schedules_key("inventory"),
        qm.get_response_queue("inventory"), qm.get_idempotency_key("inventory", "x"),
        qm.get_state_key("inventory", "a:b"),
    ]
    assert len({key_slot(k.encode()) for k in keys}) == 1
    assert key_slot(qm.get_delayed_set("orders").encode()) != key_slot(keys[0].encode())


def test_acl_style_prefix_patterns_still_match(qm: QueueManager) -> None:
    """Only the service is braced, so a glob on ``prefix:environment:*`` matches every key."""
    from fnmatch import fnmatchcase

    for key in (qm.get_service_action_stream("inventory"), qm.get_delayed_set("inventory")):
        assert fnmatchcase(key, "actionbus:dev:*")


def test_custom_prefix_and_environment() -> None:
    """The prefix and environment given to the constructor start every key."""
    qm = QueueManager("prod", prefix="nooble")
    assert qm.get_service_action_stream("billing") == "nooble:prod:{billing}:streams:main"
    assert qm.environment == "prod"
    assert qm.prefix == "nooble"
    assert repr(qm) == "QueueManager(environment='prod', prefix='nooble')"


def test_response_queue_without_context_is_unique(qm: QueueManager) -> None:
    """get_response_queue(service) generates a new response list name each call."""
    first, second = qm.get_response_queue("orders"), qm.get_response_queue("orders")
    assert first != second
    assert first.startswith("actionbus:dev:{orders}:responses:")


def test_callback_queue_is_the_services_action_stream(qm: QueueManager) -> None:
    """Callbacks are delivered to the origin's own action stream, whatever the context."""
    stream = qm.get_service_action_stream("orders")
    assert qm.get_callback_queue("orders") == stream
    assert qm.get_callback_queue("orders", "ctx-1") == stream


@pytest.mark.parametrize("bad", FORGED)
def test_constructor_refuses_forged_environment_and_prefix(bad: str) -> None:
    """environment and prefix that contain separators, globs, braces or whitespace are refused."""
    with pytest.raises(InvalidNameError, match="environment"):
        QueueManager(bad)
    with pytest.raises(InvalidNameError, match="key prefix"):
        QueueManager("dev", prefix=bad)


def test_constructor_refuses_too_long_names() -> None:
    """An environment over 100 characters is refused."""
    with pytest.raises(InvalidNameError):
        QueueManager("e" * 101)


@pytest.mark.parametrize("bad", [*FORGED, "a.b", "s" * 65])
def test_service_names_that_could_forge_keys_refused(qm: QueueManager, bad: str) -> None:
    """Every key builder refuses a service name that is empty, too long or has key syntax."""
    for build in (
        qm.get_service_action_stream,
        qm.get_dead_letter_stream,
        qm.get_response_queue,
        qm.get_callback_queue,
        qm.get_delayed_set,
        qm.get_schedules_key,
        qm.service_tag,
    ):
        with pytest.raises(InvalidNameError, match="service name"):
            build(bad)
    with pytest.raises(InvalidNameError):
        qm.get_state_key(bad, "k")
    with pytest.raises(InvalidNameError):
        qm.get_idempotency_key(bad, "k")


def test_trailing_newline_refused(qm: QueueManager) -> None:
    """A service name, context or state key ending in a newline is refused."""
    with pytest.raises(InvalidNameError):
        qm.get_service_action_stream("inventory\n")
    with pytest.raises(InvalidNameError):
        qm.get_response_queue("orders", "ctx\n")
    with pytest.raises(InvalidNameError):
        qm.get_state_key("orders", "user:1\n")
    with pytest.raises(InvalidNameError):
        QueueManager("dev\n")


@pytest.mark.parametrize("bad", [*[b for b in FORGED if b], "c" * 129])
def test_contexts_that_could_forge_keys_refused(qm: QueueManager, bad: str) -> None:
    """A response or callback context with key syntax, whitespace or over 128 chars is refused."""
    with pytest.raises(InvalidNameError, match="context"):
        qm.get_response_queue("orders", bad)
    with pytest.raises(InvalidNameError, match="context"):
        qm.get_callback_queue("orders", bad)


@pytest.mark.parametrize("bad", ["", "a*", "{x}", "has space", "x" * 513, ":lead"])
def test_state_keys_refused(qm: QueueManager, bad: str) -> None:
    """State keys may contain ':' but no globs, braces, whitespace or excess length; the
    error names the state key and says what is allowed."""
    with pytest.raises(InvalidNameError) as refused:
        qm.get_state_key("orders", bad)
    assert str(refused.value) == (
        f"state key {bad!r} is not allowed: use 1-512 letters, digits or _.:@/+=- , "
        "starting with a letter or digit (no '*', braces or whitespace)")


def test_non_string_names_refused(qm: QueueManager) -> None:
    """A name that is not a string is refused with InvalidNameError, not a TypeError."""
    with pytest.raises(InvalidNameError):
        qm.get_service_action_stream(None)  # type: ignore[arg-type]
    with pytest.raises(InvalidNameError):
        QueueManager(3)  # type: ignore[arg-type]


def test_invalid_name_error_is_a_value_error() -> None:
    """InvalidNameError can be caught as ValueError."""
    assert issubclass(InvalidNameError, ValueError)


def test_parse_splits_keys_of_the_namespace(qm: QueueManager) -> None:
    """parse() returns service, kind and context of a key of this namespace."""
    parts = KeyParts("orders", "responses", "abc")
    assert qm.parse("actionbus:dev:{orders}:responses:abc") == parts
    assert qm.parse(qm.get_service_action_stream("inv")) == KeyParts("inv", "streams", "main")


@pytest.mark.parametrize(
    "key",
    [
        "victim:key",
        "actionbus:prod:{orders}:responses:abc",
        "other:dev:{orders}:responses:abc",
        "actionbus:dev:{orders}:responses",
        "actionbus:dev:{orders}:responses:a:b",
        "actionbus:dev:{or*ders}:responses:abc",
        "actionbus:dev:{orders}:responses:{x}",
        "actionbus:dev:orders:responses:abc",
        "actionbus:dev:{orders:responses:abc",
        "actionbus:dev:orders}:responses:abc",
        "actionbus:dev:{}:responses:abc",
        "actionbus:dev:{{orders}}:responses:abc",
        "",
    ],
)
def test_parse_refuses_foreign_or_malformed_keys(qm: QueueManager, key: str) -> None:
    """parse() refuses other namespaces, wrong part counts and unbraced (old-layout) services."""
    with pytest.raises(InvalidNameError):
        qm.parse(key)


def test_parse_refuses_non_string(qm: QueueManager) -> None:
    """parse() refuses a non-string key with InvalidNameError."""
    with pytest.raises(InvalidNameError):
        qm.parse(None)  # type: ignore[arg-type]


def test_check_response_queue(qm: QueueManager) -> None:
    """check_response_queue accepts only response lists of this namespace."""
    queue = qm.get_response_queue("orders")
    assert qm.check_response_queue(queue).kind == "responses"
    with pytest.raises(InvalidNameError, match="not a response list"):
        qm.check_response_queue(qm.get_service_action_stream("orders"))
    with pytest.raises(InvalidNameError, match="not in the namespace"):
        qm.check_response_queue("victim:key")


def test_check_action_stream(qm: QueueManager) -> None:
    """check_action_stream accepts only ``…:streams:main`` keys of this namespace."""
    assert qm.check_action_stream(qm.get_service_action_stream("orders")).service == "orders"
    for bad in (qm.get_dead_letter_stream("orders"), qm.get_response_queue("orders")):
        with pytest.raises(InvalidNameError, match="not an action stream"):
            qm.check_action_stream(bad)
    with pytest.raises(InvalidNameError):
        qm.check_action_stream("actionbus:prod:{orders}:streams:main")
    with pytest.raises(InvalidNameError, match="form"):
        qm.check_action_stream("actionbus:dev:orders:streams:main")


def test_partition_streams_span_one_to_max_partitions(qm: QueueManager) -> None:
    """get_partition_streams(service, n) lists partitions 0 .. n-1 for every n from 1 to
    MAX_PARTITIONS (the last allowed partition included); n = 0 is refused."""
    streams = qm.get_partition_streams("inventory", MAX_PARTITIONS)
    assert len(streams) == MAX_PARTITIONS
    assert streams[0] == qm.get_service_action_stream("inventory")
    assert streams[-1] == qm.get_partition_stream("inventory", MAX_PARTITIONS - 1)
    assert len(qm.get_partition_streams("inventory", MAX_PARTITIONS - 1)) == MAX_PARTITIONS - 1
    with pytest.raises(InvalidNameError):
        qm.get_partition_streams("inventory", 0)


def test_refusals_name_the_field_and_say_what_is_allowed(qm: QueueManager) -> None:
    """Each refusal names what was refused (service name, context, environment, key prefix),
    the value, and the rule to follow."""
    namespace_rule = ("use 1-100 letters, digits, '_', '-' or '.' "
                      "(no ':', '*', braces or whitespace)")
    refusals = [
        (lambda: qm.get_service_action_stream("a:b"),
         "service name 'a:b' is not allowed: use 1-64 letters, digits, '_' or '-', starting "
         "with a letter or digit"),
        (lambda: qm.get_response_queue("orders", "a b"),
         "context 'a b' is not allowed: use 1-128 letters, digits, '_', '-' or '.', starting "
         "with a letter or digit (no ':', '*', braces or whitespace)"),
        (lambda: QueueManager("a*"), f"environment 'a*' is not allowed: {namespace_rule}"),
        (lambda: QueueManager("dev", prefix="{x}"),
         f"key prefix '{{x}}' is not allowed: {namespace_rule}"),
    ]
    for build, message in refusals:
        with pytest.raises(InvalidNameError) as refused:
            build()
        assert str(refused.value) == message


def test_defaults_are_environment_dev_and_prefix_actionbus() -> None:
    """QueueManager() builds keys under "actionbus:dev:"."""
    assert QueueManager().get_service_action_stream("inventory") == (
        "actionbus:dev:{inventory}:streams:main")
    assert repr(QueueManager()) == "QueueManager(environment='dev', prefix='actionbus')"


def test_parse_takes_a_one_character_service(qm: QueueManager) -> None:
    """A key of a one-character service ("{a}") parses like any other."""
    assert qm.parse("actionbus:dev:{a}:streams:main") == KeyParts("a", "streams", "main", 0)


def test_layout_of_lanes_leases_and_ordered_streams(qm: QueueManager) -> None:
    """The keys of lanes (delayed sets per lane; ``normal`` and ``None`` are the main
    ones), the ordering lease, the ordered stream and a consumer lease follow the layout;
    a priority that is not a lane is refused for a delayed set."""
    base = "actionbus:dev:{inventory}"
    for lane in (None, "normal"):
        assert qm.get_delayed_set("inventory", lane) == f"{base}:delayed:main"
    for lane in ("high", "low"):
        assert qm.get_delayed_set("inventory", lane) == f"{base}:delayed:{lane}"
    assert qm.get_lane_stream("inventory", "high") == f"{base}:streams:high"
    assert qm.get_ordering_lease_key("inventory") == f"{base}:ordering:lease"
    assert qm.get_ordered_stream("inventory") == f"{base}:streams:ordered"
    assert qm.get_consumer_lease_key("inventory", "c-1") == f"{base}:consumers:c-1"
    with pytest.raises(InvalidNameError, match="'urgent' is not a lane"):
        qm.get_delayed_set("inventory", "urgent")


def test_an_unknown_lane_is_refused_naming_the_lanes_there_are(qm: QueueManager) -> None:
    """Asking for the stream of a lane that does not exist raises InvalidNameError that
    names it and lists the lanes: "use one of high, normal, low"."""
    with pytest.raises(InvalidNameError,
                       match=r"^priority 'urgent' is not a lane: use one of high, normal, low$"):
        qm.get_lane_stream("inventory", "urgent")


@pytest.mark.parametrize("bad", [True, "1", 1.0, -1, 4])
def test_check_partition_refuses_what_is_not_a_partition_number(bad: object) -> None:
    """check_partition refuses a bool, a string, a float and numbers outside 0 .. n-1 with
    an InvalidNameError that names the value and the allowed range (0 to n-1)."""
    with pytest.raises(InvalidNameError) as refused:
        check_partition(bad, 4)  # type: ignore[arg-type]
    assert str(refused.value) == f"partition {bad!r} is not allowed: use 0 to 3"
