"""Persistence of one run: the prompt at start, each message as it completes, the outcome at the end.

Writes go through one queue drained by a writer task, so the stream never waits on the database and
the number of statements follows messages, not tokens.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from typing import Any

from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from . import heartbeat, leases, quotas, usage
from .dbwork import db_call
from .history import INTERRUPTED_TOOL_TEXT, UNANSWERED_NOTE, asks, error_results_for, orphan_tool_uses
from .models import Conversation, Message, Run
from .protocol import DATA, STATUS_AWAITING_APPROVAL, STATUS_FAILED, from_storable, tool_results_in
from .storable import storable, storable_text
from .transcript import write_message

logger = logging.getLogger(__name__)

TITLE_CHARS = 80


class ConversationBusy(Exception):
    """Another run of the conversation is still in progress; ``code`` is the error code for the client."""

    code = "busy"


class AwaitingApproval(ConversationBusy):
    """The conversation's last run waits for a tool approval: only an ``interrupt_response`` (or cancel) goes on."""

    code = "awaiting_approval"


class NoPendingApproval(ConversationBusy):
    """The approval being answered is no longer pending (answered or cancelled meanwhile)."""

    code = "no_pending_approval"


class RateLimited(ConversationBusy):
    """The user started ``RUNS_PER_USER_PER_MINUTE`` runs in the last minute."""

    code = "rate_limited"


class QuotaExceeded(ConversationBusy):
    """The user spent a token or cost budget of theirs (agentapp.quotas); ``message`` and ``resets_at`` say more."""

    code = "quota_exceeded"

    def __init__(self, message: str, resets_at: str) -> None:
        super().__init__(message)
        self.message = message
        self.resets_at = resets_at


class AgentUnavailable(Exception):
    """The agent could not be made ready for a run (its factory or its history failed); ``__cause__`` says why."""


RATE_WINDOW_SECONDS = 60
CANCELLED_APPROVAL_TEXT = "Not run: the run was cancelled while this tool call waited for approval."


### Synchronous writes (run in Channels' database thread) ###


