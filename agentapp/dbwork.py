"""Database work of connections and runs, off Channels' single database thread where the database allows.

Channels runs every ``database_sync_to_async`` call of a process on one thread, so one slow query (or a burst of
run starts) holds up every other. On a database that takes concurrent writers (PostgreSQL) this work goes to a
small pool of threads instead, each keeping its connection for ``CONN_MAX_AGE``; on SQLite, which takes one writer
at a time anyway, it stays on that one thread.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from channels.db import DatabaseSyncToAsync, database_sync_to_async
from django.db import connections

P = ParamSpec("P")
R = TypeVar("R")

# Threads of the pool on databases with concurrent writers.
POOL_THREADS = 4

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def concurrent_writers() -> bool:
    """Whether the default database takes writes from several connections at once (not SQLite)."""
    return connections["default"].vendor != "sqlite"


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=POOL_THREADS, thread_name_prefix="agentapp-db")
        return _pool


def db_call(work: Callable[P, R]) -> Callable[P, Awaitable[R]]:
    """``work`` as a coroutine function that runs it in the pool (or Channels' database thread on SQLite), closing
    stale connections around it as Channels does."""
    if not concurrent_writers():
        return database_sync_to_async(work)
    return DatabaseSyncToAsync(work, thread_sensitive=False, executor=_executor())


def close_connections() -> None:
    """Close the database connections the pool's threads keep (before a test database is dropped, say)."""
    with _pool_lock:
        pool = _pool
    if pool is None:
        return
    # One task per thread: each closes its own connections, then waits for the others, so no thread takes two.
    barrier = threading.Barrier(POOL_THREADS)

    def close_mine() -> None:
        connections.close_all()
        barrier.wait(timeout=10)

    for future in [pool.submit(close_mine) for _ in range(POOL_THREADS)]:
        future.result(timeout=15)
