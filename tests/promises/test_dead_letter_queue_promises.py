"""DeadLetterQueue reads what is stored, fills documented defaults, and bounds messages."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from actionbus import DeadLetterQueue, QueueManager
from actionbus.dead_letters import dead_letter_fields
from actionbus.exceptions import DeadLetterError

pytestmark = pytest.mark.backends


async def test_a_letter_missing_fields_reads_with_the_documented_defaults(
    conn: Any, qm: QueueManager
) -> None:
    """A dead letter written by hand with no known field reads as empty strings, reason
    'unknown' and 0 deliveries; a stored failed_at is read back as written."""
    dlq = DeadLetterQueue(conn, qm, "svc")
    await conn.xadd(dlq.stream, {"note": "hand-written"})
    await conn.xadd(dlq.stream, {"data": "{}", "failed_at": "2020-01-02T03:04:05+00:00"})
    await conn.xadd(dlq.stream, {"data": "{}", "deliveries": ""})
    bare, dated, blank = await dlq.list(count=3)
    assert blank.deliveries == 0
    assert (bare.data, bare.reason, bare.error_type, bare.error_message) == ("", "unknown", "", "")
    assert (bare.deliveries, bare.original_id, bare.stream, bare.consumer) == (0, "", "", "")
    assert dated.failed_at == datetime(2020, 1, 2, 3, 4, 5, tzinfo=UTC)
    assert [letter.entry_id for letter in await dlq.list(count=1)] == [bare.entry_id]
    assert dlq.service == "svc"


def test_error_messages_are_cut_at_2000_characters() -> None:
    """A dead letter keeps the first 2000 characters of a long error message."""
    fields = dead_letter_fields(
        data="{}", reason="rejected", error_type="E", error_message="x" * 2500, deliveries=1,
        original_id="1-0", stream="s", consumer="c",
    )
    assert fields["error_message"] == "x" * 2000


async def test_a_malformed_id_is_a_clear_error(conn: Any, qm: QueueManager) -> None:
    """get() with something that is not an entry id says what an id looks like."""
    with pytest.raises(DeadLetterError, match="is not a stream entry id"):
        await DeadLetterQueue(conn, qm, "svc").get("yesterday")


async def test_list_returns_at_most_100_by_default(conn: Any, qm: QueueManager) -> None:
    """list() without a count returns the oldest 100 dead letters."""
    dlq = DeadLetterQueue(conn, qm, "svc")
    pipe = conn.pipeline(transaction=False)
    for n in range(101):
        pipe.xadd(dlq.stream, {"data": str(n)})
    await pipe.execute()
    letters = await dlq.list()
    assert [letter.data for letter in letters] == [str(n) for n in range(100)]