def create_run(
    conversation_id: Any,
    run_id: Any,
    user_id: Any,
    prompt: str,
    resume_of: str | None = None,
    decisions: Mapping[str, Any] | None = None,
    runs_per_minute: int = 0,
    prompt_altered: bool = False,
    ended: list[str] | None = None,
    claimed: bool = False,
    references: list[dict[str, Any]] | None = None,
) -> int:
    """Insert the Run and its prompt message (none for a resume); return the next free message position.

    Raises ConversationBusy while another run is in progress; a running run whose lease lapsed died with its
    process and is ended first (``leases.end_dead_runs``). While a run awaits approval, only its resume
    (``resume_of``, answered with ``decisions``) may start: a prompt raises AwaitingApproval, a resume of anything
    else NoPendingApproval. A user past ``runs_per_minute`` prompts (0: no limit) gets RateLimited, and one who spent a
    budget of theirs (agentapp.quotas) QuotaExceeded. The ids of dead runs ended on the way are added to ``ended``.
    A ``claimed`` run's row exists already (a queued run a worker took, agentapp.queueing): it is not inserted again.
    The prompt message keeps a ``{"attachment": reference}`` block per attachment of ``references``, not its bytes.
    """
    with transaction.atomic():
        titles = Conversation.objects.select_for_update().filter(pk=conversation_id).values_list("title", flat=True)
        untitled = titles.first() == ""
        open_runs = list(
            Run.objects.filter(
                conversation_id=conversation_id, status__in=[Run.Status.RUNNING, Run.Status.AWAITING_APPROVAL]
            )
            .exclude(pk=run_id)
            .values_list("id", "status", "started_at", "heartbeat_at")
        )
        cutoff = leases.lapsed_before()
        alive = [
            leases.is_alive(heartbeat, started, cutoff)
            for _, status, started, heartbeat in open_runs
            if status == Run.Status.RUNNING
        ]
        if any(alive):
            raise ConversationBusy(str(conversation_id))
        if alive:
            dead = leases.end_dead_runs(conversation_id)
            if ended is not None:
                ended.extend(dead)
        paused = next((pk for pk, status, _, _ in open_runs if status == Run.Status.AWAITING_APPROVAL), None)
        if resume_of is None and paused is not None:
            raise AwaitingApproval(str(conversation_id))
        if resume_of is not None and (paused is None or str(paused) != str(resume_of)):
            raise NoPendingApproval(str(conversation_id))
        if resume_of is None and user_id is not None and runs_per_minute > 0:
            since = timezone.now() - timedelta(seconds=RATE_WINDOW_SECONDS)
            recent = Run.objects.filter(user_id=user_id, started_at__gte=since).exclude(pk=run_id)
            ran = recent.exclude(status=Run.Status.QUEUED).exclude(
                status=Run.Status.FAILED, queued_at__isnull=False, messages__isnull=True
            )
            if ran.count() >= runs_per_minute:
                raise RateLimited(str(conversation_id))
        if resume_of is None and user_id is not None:
            spent = quotas.spent_budget(user_id)
            if spent is not None:
                raise QuotaExceeded(spent.message, spent.resets_at.isoformat())
        top = Message.objects.filter(conversation_id=conversation_id).aggregate(top=Max("position"))["top"]
        position = 0 if top is None else top + 1
        if claimed:
            Run.objects.filter(pk=run_id).update(heartbeat_at=timezone.now())
        else:
            Run.objects.create(
                id=run_id,
                conversation_id=conversation_id,
                user_id=user_id,
                prompt=prompt,
                resumed_from_id=resume_of,
                heartbeat_at=timezone.now(),
            )
        if resume_of is not None:
            Run.objects.filter(pk=resume_of).update(
                status=Run.Status.COMPLETED,
                decisions=storable(dict(decisions or {}))[0],  # the answers' text is the user's
                interrupts=[],
                interrupt_state={},
            )
            return position
        Message.objects.create(
            conversation_id=conversation_id,
            run_id=run_id,
            position=position,
            role=Message.Role.USER,
            content=[{"text": prompt}, *({"attachment": reference} for reference in references or [])],
            altered=prompt_altered,
        )
        if untitled:
            Conversation.objects.filter(pk=conversation_id, title="").update(title=prompt[:TITLE_CHARS])
    return position + 1


def run_in_progress(conversation_id: Any) -> bool:
    """Whether a live process is running a prompt of the conversation (dead runs found are ended on the way)."""
    return leases.running_state(conversation_id).live


def pending_approval(conversation_id: Any) -> dict[str, Any] | None:
    """The run awaiting approval: ``{"run_id", "interrupts", "state"}``, or None."""
    row = (
        Run.objects.filter(conversation_id=conversation_id, status=Run.Status.AWAITING_APPROVAL)
        .values("id", "interrupts", "interrupt_state")
        .first()
    )
    if row is None:
        return None
    return {"run_id": str(row["id"]), "interrupts": row["interrupts"], "state": row["interrupt_state"]}


def cancel_approval(conversation_id: Any, user_label: str) -> dict[str, Any] | None:
    """End the wait for approval: the run becomes cancelled and its pending tool uses get error results.

    Returns ``{"run_id", "interrupts"}`` of the cleared wait, or None when nothing was waiting.
    """
    with transaction.atomic():
        Conversation.objects.select_for_update().filter(pk=conversation_id).first()
        run = Run.objects.filter(conversation_id=conversation_id, status=Run.Status.AWAITING_APPROVAL).first()
        if run is None:
            return None
        rows = list(
            Message.objects.filter(conversation_id=conversation_id)
            .order_by("-position")
            .values_list("position", "role", "content")[:8]
        )
        messages = [{"role": role, "content": from_storable(content)} for _, role, content in reversed(rows)]
        orphans = orphan_tool_uses(messages)
        if orphans:
            calls = {
                str(use.get("toolUseId", "")): {"name": use.get("name", ""), "input": use.get("input")}
                for use in orphans
            }
            write_message(
                conversation_id,
                run.pk,
                rows[0][0] + 1,
                error_results_for(orphans, CANCELLED_APPROVAL_TEXT),
                False,
                calls,
            )
        Run.objects.filter(resumed_from_id=run.pk, status=Run.Status.QUEUED).update(
            status=Run.Status.CANCELLED, error="Cancelled while queued.", finished_at=timezone.now()
        )
        Run.objects.filter(pk=run.pk).update(
            status=Run.Status.CANCELLED,
            decisions={"cancelled_by": user_label},
            interrupts=[],
            interrupt_state={},
            error="Cancelled while awaiting approval.",
        )
    return {"run_id": str(run.pk), "interrupts": run.interrupts}


