"""One-line, password-free descriptions of the errors the ``actionbus`` command can hit.

The CLI prints ``Error: <what failed>. <what to check>`` and exits non-zero; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import re

from pydantic import ValidationError
from pydantic_settings import BaseSettings
from pydantic_settings.exceptions import SettingsError
from redis.exceptions import (
    AuthenticationError,
    NoPermissionError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnError
from redis.exceptions import TimeoutError as RedisTimeoutError

from actionbus.exceptions import ActionBusError

__all__ = ["describe_error", "scrub"]

_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^@\s/]+@", re.IGNORECASE)
_QUERY_SECRET = re.compile(r"([?&;]?[\w.-]*password[\w.-]*=)[^&\s'\"]+", re.IGNORECASE)
_ACL_HINT = "Check the Redis user's ACL (README, section Security: ACL per role)."


def scrub(text: str) -> str:
    """``text`` on one line, with URL passwords and ``*password*=`` values as ``***``."""
    text = _QUERY_SECRET.sub(r"\1***", _USERINFO.sub(r"\1***@", text))
    return " ".join(text.split())


def _env_name(title: str, field: str) -> str:
    for cls in _settings_classes():
        if cls.__name__ == title:
            prefix = str(cls.model_config.get("env_prefix") or "")
            return f"{prefix}{field}".upper()
    return field.upper()


def _settings_classes() -> list[type[BaseSettings]]:
    from actionbus.config import CommonAppSettings
    from actionbus.workers.settings import WorkerSettings

    return [CommonAppSettings, WorkerSettings]


def _validation(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors(include_url=False, include_input=False):
        field = ".".join(str(part) for part in error["loc"]) or "(model)"
        where = f" (${_env_name(exc.title, field)})" if error["loc"] else ""
        problems.append(f"{field}{where}: {error['msg']}")
    return (
        f"invalid {exc.title}: {'; '.join(problems)}. Check the option, environment variable "
        "or .env entry named."
    )


def describe_error(exc: BaseException) -> str:
    """What failed and what to check, in one line, never a password."""
    if isinstance(exc, ValidationError):
        text = _validation(exc)
    elif isinstance(exc, SettingsError):
        text = (
            f"invalid settings: {exc}. Lists and mappings in environment variables are JSON, "
            'e.g. REDIS_SENTINELS=\'["10.0.0.5:26379"]\''
        )
    elif isinstance(exc, ActionBusError):
        text = str(exc)
    elif isinstance(exc, AuthenticationError):
        text = f"Redis refused the credentials ({exc}). Check the user name and password."
    elif isinstance(exc, NoPermissionError):
        text = f"Redis denied a command: {exc}. {_ACL_HINT}"
    elif isinstance(exc, RedisConnError | RedisTimeoutError | OSError):
        text = (
            f"cannot reach Redis ({type(exc).__name__}: {exc}). Check that the server runs "
            "and --url/REDIS_URL point at it."
        )
    elif isinstance(exc, ResponseError):
        text = f"Redis answered with an error: {exc}. {_ACL_HINT}"
    elif isinstance(exc, RedisError):
        text = f"Redis error {type(exc).__name__}: {exc}"
    elif isinstance(exc, ValueError):
        text = f"invalid value: {exc}. Check --url/REDIS_URL and the other options given."
    else:
        text = f"unexpected {type(exc).__name__}: {exc}. Run with --debug for the traceback."
    return scrub(text)
