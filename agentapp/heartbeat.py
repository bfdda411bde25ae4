"""One ticker per event loop for all its live runs: each tick renews their leases and saves their streamed text.

A tick is one hop to Channels' database thread, whatever the number of runs: one UPDATE renews every lease
(``leases.renew_all``) and the text each run streamed since its last save is written in the same hop. The ticker
runs only while a run is registered, and each event loop has its own (tests run many loops, one after another).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
import weakref
from collections.abc import Callable
from typing import Any, Protocol

from . import leases
from .conf import app_settings
from .dbwork import db_call

logger = logging.getLogger(__name__)

Write = Callable[[], None]


class Member(Protocol):
    """A live run as the ticker sees it (``recorder.RunRecorder``)."""

    run_id: Any

    def beat(self, done: asyncio.Event, renewing: bool) -> Write | None:
        """The write this tick's hop runs for the run (its streamed text), or None; ``done`` is set after the hop, which
        renews the run's lease when ``renewing``."""

    def beaten(self, lost: bool, failed: bool) -> None:
        """Told on the event loop how the hop went: the lease ``lost`` (the run ended elsewhere), a write ``failed``."""


def interval() -> float:
    """Seconds between two ticks: often enough both for the streamed text and for the leases."""
    return min(app_settings.PARTIAL_SAVE_SECONDS, leases.renew_every())


class Ticker:
    """The live runs of one event loop and the task that ticks for them while there is any."""

    def __init__(self) -> None:
        self.members: dict[str, Member] = {}
        self.task: asyncio.Task[None] | None = None
        self._sleeping = False
        self._renewed_at = time.monotonic()

    def register(self, member: Member) -> None:
        """Renew the run's lease and save its text from the next tick on; starts the ticker if it was stopped."""
        if not self.members:
            self._renewed_at = time.monotonic()  # every run registered now was stored (its lease taken) just before
        self.members[str(member.run_id)] = member
        if self.task is None:
            # A context of its own: the ticker outlives the run that started it, and whatever that run's context
            # holds (a thread-sensitive executor, tracing) is not the ticker's.
            self.task = asyncio.create_task(self._run(), name="agentapp-heartbeat", context=contextvars.Context())

    def unregister(self, member: Member) -> None:
        """Stop renewing the run's lease; the ticker stops with the last run (a hop under way still ends)."""
        self.members.pop(str(member.run_id), None)
        if not self.members and self.task is not None and self._sleeping:
            self.task.cancel()
            self.task, self._sleeping = None, False

    async def _run(self) -> None:
        me = asyncio.current_task()
        try:
            while self.members:
                self._sleeping = True
                await asyncio.sleep(interval())
                self._sleeping = False
                try:
                    await self.tick()
                except Exception:  # the ticker outlives any one tick: without it, every lease here would lapse
                    logger.exception("agentapp: a heartbeat tick failed")
        finally:
            if self.task is me:
                self.task, self._sleeping = None, False

    async def tick(self) -> None:
        """One tick: the due renewals and every run's pending text in one hop, then each run told how it went."""
        members = list(self.members.values())
        renew = time.monotonic() - self._renewed_at >= leases.renew_every()
        done = asyncio.Event()
        writes: dict[str, Write] = {}
        try:
            for member in members:
                write = member.beat(done, renew)
                if write is not None:
                    writes[str(member.run_id)] = write
            if not renew and not writes:
                return
            if renew:
                self._renewed_at = time.monotonic()
            run_ids = [str(member.run_id) for member in members] if renew else []
            try:
                lost, failed = await db_call(_hop)(run_ids, writes)
            except Exception:  # the hop itself could not run: nothing of it can be trusted to be saved
                logger.exception("agentapp: the heartbeat of %d runs failed", len(members))
                lost, failed = set(), {*run_ids, *writes}
            for member in members:
                run_id = str(member.run_id)
                member.beaten(run_id in lost, run_id in failed)
        finally:
            done.set()


def _hop(run_ids: list[str], writes: dict[str, Write]) -> tuple[set[str], set[str]]:
    """In the database thread: renew the leases and run the writes; return the runs whose lease was lost, and those
    whose renewal or write failed."""
    lost: set[str] = set()
    failed: set[str] = set()
    if run_ids:
        try:
            lost = leases.renew_all(run_ids)
        except Exception:
            logger.exception("agentapp: could not renew the leases of %d runs", len(run_ids))
            failed.update(run_ids)
    for run_id, write in writes.items():
        try:
            write()
        except Exception:
            logger.exception("agentapp: could not save the streamed text of run %s", run_id)
            failed.add(run_id)
    return lost, failed


_tickers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Ticker] = weakref.WeakKeyDictionary()


def ticker() -> Ticker:
    """The running event loop's ticker (a new loop gets a new one)."""
    loop = asyncio.get_running_loop()
    found = _tickers.get(loop)
    if found is None:
        found = _tickers[loop] = Ticker()
    return found


def register(member: Member) -> None:
    """Keep a live run's lease and streamed text saved until ``unregister``; call on the run's event loop."""
    ticker().register(member)


def unregister(member: Member) -> None:
    """The run ends: its lease is no longer renewed nor its text saved by the ticker."""
    ticker().unregister(member)
