"""Timings' outcomes view (workers/timings.py): what the metrics and status read."""

from __future__ import annotations

import pytest

from actionbus.workers.timings import HANDLED, Timings


def test_one_handled_run_is_one_entry_of_the_outcomes_view() -> None:
    """A type with a single handled run shows as one (type, "handled") entry counting 1."""
    timings = Timings()
    timings.observe("inventory.x.y", HANDLED, 0.001)
    assert len(timings.outcomes) == 1
    assert dict(timings.outcomes) == {("inventory.x.y", HANDLED): 1}


def test_a_missing_outcome_raises_a_key_error_naming_the_key() -> None:
    """Asking for "handled" of a type that only failed raises KeyError with that key."""
    timings = Timings()
    timings.observe("inventory.x.y", "failed", 0.001)
    with pytest.raises(KeyError) as missing:
        timings.outcomes["inventory.x.y", HANDLED]
    assert missing.value.args == (("inventory.x.y", HANDLED),)
