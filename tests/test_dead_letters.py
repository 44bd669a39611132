"""DeadLetterQueue: list, get, count, replay, replay_all and delete a service's dead letters."""

from __future__ import annotations

import asyncio
import hashlib
import time
from datetime import datetime
from typing import Any

import pytest

from actionbus import (
    ActionRejected,
    DeadLetter,
    DeadLetterError,
    DeadLetterQueue,
    DomainAction,
    InvalidNameError,
    QueueManager,
)
from actionbus.dead_letters import dead_letter_fields, trim_dead_letters

pytestmark = pytest.mark.backends

QM = QueueManager("dev")
DEAD = QM.get_dead_letter_stream("inventory")
MAIN = QM.get_service_action_stream("inventory")


@pytest.fixture
def dlq(conn: Any) -> DeadLetterQueue:
    """The dead-letter queue of service 'inventory'."""
    return DeadLetterQueue(conn, QM, "inventory")


async def _bury(conn: Any, n: int) -> list[str]:
    """Write ``n`` dead letters the way a worker does; return their entry ids."""
    ids = []
    for i in range(n):
        action = DomainAction(action_type="inventory.item.reserve", data={"i": i})
        entry_id = await conn.xadd(DEAD, dead_letter_fields(
            data=action.model_dump_json(), reason="max_deliveries", error_type="RuntimeError",
            error_message=f"boom {i}", deliveries=5, original_id=f"1-{i}", stream=MAIN,
            consumer="c1",
        ))
        ids.append(entry_id.decode())
    return ids


def test_constructor_names_streams(conn: Any) -> None:
    """The queue reads the service's dead stream and replays to its action stream."""
    dlq = DeadLetterQueue(conn, QM, "inventory")
    assert dlq.stream == DEAD
    assert dlq.action_stream == MAIN
    with pytest.raises(InvalidNameError):
        DeadLetterQueue(conn, QM, "in:ventory")


async def test_empty_queue(dlq: DeadLetterQueue) -> None:
    """With no dead letters, count is 0 and list is empty."""
    assert await dlq.count() == 0
    assert await dlq.list() == []


async def test_list_and_count(conn: Any, dlq: DeadLetterQueue) -> None:
    """list returns dead letters oldest first, limited by count and starting at start."""
    ids = await _bury(conn, 3)
    assert await dlq.count() == 3
    letters = await dlq.list()
    assert [letter.entry_id for letter in letters] == ids
    first = letters[0]
    assert isinstance(first, DeadLetter)
    assert (first.reason, first.error_type, first.error_message) == (
        "max_deliveries", "RuntimeError", "boom 0",
    )
    assert (first.deliveries, first.original_id, first.stream, first.consumer) == (
        5, "1-0", MAIN, "c1",
    )
    [(_, raw)] = await conn.xrange(DEAD, count=1)
    assert first.failed_at == datetime.fromisoformat(raw[b"failed_at"].decode())  # stored, not now
    assert first.failed_at.tzinfo is not None
    assert DomainAction.model_validate_json(first.data).data == {"i": 0}
    assert [x.entry_id for x in await dlq.list(count=2)] == ids[:2]
    assert [x.entry_id for x in await dlq.list(start=ids[1])] == ids[1:]


@pytest.mark.parametrize("count", [0, -1])
async def test_list_rejects_non_positive_count(dlq: DeadLetterQueue, count: int) -> None:
    """list(count<=0) raises ValueError."""
    with pytest.raises(ValueError, match="count must be positive"):
        await dlq.list(count=count)


async def test_get_by_id(conn: Any, dlq: DeadLetterQueue) -> None:
    """get returns one dead letter; an unknown id is a DeadLetterError naming it."""
    ids = await _bury(conn, 2)
    assert (await dlq.get(ids[1])).error_message == "boom 1"
    with pytest.raises(DeadLetterError, match="no dead letter '1-1'"):
        await dlq.get("1-1")


async def test_malformed_entry_id_is_clear_error(dlq: DeadLetterQueue) -> None:
    """A malformed entry id is a DeadLetterError, not a raw Redis error."""
    with pytest.raises(DeadLetterError):
        await dlq.get("not-an-id")


