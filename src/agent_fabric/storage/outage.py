"""Telling "the database cannot be reached" apart from "this write is wrong", and waiting out the first.

A running task writes checkpoints and progress. When Postgres is away for a few seconds (a
failover, a network cut) those writes fail, and that is not the agent's failure: the write waits
and is retried until the database answers again. The wait is bounded by whoever awaits it: a
task's run has its own deadline (asyncio.timeout in the runner), and shutdown cancels it. A write
that is wrong in itself (a state that does not serialise, a constraint) raises at once, as before.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator
from typing import TypeVar

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import exc as sa_exc

log = logging.getLogger(__name__)

T = TypeVar("T")

FIRST_WAIT_SECONDS = 0.1
MAX_WAIT_SECONDS = 2.0


def _causes(error: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__


def is_unreachable(error: BaseException) -> bool:
    """Whether `error` means the database could not be reached (connection refused, dropped,
    timed out), judged on the error and everything it was raised from."""
    for cause in _causes(error):
        if isinstance(cause, OSError | TimeoutError | sa_exc.DisconnectionError | sa_exc.TimeoutError):
            return True
        if isinstance(cause, sa_exc.DBAPIError) and (
            cause.connection_invalidated or isinstance(cause, sa_exc.OperationalError | sa_exc.InterfaceError)
        ):
            return True
        if isinstance(cause, asyncpg.PostgresConnectionError | asyncpg.InterfaceError):
            return True
    return False


async def write_through_outage(write: Callable[[], Awaitable[T]], *, what: str, job_id: str) -> T:
    """Run `write`; while the database is unreachable, wait and try again (no end of its own:
    the caller's deadline or cancellation ends the wait). Any other error is raised at once."""
    wait = FIRST_WAIT_SECONDS
    failed_since: float | None = None
    while True:
        try:
            result = await write()
        except Exception as error:
            if not is_unreachable(error):
                raise
            if failed_since is None:
                failed_since = asyncio.get_running_loop().time()
                log.warning(
                    "database unreachable; %s waits for it", what, extra={"job_id": job_id, "error": str(error)[:300]}
                )
            await asyncio.sleep(wait)
            wait = min(wait * 2, MAX_WAIT_SECONDS)
            continue
        if failed_since is not None:
            waited = asyncio.get_running_loop().time() - failed_since
            log.info("database back; %s written", what, extra={"job_id": job_id, "waited_s": round(waited, 3)})
        return result
