"""Logging for ``actionbus worker``: the configured level and each record's ``extra`` fields.

``configure_logging("DEBUG")`` sends ``actionbus`` records to stderr as
``time LEVEL logger: message key=value…``, where the pairs are the structured fields a
record carries (``action_id``, ``action_type``, ``correlation_id``, ``duration_ms``,
``outcome``, ``service``…). Values are scrubbed of URL passwords.
"""

from __future__ import annotations

import logging

from actionbus.cli_errors import scrub

__all__ = ["ACTION_FIELDS", "KeyValueFormatter", "configure_logging"]

ACTION_FIELDS = (
    "service", "action_type", "action_id", "correlation_id", "trace_id", "duration_ms",
    "outcome", "error_type", "deliveries",
)
"""The structured fields a record about one action may carry (in this order)."""


class KeyValueFormatter(logging.Formatter):
    """``%(asctime)s LEVEL name: message`` then the record's action fields as key=value."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        pairs = [f"{key}={getattr(record, key)}" for key in ACTION_FIELDS
                 if getattr(record, key, None) is not None]
        return scrub(f"{line} {' '.join(pairs)}") if pairs else scrub(line)


def configure_logging(level: str | int) -> None:
    """Log ``actionbus`` records at ``level`` and above to stderr, with their fields."""
    handler = logging.StreamHandler()
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger("actionbus")
    for old in list(root.handlers):
        if isinstance(old.formatter, KeyValueFormatter):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    root.propagate = False
