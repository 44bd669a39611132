"""Reading replies from the wire: a valid ``DomainActionResponse`` or an ``InvalidReply``.

The client calls ``parse_reply`` on every payload popped from its response list; an
``InvalidReply`` carries the ``correlation_id`` it could still read, so the waiting call
fails at once instead of timing out.
"""

from __future__ import annotations

import json
from typing import Any

from pydantic import ValidationError

from actionbus.exceptions import InvalidReply
from actionbus.models.actions import DomainActionResponse

__all__ = ["parse_reply"]


def _correlation_id(text: str) -> str | None:
    """The payload's ``correlation_id`` as written (string or integer), if it has one."""
    try:
        payload: Any = json.loads(text)
    except ValueError:
        return None
    value = payload.get("correlation_id") if isinstance(payload, dict) else None
    if isinstance(value, bool):
        return None
    return str(value) if isinstance(value, str | int) else None


def parse_reply(raw: bytes | str) -> DomainActionResponse:
    """Validate one reply payload; ``InvalidReply`` (with raw payload and reason) if it fails."""
    text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
    try:
        return DomainActionResponse.model_validate_json(raw)
    except ValidationError as exc:
        reason = "; ".join(
            f"{'.'.join(map(str, e['loc'])) or '(reply)'}: {e['msg']}" for e in exc.errors()
        )
        raise InvalidReply(text, reason, _correlation_id(text)) from None