async def test_replay_moves_letter_back(conn: Any, dlq: DeadLetterQueue) -> None:
    """replay appends the original data to the action stream and removes the dead letter."""
    ids = await _bury(conn, 2)
    original = (await dlq.get(ids[0])).data
    new_id = await dlq.replay(ids[0])
    [(entry_id, fields)] = await conn.xrange(MAIN)
    assert entry_id.decode() == new_id
    assert fields == {b"data": original.encode()}
    assert await dlq.count() == 1
    with pytest.raises(DeadLetterError):
        await dlq.replay(ids[0])


async def test_replay_of_a_later_letter_sends_that_letter(
    conn: Any, dlq: DeadLetterQueue
) -> None:
    """Replaying a letter that is not the oldest sends its own action, not an older one's,
    and removes only that letter."""
    ids = await _bury(conn, 3)
    new_id = await dlq.replay(ids[1])
    [(entry_id, fields)] = await conn.xrange(MAIN)
    assert entry_id.decode() == new_id
    assert DomainAction.model_validate_json(fields[b"data"]).data == {"i": 1}
    assert [letter.entry_id for letter in await dlq.list()] == [ids[0], ids[2]]


async def test_replay_all(conn: Any, dlq: DeadLetterQueue) -> None:
    """replay_all replays every dead letter in order and returns how many."""
    await _bury(conn, 5)
    assert await dlq.replay_all(batch=2) == 5
    assert await dlq.count() == 0
    entries = await conn.xrange(MAIN)
    assert [DomainAction.model_validate_json(f[b"data"]).data["i"] for _, f in entries] == [
        0, 1, 2, 3, 4,
    ]
    assert await dlq.replay_all() == 0


async def test_delete(conn: Any, dlq: DeadLetterQueue) -> None:
    """delete removes one dead letter and says whether it existed."""
    ids = await _bury(conn, 2)
    assert await dlq.delete(ids[0]) is True
    assert await dlq.delete(ids[0]) is False
    assert [x.entry_id for x in await dlq.list()] == ids[1:]


async def test_worker_dead_letter_replayed_and_handled(bus: Any, eventually: Any) -> None:
    """A letter dead-lettered by a worker is handled after replay once the cause is fixed."""
    worker = bus.worker("inventory")
    broken = True
    handled: list[dict[str, Any]] = []

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        if broken:
            raise ActionRejected("sku table not loaded")
        handled.append(data)

    await worker.start()
    await bus.client("orders").send_action_async(
        DomainAction(action_type="inventory.item.reserve", data={"sku": "A"})
    )
    [letter] = await eventually(lambda: worker.dead_letters.list())
    assert letter.reason == "rejected"
    broken = False
    await worker.dead_letters.replay(letter.entry_id)
    await eventually(lambda: handled)
    assert handled == [{"sku": "A"}]
    assert await worker.dead_letters.count() == 0


class _ReburyingQueue(DeadLetterQueue):
    """A queue whose every replayed action is buried again at once, as a still-broken
    handler's worker would do."""

    async def _move_back(self, letter: DeadLetter) -> str | None:
        new_id = await super()._move_back(letter)
        await self.redis.xadd(self.stream, {"data": letter.data, "reason": "rejected"})
        return new_id


async def test_replay_all_replays_each_letter_once_even_if_buried_again(conn: Any) -> None:
    """replay_all() replays the letters present when it started, once each, and ends."""
    await _bury(conn, 3)
    dlq = _ReburyingQueue(conn, QM, "inventory")
    async with asyncio.timeout(10):
        assert await dlq.replay_all(batch=1) == 3
    assert await conn.xlen(MAIN) == 3
    assert await dlq.count() == 3  # the re-buried ones wait for the next replay


