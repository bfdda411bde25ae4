"""Run leases: the process running a run renews its row's heartbeat; a run whose lease lapsed died with it.

Whichever process next touches the conversation (a prompt, a cancel, a connection, a delete) ends such a run
``interrupted`` and closes its turn, so a crash locks a conversation for ``RUN_LEASE_SECONDS`` at most.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from .conf import app_settings
from .history import INTERRUPTED_TOOL_TEXT
from .models import Conversation, Run
from .transcript import close_turn

DEAD_RUN_ERROR = "Interrupted: the server running it stopped."
DEAD_RUN_NOTE = "(No answer: the run was interrupted when the server running it stopped.)"


def renew_every() -> float:
    """Seconds between two renewals of a run's lease by its process (all its runs at once, agentapp.heartbeat)."""
    return app_settings.RUN_LEASE_SECONDS / 4


def lapsed_before(now: datetime | None = None) -> datetime:
    """A running run whose last heartbeat is older than this has no live owner."""
    return (now or timezone.now()) - timedelta(seconds=app_settings.RUN_LEASE_SECONDS)


def is_alive(heartbeat_at: datetime | None, started_at: datetime, cutoff: datetime) -> bool:
    """Whether a running run's owner renewed its lease since ``cutoff`` (rows from before leases count their start)."""
    return (heartbeat_at or started_at) >= cutoff


def lapsed(cutoff: datetime) -> Q:
    """Running runs whose lease lapsed before ``cutoff``."""
    return Q(status=Run.Status.RUNNING) & (
        Q(heartbeat_at__lt=cutoff) | Q(heartbeat_at__isnull=True, started_at__lt=cutoff)
    )


def renew_all(run_ids: Collection[Any]) -> set[str]:
    """Renew the leases of runs in one statement; return the ids of those no longer running (ended as dead elsewhere).

    Only a running run is renewed: one that another process ended stays ended. Finding which were not renewed takes a
    second query, only when some were not.
    """
    ids = {str(Run._meta.pk.to_python(run_id)): str(run_id) for run_id in run_ids}  # as the database gives them
    if not ids:
        return set()
    running = Run.objects.filter(pk__in=ids, status=Run.Status.RUNNING)
    if running.update(heartbeat_at=timezone.now()) == len(ids):
        return set()
    still = {str(pk) for pk in running.values_list("pk", flat=True)}
    return {given for key, given in ids.items() if key not in still}


def renew(run_id: Any) -> bool:
    """Renew one run's lease; False when the run is no longer running (another process ended it as dead)."""
    return not renew_all([run_id])


def end_dead_runs(conversation_id: Any) -> list[str]:
    """End the conversation's running runs whose lease lapsed, closing their turn; return their ids."""
    cutoff = lapsed_before()
    with transaction.atomic():
        Conversation.objects.select_for_update().filter(pk=conversation_id).first()
        dead = list(Run.objects.filter(lapsed(cutoff), conversation_id=conversation_id).values_list("pk", flat=True))
        if not dead:
            return []
        Run.objects.filter(pk__in=dead).update(
            status=Run.Status.INTERRUPTED, error=DEAD_RUN_ERROR, finished_at=timezone.now()
        )
        close_turn(conversation_id, dead[-1], INTERRUPTED_TOOL_TEXT, DEAD_RUN_NOTE)
    return [str(pk) for pk in dead]


@dataclass(frozen=True)
class RunningState:
    """What a look at a conversation's running runs found: whether a live one is left, and the dead ones ended."""

    live: bool
    ended: list[str]


def running_state(conversation_id: Any) -> RunningState:
    """Whether a live process runs a prompt of the conversation; dead runs found on the way are ended."""
    cutoff = lapsed_before()
    rows = list(
        Run.objects.filter(conversation_id=conversation_id, status=Run.Status.RUNNING).values_list(
            "heartbeat_at", "started_at"
        )
    )
    alive = [is_alive(heartbeat, started, cutoff) for heartbeat, started in rows]
    ended = end_dead_runs(conversation_id) if not all(alive) else []
    return RunningState(live=any(alive), ended=ended)


def worker_of(conversation_id: Any) -> str:
    """The channel of the worker process running the conversation's run ("" when a web process runs it)."""
    return (
        Run.objects.filter(conversation_id=conversation_id, status=Run.Status.RUNNING)
        .exclude(worker="")
        .values_list("worker", flat=True)
        .first()
        or ""
    )
