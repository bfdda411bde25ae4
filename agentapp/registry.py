"""The runs of this process: one slot per conversation from an accepted prompt to its end, found by conversation,
cancelled from any connection of the process (or, through the group, of another), counted against the limit.

A slot exists before its run does (the agent is still being built, the run row written): a cancel that comes then
is kept and applied the moment the run exists, so "cancel" has one meaning whenever it arrives.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import leases
from .broadcast import layer_call
from .conf import app_settings
from .dbwork import db_call
from .messages import cancel_message
from .recorder import cancel_approval

if TYPE_CHECKING:
    from .runner import AgentRun


@dataclass
class Slot:
    """A conversation's run on this process, from the accepted prompt until its ``run_finished`` is sent."""

    conversation_id: str
    run: AgentRun | None = None
    cancel_requested: bool = False
    task: asyncio.Task[None] | None = None
    # The channel of the connection whose prompt started it.
    owner: str = ""

    def attach(self, run: AgentRun) -> None:
        """The run exists now: a cancel asked for before it is applied at once."""
        self.run = run
        if self.cancel_requested:
            run.cancel()

    def cancel(self) -> None:
        """Stop the run at Strands' next safe point, or as soon as it exists."""
        self.cancel_requested = True
        if self.run is not None:
            self.run.cancel()


# Every run task of the process, from an accepted prompt until it finished flushing (MAX_CONCURRENT_RUNS counts
# them), and each conversation's slot while its run streams here.
tasks: set[asyncio.Task[None]] = set()
slots: dict[str, Slot] = {}
# The last run task of each conversation still alive: the next run of the conversation waits for its broadcast.
_last_task: dict[str, asyncio.Task[None]] = {}
# Conversations for which this process saw a prompt queued: when a run of one ends, its queue is looked at.
queue_seen: set[str] = set()


def full(besides: asyncio.Task[Any] | None = None) -> bool:
    """Whether the process already runs ``MAX_CONCURRENT_RUNS`` runs (0: no limit), ``besides`` (a run ending) aside."""
    limit = app_settings.MAX_CONCURRENT_RUNS
    return bool(limit) and len(tasks - {besides}) >= limit


def slot_of(conversation_id: str) -> Slot | None:
    """The conversation's run on this process, or None."""
    return slots.get(conversation_id)


def start(conversation_id: str, work: Coroutine[Any, Any, None], slot: Slot) -> asyncio.Task[None]:
    """Run ``work`` (which drives ``slot``'s run) in a task of the process; it waits for the conversation's last run."""
    previous = _last_task.get(conversation_id)
    slots[conversation_id] = slot
    task = asyncio.create_task(_after(previous, work), name=f"agentapp-run-{conversation_id}")
    slot.task = task
    tasks.add(task)
    _last_task[conversation_id] = task
    task.add_done_callback(lambda done: _forget(conversation_id, done))
    return task


def claim(conversation_id: str, owner: str) -> Slot | None:
    """A new slot for the conversation, or None while a run of it streams on this process already."""
    if conversation_id in slots:
        return None
    return Slot(conversation_id, owner=owner)


def release(slot: Slot) -> None:
    """The run sent its end: the conversation takes a new prompt (its broadcast may still be flushing)."""
    if slots.get(slot.conversation_id) is slot:
        del slots[slot.conversation_id]


def cancel_here(conversation_id: str) -> bool:
    """Cancel the conversation's run if it runs on this process; False if it does not."""
    slot = slots.get(conversation_id)
    if slot is None:
        return False
    slot.cancel()
    return True


async def _after(previous: asyncio.Task[None] | None, work: Coroutine[Any, Any, None]) -> None:
    if previous is not None and not previous.done():
        await asyncio.wait([previous])  # the last run may still be flushing its group broadcast
    await work


def _forget(conversation_id: str, task: asyncio.Task[None]) -> None:
    tasks.discard(task)
    if _last_task.get(conversation_id) is task:
        del _last_task[conversation_id]
    slot = slots.get(conversation_id)
    if slot is not None and slot.task is task:
        del slots[conversation_id]


### Cancel: one path for every connection ###


@dataclass(frozen=True)
class Cancelled:
    """What a cancel did: stopped a run here, asked the process running it, ended dead runs, or cleared a wait."""

    here: bool = False
    elsewhere: bool = False
    ended: tuple[str, ...] = ()
    cleared: dict[str, Any] | None = None
    # The channel of the worker running the run elsewhere ("" for a web process's run).
    worker: str = ""

    @property
    def nothing(self) -> bool:
        """Whether there was nothing to cancel."""
        return not (self.here or self.elsewhere or self.ended or self.cleared)


def _cancel_stored(conversation_id: str, user: str, other_processes: bool) -> Cancelled:
    """One database hop: runs whose process died are ended; then whether a live run streams (asked only with
    ``other_processes``, where another process may run it), else the wait for approval it cancelled."""
    state = leases.running_state(conversation_id)
    if other_processes and state.live:
        return Cancelled(elsewhere=True, ended=tuple(state.ended), worker=leases.worker_of(conversation_id))
    return Cancelled(ended=tuple(state.ended), cleared=cancel_approval(conversation_id, user))


async def cancel(conversation_id: str, user: str, layer: Any, group: str | None) -> Cancelled:
    """Cancel the conversation's run wherever it streams, else its wait for approval (cleared in ``user``'s name).

    A run of this process is stopped from memory; otherwise one database hop tells what to stop, and a run of
    another process is asked through the group (the process running it obeys, see ``cancel_here``)."""
    if cancel_here(conversation_id):
        return Cancelled(here=True)
    found = await db_call(_cancel_stored)(conversation_id, user, layer is not None)
    if found.elsewhere and group is not None:
        await layer_call(layer.group_send(group, cancel_message()), "group_send")
    if found.worker:
        await layer_call(layer.send(found.worker, cancel_message(conversation_id)), "send")
    return found