def finish_run(run_id: Any, conversation_id: Any, outcome: Mapping[str, Any]) -> None:
    """Record the run's status, stop reason, model, usage, cost and timing, and touch the conversation.

    ``outcome["model_id"]`` names the model, whose ``PRICING`` turns the token counts into the cost.
    """
    reported, _ = storable(outcome.get("usage") or {})
    metrics, _ = storable(outcome.get("metrics") or {})
    # Only a run still running is finished here: one whose lease lapsed was ended by another process.
    Run.objects.filter(pk=run_id, status=Run.Status.RUNNING).update(
        status=outcome["status"],
        stop_reason=storable_text(outcome.get("stop_reason", ""))[:64],
        **usage.run_usage_fields(str(outcome.get("model_id") or ""), reported),
        usage=reported,
        metrics=metrics,
        structured_output=storable(outcome.get("structured_output"))[0],
        latency_ms=outcome.get("latency_ms"),
        error=storable_text(outcome.get("error", "")),
        interrupts=storable(outcome.get("interrupts") or [])[0],
        interrupt_state=storable(outcome.get("interrupt_state") or {})[0],
        finished_at=timezone.now(),
    )
    Conversation.objects.filter(pk=conversation_id).update(updated_at=timezone.now())


### The recorder ###


class RunRecorder:
    """Follows one run (its text frames, and its agent's messages through ``agentapp.recording``) and writes it in
    order from a background writer task.

    While the run streams, the process's ticker (agentapp.heartbeat) saves the assistant text so far every
    ``PARTIAL_SAVE_SECONDS`` (one row, overwritten, then replaced by the complete message) and renews the run's lease:
    statements follow time and messages, never tokens. A write that fails is reported through ``on_trouble``, and the
    run is then failed.
    """

    def __init__(
        self,
        conversation_id: Any,
        run_id: Any,
        user_id: Any,
        prompt: str,
        resume_of: str | None = None,
        decisions: Mapping[str, Any] | None = None,
        prompt_altered: bool = False,
    ) -> None:
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.user_id = user_id
        self.prompt = prompt
        self.prompt_altered = prompt_altered
        self.resume_of = resume_of
        self.decisions = decisions
        self.runs_per_minute = 0
        self.claimed = False  # the run's row exists: a queued run taken by this process (agentapp.queueing)
        self.references: list[dict[str, Any]] = []  # the prompt's attachments (agentapp.attachments.reference)
        self.messages: list[dict[str, Any]] = [] if resume_of else [{"role": "user", "content": [{"text": prompt}]}]
        self.pending_text: list[str] = []
        self.tool_calls: dict[str, dict[str, Any]] = {}
        self.cancelling = False
        self._position = 0
        self._queue: asyncio.Queue[Callable[[], None] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._writing = False  # the writer took writes from the queue and has not finished their hop yet
        self._beat: asyncio.Event | None = None  # set once the last tick's hop that included this run ended
        self._beating = False  # registered with the ticker
        self._started_at = time.monotonic()
        self.failed_writes = 0
        # Set when the ticker found that another process ended this run as dead: its lease was lost.
        self.lease_lost = False
        # Called on the event loop when a write failed or the lease was lost; the run stops and fails.
        self.on_trouble: Callable[[str], None] | None = None
        self._draft = False  # a row at ``_position`` holds the streamed text of the message in progress
        self._text_version = 0  # deltas noted so far
        self._saved_version = 0  # deltas saved in the draft row
        # Runs of the conversation whose process died, ended when this one was stored (to be announced).
        self.ended_dead: list[str] = []
        # Set by the first message added after the prompt (or the paused call a resume answers).
        self._answered = False

    async def start(self, prepare: Callable[[], Any] | None = None) -> Any:
        """Write the Run and its prompt, then start the writer task; return what ``prepare`` returned.

        ``prepare`` runs first, in the same hop to the database thread. Raises ConversationBusy, or
        AgentUnavailable when ``prepare`` failed (no run is written then).
        """

        def begin() -> tuple[Any, int]:
            try:
                prepared = prepare() if prepare is not None else None
            except Exception as exc:
                raise AgentUnavailable(str(exc)) from exc
            ended: list[str] = []
            position = create_run(
                self.conversation_id,
                self.run_id,
                self.user_id,
                self.prompt,
                self.resume_of,
                self.decisions,
                self.runs_per_minute,
                self.prompt_altered,
                ended,
                self.claimed,
                self.references,
            )
            if ended and prepare is not None:
                prepared = prepare()  # the history it read still had the dead run's turn open
            self.ended_dead = ended
            return prepared, position

        prepared, self._position = await db_call(begin)()
        self._writer = asyncio.create_task(self._drain(), name=f"agentapp-recorder-{self.run_id}")
        heartbeat.register(self)
        self._beating = True
        return prepared

    def seed(self, message: Mapping[str, Any]) -> None:
        """Know an already stored message (the paused tool call a resume answers) without writing it again."""
        self.messages.append(dict(message))
        self._note_tool_uses(message)
        self._answered = True

    def _note_tool_uses(self, message: Mapping[str, Any]) -> None:
        """Remember each tool call of an assistant message, to name its result and give it its duration."""
        for block in message.get("content") or []:
            if isinstance(block, Mapping) and isinstance(block.get("toolUse"), Mapping):
                tool_use = block["toolUse"]
                self.tool_calls[str(tool_use.get("toolUseId", ""))] = {
                    "name": str(tool_use.get("name", "")),
                    "input": tool_use.get("input", {}),
                }

    ### What the run tells it: frames (text) and Strands hooks (agentapp.recording) ###

    def note(self, payload: Mapping[str, Any]) -> None:
        """One frame payload of the run: a text delta is kept until its message is added (or saved as a draft)."""
        if payload["type"] == DATA:
            self.pending_text.append(payload[DATA])
            self._text_version += 1

    def model_call_starts(self) -> None:
        """A model call starts: text kept from an attempt that failed (a throttle, a retry) is not the answer's."""
        if self.pending_text:
            self.pending_text = []
            self._text_version += 1

    def tool_done(self, tool_use_id: str, duration: float | None) -> None:
        """A tool call finished after ``duration`` seconds (None: it never ran); its result row carries it."""
        call = self.tool_calls.get(tool_use_id)
        if call is not None and duration is not None:
            call["duration_ms"] = int(duration * 1000)

    def added(self, message: Mapping[str, Any]) -> None:
        """The agent added a message to its history: queue it for writing, in that order.

        The prompt the run started with is already stored (``create_run``), so it is skipped.
        """
        if not self._answered and message.get("role") == "user" and next(tool_results_in(message), None) is None:
            return
        self._answered = True
        partial = False
        content = message.get("content") or []
        if message.get("role") == "assistant" and self.cancelling and not any("toolUse" in block for block in content):
            # A cancelled answer: Strands puts a placeholder in its place; keep what the user saw, if anything.
            partial = True
            if self.pending_text:
                message = {"role": "assistant", "content": [{"text": "".join(self.pending_text)}]}
        self.pending_text = []
        if message.get("role") == "assistant":
            self._note_tool_uses(message)
        self._enqueue_message(dict(message), partial)

    def enqueue(self, write: Callable[[], None]) -> None:
        """Queue a write of the run's own (a multi-agent step, agentapp.multiagent) behind those queued before it."""
        self._queue.put_nowait(write)

    def _enqueue_message(self, message: dict[str, Any], partial: bool) -> None:
        self.messages.append(message)
        position = self._position
        self._position += 1
        replace, self._draft = self._draft, False
        self._saved_version = self._text_version
        calls = {key: dict(value) for key, value in self.tool_calls.items()}
        self._queue.put_nowait(
            lambda: write_message(self.conversation_id, self.run_id, position, message, partial, calls, replace)
        )

    ### While it streams: the text so far and the lease (agentapp.heartbeat) ###

    def beat(self, done: asyncio.Event, renewing: bool) -> Callable[[], None] | None:
        """A tick of the process's ticker: the save of the text streamed since the last one, to run in its hop.

        When the writer has writes waiting or under way, the save is queued behind them instead, so the rows of this
        run are always written in order. The writer's next hop waits for ``done`` (the end of the ticker's hop) when
        that hop saves this run's text or renews its lease (``renewing``): no write, nor the outcome, overtakes it.
        """
        draft = self._draft_write()
        if draft is not None and (self._writing or not self._queue.empty()):
            self._queue.put_nowait(draft)
            draft = None
        if draft is not None or renewing:
            self._beat = done
        return draft

    def beaten(self, lost: bool, failed: bool) -> None:
        """How the ticker's hop went for this run: a failed write or a lost lease stops the run (``on_trouble``)."""
        if failed:
            self.failed_writes += 1
            self._trouble("A part of the run could not be saved.")
        elif lost:
            self.lease_lost = True
            self._trouble("Another server ended this run as stopped.")

    def _draft_write(self) -> Callable[[], None] | None:
        """The save of the assistant text streamed since the last save, in the row its message will replace."""
        if self._saved_version == self._text_version or not self.pending_text:
            return None
        self._saved_version = self._text_version
        message = {"role": "assistant", "content": [{"text": "".join(self.pending_text)}]}
        position, replace, self._draft = self._position, self._draft, True
        return lambda: write_message(self.conversation_id, self.run_id, position, message, True, {}, replace)

    ### The writer ###

    async def _drain(self) -> None:
        """Run the queued writes in order, all those waiting in one hop to the database thread.

        A hop waits for the ticker's hop that holds this run's text saved before (``beat``), never overtaking it.
        """
        while True:
            jobs = [await self._queue.get()]
            self._writing = True
            while not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            writes = [job for job in jobs if job is not None]
            if writes:
                while self._beat is not None and not self._beat.is_set():
                    await self._beat.wait()
                failed = self.failed_writes
                await db_call(self._write_all)(writes)
                if self.failed_writes > failed:
                    self._trouble("A part of the run could not be saved.")
            self._writing = False
            if len(writes) < len(jobs):
                return

    def _trouble(self, message: str) -> None:
        if self.on_trouble is not None:
            self.on_trouble(message)

    def _write_all(self, writes: list[Callable[[], None]]) -> None:
        for write in writes:
            try:
                write()
            except Exception:
                self.failed_writes += 1  # read by a later write of the same hop: the outcome's
                logger.exception("agentapp: could not save a message of run %s", self.run_id)

    async def finish(self, outcome: dict[str, Any]) -> None:
        """Save partial text, answer dangling tool uses and close an unanswered turn, then record the outcome.

        Waits for every write; a write that failed on the way turns the outcome into ``failed``.
        """
        if self._beating:
            heartbeat.unregister(self)
            self._beating = False
        if self.pending_text:
            self._enqueue_message({"role": "assistant", "content": [{"text": "".join(self.pending_text)}]}, True)
            self.pending_text = []
        # A run paused for approval leaves its tool calls open: the resume answers them.
        if outcome.get("status") != STATUS_AWAITING_APPROVAL:
            orphans = orphan_tool_uses(self.messages)
            if orphans:
                self._enqueue_message(error_results_for(orphans, INTERRUPTED_TOOL_TEXT), False)
            elif self.messages and asks(self.messages[-1]):
                self._enqueue_message({"role": "assistant", "content": [{"text": UNANSWERED_NOTE}]}, True)
        outcome.setdefault("latency_ms", int((time.monotonic() - self._started_at) * 1000))
        self._queue.put_nowait(lambda: self._finish_run(outcome))
        self._queue.put_nowait(None)
        if self._writer is not None:
            await asyncio.shield(self._writer)

    def _finish_run(self, outcome: dict[str, Any]) -> None:
        if self.failed_writes:
            outcome.update(status=STATUS_FAILED, error="A part of the run could not be saved.")
        finish_run(self.run_id, self.conversation_id, outcome)
