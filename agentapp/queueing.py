"""The run queue in the database: a queued Run row is a prompt waiting for its turn, or for a worker to take it.

The database is the record and the channel layer only a doorbell (agentapp.workers): a prompt is stored ``queued``
(``enqueue``), a process takes the oldest queued run of a conversation with nothing else going under a row lock on
the conversation (``claim_next``) and runs it, and a queued run leaves the queue by starting, or by a cancel
(``cancel_queued``), or when its start is refused (``refuse``). Everything here runs in the database thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from django.db import connection, transaction
from django.db.models import Min, Q
from django.utils import timezone

from . import leases, protocol
from .conf import app_settings
from .models import Conversation, Run
from .recorder import AwaitingApproval, ConversationBusy, NoPendingApproval, cancel_approval

IfBusy = Literal["reject", "enqueue", "interrupt"]
ERR_QUEUE_FULL = protocol.ERR_QUEUE_FULL
QUEUED_CANCEL_ERROR = "Cancelled while queued."


class QueueFull(ConversationBusy):
    """The conversation holds ``MAX_QUEUED_RUNS`` queued prompts already."""

    code = ERR_QUEUE_FULL


@dataclass(frozen=True)
class Queued:
    """A prompt stored as a queued run: its id, its text and how many queued runs are ahead of it."""

    run_id: str
    prompt: str
    position: int


@dataclass(frozen=True)
class Submitted:
    """What ``enqueue`` did with a prompt: queued it (or not: it may start at once, here), and what goes with it."""

    queued: Queued | None = None
    # The run going on is to be cancelled ("interrupt"), or the wait for approval that it cleared.
    interrupt: bool = False
    cleared: dict[str, Any] | None = None


@dataclass(frozen=True)
class Claimed:
    """A queued run a process took: it is ``running`` now, leased by that process, and must be run or refused."""

    run_id: str
    conversation_id: str
    user_id: Any
    prompt: str
    resume_of: str | None = None
    responses: dict[str, dict[str, str]] = field(default_factory=dict)
    resume_state: dict[str, Any] | None = None
    attachment_ids: tuple[str, ...] = ()


def _locked_conversation(conversation_id: Any, skip_locked: bool = False) -> bool:
    """Lock the conversation's row for the transaction; False when it is gone (or, ``skip_locked``, locked)."""
    rows = Conversation.objects.filter(pk=conversation_id)
    if skip_locked and connection.features.has_select_for_update_skip_locked:
        return rows.select_for_update(skip_locked=True).exists()
    return rows.select_for_update().exists()


def _live_running(conversation_id: Any, cutoff: datetime) -> bool:
    running = Run.objects.filter(conversation_id=conversation_id, status=Run.Status.RUNNING)
    return running.filter(Q(heartbeat_at__gte=cutoff) | Q(heartbeat_at__isnull=True, started_at__gte=cutoff)).exists()


def _queued(conversation_id: Any) -> Any:
    return Run.objects.filter(conversation_id=conversation_id, status=Run.Status.QUEUED).order_by("queued_at", "pk")


def enqueue(
    conversation_id: Any,
    user_id: Any,
    prompt: str,
    if_busy: IfBusy,
    always: bool,
    cancelled_by: str = "",
    resume: tuple[str, dict[str, dict[str, str]]] | None = None,
    attachment_ids: tuple[str, ...] = (),
) -> Submitted:
    """Store a prompt as a queued run when ``always`` (workers run every prompt) or when the conversation is busy
    and ``if_busy`` allows it; otherwise return an empty ``Submitted``: the caller starts the run at once.

    Raises ConversationBusy (``reject`` while a run goes on or waits queued), AwaitingApproval (a prompt while a tool
    call waits for approval, unless ``interrupt``, which cancels that wait in ``cancelled_by``'s name), QueueFull.
    A ``resume`` (the paused run's id and the answers) is queued only behind that paused run.
    """
    with transaction.atomic():
        if not _locked_conversation(conversation_id):
            raise ConversationBusy(str(conversation_id))
        live = _live_running(conversation_id, leases.lapsed_before())
        paused = (
            Run.objects.filter(conversation_id=conversation_id, status=Run.Status.AWAITING_APPROVAL)
            .values_list("pk", flat=True)
            .first()
        )
        waiting = _queued(conversation_id).count()
        cleared = None
        if resume is not None:
            if (
                paused is None
                or str(paused) != resume[0]
                or _queued(conversation_id).filter(resumed_from_id=paused).exists()
            ):
                raise NoPendingApproval(str(conversation_id))
        elif paused is not None:
            if if_busy != "interrupt":
                raise AwaitingApproval(str(conversation_id))
            cleared = cancel_approval(conversation_id, cancelled_by)
        if not always and not live and not waiting and resume is None:
            return Submitted(cleared=cleared)
        if (live or waiting) and if_busy == "reject" and resume is None:
            raise ConversationBusy(str(conversation_id))
        if resume is None and (live or waiting) and waiting >= app_settings.MAX_QUEUED_RUNS:
            raise QueueFull(str(conversation_id))
        run = Run.objects.create(
            conversation_id=conversation_id,
            user_id=user_id,
            prompt=prompt,
            status=Run.Status.QUEUED,
            queued_at=timezone.now(),
            resumed_from_id=resume[0] if resume else None,
            decisions=resume[1] if resume else {},
            attachment_ids=list(attachment_ids),
        )
    queued = Queued(str(run.pk), prompt, waiting)
    return Submitted(queued=queued, interrupt=live and if_busy == "interrupt", cleared=cleared)


