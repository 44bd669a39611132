"""The ``actionbus`` command (``pip install 'actionbus[cli]'``): one module per command group.

    actionbus status [SERVICE] [--watch] [--json]   every service at a glance
    actionbus info SERVICE                          stream, groups, consumers (JSON)
    actionbus pending list|retry|dead-letter        entries delivered and not acknowledged
    actionbus dead-letters list|show|replay|delete|purge
    actionbus send ACTION_TYPE [--data JSON] [--wait SECONDS] [--force]
    actionbus worker MODULE:ATTRIBUTE [--concurrency N] [--processes N] [--metrics-port P]
    actionbus delayed list|cancel, actionbus schema, actionbus asyncapi

Connection settings come from the global options (``--url``, ``--environment``,
``--prefix``) or the environment (``REDIS_URL``, ``ENVIRONMENT``, ``KEY_PREFIX``…).
Any failure prints one line (``Error: what failed. what to check``, no password) and
exits 1; ``--debug`` (or ``ACTIONBUS_DEBUG=1``) shows the traceback instead.
"""

from __future__ import annotations

from actionbus.cli import basic, dashboard, entries, status, wire, worker
from actionbus.cli.app import main

__all__ = ["main"]

_COMMANDS = (basic, dashboard, entries, status, wire, worker)
