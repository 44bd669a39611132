"""``supervise()``: run a background loop so that it never dies silently.

Any ``Exception`` the loop lets out (redis-py's ``RedisClusterException``, an
``AttributeError`` from a half-closed connection, a bug of ours) is logged with its
traceback, then the loop is started again after a backoff. A loop that keeps failing with
errors that are not outages (``max_failures`` in a row), or that raises a ``BaseException``
other than cancellation, dies for good: ``on_death(exc)`` is called (the worker stops and
``run()`` raises ``WorkerFailedError``) and the exception is re-raised.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from actionbus.backoff import Backoff
from actionbus.workers.failures import is_transient

__all__ = ["supervise"]

logger = logging.getLogger("actionbus.worker")


async def supervise(
    name: str,
    loop: Callable[[], Awaitable[None]],
    *,
    on_death: Callable[[BaseException], None],
    on_error: Callable[[BaseException], Awaitable[None]] | None = None,
    max_failures: int = 5,
    backoff: Backoff | None = None,
) -> None:
    """Run ``loop()`` until it returns; restart it after failures (see the module doc).

    ``on_error(exc)`` runs after each failure (e.g. refresh a cluster client's topology);
    its own errors are logged and ignored. Outages (``is_transient``) never count towards
    ``max_failures``; a loop run that ends in an outage resets the count.
    """
    backoff = backoff or Backoff(base=0.1, cap=5.0)
    failures = 0
    while True:
        try:
            await loop()
            return
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            transient = is_transient(exc)
            failures = 0 if transient else failures + 1
            if failures >= max_failures:
                logger.critical("%s died after %d failures in a row; stopping the worker",
                                name, failures, exc_info=exc)
                on_death(exc)
                raise
            logger.error("%s failed (%s: %s); restarting it with backoff", name,
                         type(exc).__name__, exc, exc_info=not transient)
            if on_error is not None:
                try:
                    await on_error(exc)
                except Exception as hook_exc:  # the recovery hook must not kill the loop
                    logger.warning("%s: recovery after a failure failed too (%s: %s)", name,
                                   type(hook_exc).__name__, hook_exc)
            await asyncio.sleep(backoff.next_delay())
        except BaseException as exc:
            logger.critical("%s died (%s); stopping the worker", name, type(exc).__name__,
                            exc_info=exc)
            on_death(exc)
            raise
