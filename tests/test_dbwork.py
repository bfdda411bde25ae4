"""Database work of connections and runs: a pool of threads where the database takes concurrent writers."""

from __future__ import annotations

import asyncio
import threading

import pytest
from django.contrib.auth import get_user_model

from agentapp import dbwork


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_run_starts_do_not_wait_for_each_other_where_the_database_allows():
    """On PostgreSQL, pool calls run at once (each waits for all the others here, which one thread could never
    do); on SQLite, one writer at a time anyway, they share Channels' database thread."""
    calls = dbwork.POOL_THREADS
    together = threading.Barrier(calls)

    def meet() -> str:
        get_user_model().objects.exists()  # a real query on the thread's own connection
        if dbwork.concurrent_writers():
            together.wait(timeout=10)
        return threading.current_thread().name

    names = await asyncio.gather(*(dbwork.db_call(meet)() for _ in range(calls)))
    if dbwork.concurrent_writers():
        assert len(set(names)) == calls and all(name.startswith("agentapp-db") for name in names)
    else:
        assert len(set(names)) == 1 and not names[0].startswith("agentapp-db")