async def test_replay_all_with_a_worker_that_buries_again_ends(bus: Any, eventually: Any) -> None:
    """With a worker that rejects everything, replay_all() ends after one pass."""
    worker = bus.worker("inventory")

    @worker.handler("inventory.item.reserve")
    async def reserve(action: DomainAction, data: dict[str, Any]) -> None:
        raise ActionRejected("still broken")

    await worker.start()
    await bus.client("orders").send_actions_async(
        [DomainAction(action_type="inventory.item.reserve", data={"i": i}) for i in range(3)]
    )
    await eventually(lambda: _count_is(worker.dead_letters, 3))
    async with asyncio.timeout(10):
        assert await worker.dead_letters.replay_all(batch=1) == 3
    await eventually(lambda: _count_is(worker.dead_letters, 3))


class _DeletedMeanwhile(DeadLetterQueue):
    """A queue whose get() is followed at once by an operator's delete() of that letter,
    landing between replay()'s read and its move."""

    async def get(self, entry_id: str) -> DeadLetter:
        letter = await super().get(entry_id)
        assert await DeadLetterQueue(self.redis, QM, "inventory").delete(entry_id)
        return letter


async def test_a_letter_deleted_after_replay_read_it_is_not_sent(conn: Any) -> None:
    """A letter deleted between replay()'s read and its move is not sent: replay raises
    DeadLetterError as for an unknown id, and the action stream stays empty."""
    [entry_id] = await _bury(conn, 1)
    with pytest.raises(DeadLetterError, match=f"no dead letter '{entry_id}'"):
        await _DeletedMeanwhile(conn, QM, "inventory").replay(entry_id)
    assert await conn.xlen(MAIN) == 0


class _ReplayedMeanwhile(DeadLetterQueue):
    """A queue whose get() is followed at once by another caller's replay() of that letter."""

    other: str | None = None

    async def get(self, entry_id: str) -> DeadLetter:
        letter = await super().get(entry_id)
        self.other = await DeadLetterQueue(self.redis, QM, "inventory").replay(entry_id)
        return letter


async def test_two_replays_of_one_letter_send_it_once(conn: Any) -> None:
    """Of two replays of one letter, the one that moves it first sends it; the other raises
    DeadLetterError and sends nothing: one new entry in all."""
    [entry_id] = await _bury(conn, 1)
    queue = _ReplayedMeanwhile(conn, QM, "inventory")
    with pytest.raises(DeadLetterError, match=f"no dead letter '{entry_id}'"):
        await queue.replay(entry_id)
    [(new_id, fields)] = await conn.xrange(MAIN)
    assert new_id.decode() == queue.other
    assert DomainAction.model_validate_json(fields[b"data"]).data == {"i": 0}
    assert await conn.xlen(DEAD) == 0


class _NextDeletedMeanwhile(DeadLetterQueue):
    """A queue where, as the first letter of a batch is moved, another caller deletes the
    second one (already in replay_all's batch)."""

    victim = ""

    async def _move_back(self, letter: DeadLetter) -> str | None:
        if self.victim:
            await self.redis.xdel(self.stream, self.victim)
            self.victim = ""
        return await super()._move_back(letter)


async def test_replay_all_skips_a_letter_deleted_after_its_batch_was_read(conn: Any) -> None:
    """replay_all() does not send, nor count, a letter of its batch deleted meanwhile."""
    ids = await _bury(conn, 3)
    queue = _NextDeletedMeanwhile(conn, QM, "inventory")
    queue.victim = ids[1]
    assert await queue.replay_all(batch=10) == 2
    entries = await conn.xrange(MAIN)
    assert [DomainAction.model_validate_json(f[b"data"]).data["i"] for _, f in entries] == [0, 2]
    assert await conn.xlen(DEAD) == 0


async def test_a_refused_replay_keeps_the_letter(conn: Any, dlq: DeadLetterQueue) -> None:
    """When Redis refuses the append (the action stream's key holds a string), replay raises
    DeadLetterError and the letter is still there, unchanged: nothing is lost."""
    [entry_id] = await _bury(conn, 1)
    await conn.set(MAIN, "not a stream")
    with pytest.raises(DeadLetterError):
        await dlq.replay(entry_id)
    assert [letter.entry_id for letter in await dlq.list()] == [entry_id]