def claim_next(conversation_id: Any, worker: str) -> Claimed | None:
    """Take the conversation's oldest queued run when nothing else of it goes on; None when there is none to take.

    The run becomes ``running`` under ``worker``'s lease in the same transaction, so no other process takes it. A
    conversation another process holds locked right now is skipped (PostgreSQL), not waited for.
    """
    with transaction.atomic():
        if not _locked_conversation(conversation_id, skip_locked=True):
            return None
        if _live_running(conversation_id, leases.lapsed_before()):
            return None
        paused = Run.objects.filter(conversation_id=conversation_id, status=Run.Status.AWAITING_APPROVAL).first()
        queued = _queued(conversation_id)
        # While a run waits for approval only its answer (the resume) may start, whatever was queued before it.
        head = (queued.filter(resumed_from_id=paused.pk) if paused is not None else queued).first()
        if head is None:
            return None
        now = timezone.now()
        Run.objects.filter(pk=head.pk).update(
            status=Run.Status.RUNNING, started_at=now, heartbeat_at=now, worker=worker[:200]
        )
    resume_of = str(head.resumed_from_id) if head.resumed_from_id else None
    return Claimed(
        run_id=str(head.pk),
        conversation_id=str(conversation_id),
        user_id=head.user_id,
        prompt=head.prompt,
        resume_of=resume_of,
        responses=dict(head.decisions or {}) if resume_of else {},
        resume_state=dict(paused.interrupt_state or {}) if resume_of and paused is not None else None,
        attachment_ids=tuple(str(attachment_id) for attachment_id in head.attachment_ids or ()),
    )


def waiting_conversations(limit: int) -> list[str]:
    """Conversations whose oldest queued run may start now (nothing of theirs goes on), oldest first."""
    if limit <= 0:
        return []
    cutoff = leases.lapsed_before()
    answered = Run.objects.filter(status=Run.Status.QUEUED, resumed_from__isnull=False).values("resumed_from_id")
    busy = Run.objects.filter(
        Q(status=Run.Status.AWAITING_APPROVAL) & ~Q(pk__in=answered)
        | Q(status=Run.Status.RUNNING, heartbeat_at__gte=cutoff)
        | Q(status=Run.Status.RUNNING, heartbeat_at__isnull=True, started_at__gte=cutoff)
    ).values("conversation_id")
    rows = (
        Run.objects.filter(status=Run.Status.QUEUED)
        .exclude(conversation_id__in=busy)
        .values("conversation_id")
        .annotate(first=Min("queued_at"))
        .order_by("first")[:limit]
    )
    return [str(row["conversation_id"]) for row in rows]


def end_lapsed_runs() -> list[tuple[str, str]]:
    """End every running run whose lease lapsed (its process died), closing its turn; return (conversation, run)."""
    conversations = set(
        Run.objects.filter(leases.lapsed(leases.lapsed_before())).values_list("conversation_id", flat=True)
    )
    return [
        (str(conversation_id), run_id)
        for conversation_id in conversations
        for run_id in leases.end_dead_runs(conversation_id)
    ]


def release(run_id: Any) -> None:
    """Put a claimed run that did not start back in the queue (another run of its conversation went first)."""
    Run.objects.filter(pk=run_id, status=Run.Status.RUNNING).update(status=Run.Status.QUEUED, worker="")


def refuse(run_id: Any, message: str) -> None:
    """End a claimed run whose start was refused (a limit, a quota, an agent that could not be built) as failed."""
    Run.objects.filter(pk=run_id, status=Run.Status.RUNNING).update(
        status=Run.Status.FAILED, error=message, finished_at=timezone.now()
    )


def cancel_queued(conversation_id: Any, run_id: Any, user_label: str) -> bool:
    """Take a queued run of the conversation out of the queue, in ``user_label``'s name; False if it is not queued."""
    return bool(
        Run.objects.filter(pk=run_id, conversation_id=conversation_id, status=Run.Status.QUEUED).update(
            status=Run.Status.CANCELLED,
            error=QUEUED_CANCEL_ERROR,
            decisions={"cancelled_by": user_label},
            finished_at=timezone.now(),
        )
    )


def waiting_in(conversation_id: Any) -> list[dict[str, str]]:
    """The conversation's queued prompts in order, as the ``conversation`` frame lists them."""
    return [
        {"run_id": str(pk), "prompt": prompt}
        for pk, prompt in _queued(conversation_id).filter(resumed_from__isnull=True).values_list("pk", "prompt")
    ]


def has_waiting(conversation_id: Any) -> bool:
    """Whether the conversation has a queued run."""
    return _queued(conversation_id).exists()


### Frames ###


def queued_frame(conversation_id: str, queued: Queued) -> dict[str, Any]:
    """The ``run_queued`` frame every connection of the conversation gets."""
    return {
        "type": protocol.RUN_QUEUED,
        "conversation_id": conversation_id,
        "run_id": queued.run_id,
        "prompt": queued.prompt,
        "position": queued.position,
    }


def dequeued_frame(
    conversation_id: str, run_id: str, reason: Literal["cancelled", "refused"], code: str = "", message: str = ""
) -> dict[str, Any]:
    """The ``run_dequeued`` frame: a queued run left the queue without running."""
    frame: dict[str, Any] = {
        "type": protocol.RUN_DEQUEUED,
        "conversation_id": conversation_id,
        "run_id": run_id,
        "reason": reason,
    }
    if code:
        frame.update(code=code, message=message)
    return frame