async def test_an_oversize_letter_is_not_replayed_and_says_what_to_do(
    conn: Any, dlq: DeadLetterQueue
) -> None:
    """A letter that kept only the first bytes of an oversize entry is not replayed:
    replay() raises DeadLetterError naming its length and SHA-256 and what to do instead,
    replay_all() leaves it in place, and nothing is sent."""
    whole = b"x" * 5000
    entry_id = (await conn.xadd(DEAD, dead_letter_fields(
        data=whole, reason="oversize", error_type="PayloadTooLarge", error_message="big",
        deliveries=1, original_id="1-1", stream=MAIN, consumer="c1", max_body=100,
    ))).decode()
    with pytest.raises(DeadLetterError) as caught:
        await dlq.replay(entry_id)
    assert str(caught.value) == (
        f"dead letter {entry_id!r} kept only the first bytes of an oversize entry (5000 "
        f"bytes, sha256 {hashlib.sha256(whole).hexdigest()}): it cannot be replayed; delete "
        "it or re-send the original")
    assert await dlq.replay_all() == 0
    assert [letter.entry_id for letter in await dlq.list()] == [entry_id]
    assert await conn.xlen(MAIN) == 0


@pytest.mark.parametrize("lane", ["high", "low"])
async def test_a_letter_of_either_lane_goes_back_to_its_lane(
    conn: Any, dlq: DeadLetterQueue, lane: str
) -> None:
    """While the lanes descriptor exists, a letter buried from the high or the low lane is
    replayed into that lane, not the main stream."""
    stream = QM.get_lane_stream("inventory", lane)
    await conn.set(QM.get_lanes_key("inventory"), "high,normal,low", ex=60)
    entry_id = (await conn.xadd(DEAD, dead_letter_fields(
        data="{}", reason="rejected", error_type="E", error_message="m", deliveries=1,
        original_id="1-1", stream=stream, consumer="c1"))).decode()
    new_id = await dlq.replay(entry_id)
    assert [i.decode() for i, _ in await conn.xrange(stream)] == [new_id]
    assert await conn.xlen(MAIN) == 0


async def _count_is(dlq: DeadLetterQueue, n: int) -> bool:
    return await dlq.count() == n


async def test_dead_letter_calls_raise_library_errors_when_redis_is_down(
    fresh_redis_server: Any,
) -> None:
    """Every DeadLetterQueue call against a dead server raises DeadLetterError, not redis-py's."""
    from redis.asyncio import Redis

    redis = Redis.from_url(fresh_redis_server.url, socket_connect_timeout=1)
    dlq = DeadLetterQueue(redis, QM, "inventory")
    fresh_redis_server.kill()
    try:
        for call in (dlq.count(), dlq.list(), dlq.get("1-1"), dlq.replay("1-1"),
                     dlq.replay_all(), dlq.delete("1-1")):
            with pytest.raises(DeadLetterError, match="dead letters of service 'inventory'"):
                await call
    finally:
        await redis.aclose()


async def test_trim_dead_letters_by_length_and_age(conn: Any) -> None:
    """trim_dead_letters keeps the newest max_len letters and drops older than max_age_s."""
    now_ms = int(time.time() * 1000)
    for age_s in (7200, 5400, 60, 30, 10):
        await conn.xadd(DEAD, {"data": str(age_s)}, id=f"{now_ms - age_s * 1000}-0")
    assert await trim_dead_letters(conn, DEAD, None, 3600) == 2
    assert await trim_dead_letters(conn, DEAD, 2, None) == 1
    assert [f[b"data"] for _, f in await conn.xrange(DEAD)] == [b"30", b"10"]
    assert await trim_dead_letters(conn, DEAD, None, None) == 0


async def test_trim_dead_letters_counts_both_trims_at_the_age_boundary(conn: Any) -> None:
    """max_age_s is exact to well under a minute (a day's limit drops a letter 43 s older
    than a day and keeps one 43 s younger); with both limits the drops of each add up."""
    now_ms = int(time.time() * 1000)
    for age_s in (86_443, 86_357, 30, 20, 10):
        await conn.xadd(DEAD, {"data": str(age_s)}, id=f"{now_ms - age_s * 1000}-0")
    assert await trim_dead_letters(conn, DEAD, None, 86_400) == 1
    assert await trim_dead_letters(conn, DEAD, 2, 3600) == 2
    assert [f[b"data"] for _, f in await conn.xrange(DEAD)] == [b"20", b"10"]


def test_dead_letter_fields_keep_the_entry_and_bound_oversize() -> None:
    """Other fields are kept as field.<name>; an oversize body keeps its head, length, hash."""
    fields = dead_letter_fields(
        data=None, reason="malformed", error_type="MissingField", error_message="m",
        deliveries=1, original_id="1-1", stream=MAIN, consumer="c",
        entry={b"action": b"x", "n": "1"})
    assert (fields["data"], fields["data_missing"]) == ("", "true")
    assert (fields[b"field.action"], fields[b"field.n"]) == (b"x", "1")
    big = dead_letter_fields(
        data="é" * 100, reason="oversize", error_type="PayloadTooLarge", error_message="m" * 9000,
        deliveries=1, original_id="1-1", stream=MAIN, consumer="c", max_body=10)
    assert big["data"] == ("é" * 5).encode()
    assert (big["data_length"], big["truncated"]) == ("200", "true")
    assert len(big["error_message"]) == 2000


async def test_dead_letter_fields_never_raise_for_lone_surrogates(conn: Any) -> None:
    """A body or field name holding a lone surrogate (text decoded from bytes that were
    not UTF-8) still gives dead-letter fields, which Redis stores: the oversize body is
    measured in bytes, the field name kept as bytes."""
    odd = "\udcff" + "x" * 20
    big = dead_letter_fields(
        data=odd, reason="oversize", error_type="PayloadTooLarge", error_message="m",
        deliveries=1, original_id="1-1", stream=MAIN, consumer="c", max_body=4)
    assert big["data"] == "\udcff".encode("utf-8", "surrogatepass") + b"x"
    assert big["data_length"] == "23"
    named = dead_letter_fields(
        data="{}", reason="malformed", error_type="InvalidJSON", error_message="m",
        deliveries=1, original_id="1-1", stream=MAIN, consumer="c", entry={"\udcfftag": b"v"})
    assert named[b"field." + "\udcfftag".encode("utf-8", "surrogatepass")] == b"v"
    await conn.xadd(DEAD, big)
    await conn.xadd(DEAD, named)
    assert await conn.xlen(DEAD) == 2


async def test_dead_letter_fields_keep_other_fields_as_text_and_bound_the_error_type(
    conn: Any,
) -> None:
    """The entry's data field is not copied again as field.data; other fields' odd values
    are kept as text; error_type keeps its first 200 characters. Redis stores the result."""
    fields = dead_letter_fields(
        data=b"{}", reason="failed", error_type="E" * 300, error_message="m",
        deliveries=3, original_id="1-1", stream=MAIN, consumer="c",
        entry={b"data": b"{}", b"n": 7, "tag": "t"})
    assert b"field.data" not in fields
    assert (fields[b"field.n"], fields[b"field.tag"]) == ("7", "t")
    assert fields["error_type"] == "E" * 200
    entry_id = await conn.xadd(DEAD, fields)
    letter = await DeadLetterQueue(conn, QM, "inventory").get(entry_id.decode())
    assert letter.fields == {"n": "7", "tag": "t"}


async def test_replay_restores_non_utf8_data_and_field_names_byte_for_byte(
    bus: Any, eventually: Any
) -> None:
    """An entry whose data and a field name are not UTF-8 is buried, then replayed with
    exactly its original bytes (names and values)."""
    worker = bus.worker("inventory")
    await worker.start()
    original = {b"data": b"\xff\xfe not json", b"\xe9tag": b"\x00\xff"}
    await bus.redis.xadd(MAIN, original)
    [letter] = await eventually(lambda: worker.dead_letters.list())
    assert (letter.reason, letter.error_type) == ("malformed", "InvalidJSON")
    await worker.stop()
    new_id = await worker.dead_letters.replay(letter.entry_id)
    [(_, fields)] = await bus.redis.xrange(MAIN, min=new_id, max=new_id)
    assert fields == original
