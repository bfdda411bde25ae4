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

from channels.db import database_sync_to_async
from django.db import transaction
from django.db.models import Max
from django.utils import timezone

from .history import INTERRUPTED_TOOL_TEXT, error_results_for, orphan_tool_uses
from .models import Conversation, Message, Run, ToolResult
from .protocol import STATUS_AWAITING_APPROVAL, from_storable, to_storable, tool_results_in

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
    stale_after_seconds: float,
    resume_of: str | None = None,
    decisions: Mapping[str, Any] | None = None,
    runs_per_minute: int = 0,
) -> int:
    """Insert the Run and its prompt message (none for a resume); return the next free message position.

    Raises ConversationBusy while another run is in progress; a run older than ``stale_after_seconds``
    is taken as abandoned by a dead process and marked interrupted. While a run awaits approval, only its
    resume (``resume_of``, answered with ``decisions``) may start: a prompt raises AwaitingApproval, a resume of
    anything else NoPendingApproval. A user past ``runs_per_minute`` prompts (0: no limit) gets RateLimited.
    """
    with transaction.atomic():
        titles = Conversation.objects.select_for_update().filter(pk=conversation_id).values_list("title", flat=True)
        untitled = titles.first() == ""
        open_runs = list(
            Run.objects.filter(
                conversation_id=conversation_id, status__in=[Run.Status.RUNNING, Run.Status.AWAITING_APPROVAL]
            ).values_list("id", "status", "started_at")
        )
        stale_before = timezone.now() - timedelta(seconds=stale_after_seconds)
        running = [(pk, started) for pk, status, started in open_runs if status == Run.Status.RUNNING]
        if stale := [pk for pk, started in running if started < stale_before]:
            Run.objects.filter(pk__in=stale).update(
                status=Run.Status.INTERRUPTED, error="Abandoned: its server stopped.", finished_at=timezone.now()
            )
        if len(stale) < len(running):
            raise ConversationBusy(str(conversation_id))
        paused = next((pk for pk, status, _ in open_runs if status == Run.Status.AWAITING_APPROVAL), None)
        if resume_of is None and paused is not None:
            raise AwaitingApproval(str(conversation_id))
        if resume_of is not None and (paused is None or str(paused) != str(resume_of)):
            raise NoPendingApproval(str(conversation_id))
        if resume_of is None and user_id is not None and runs_per_minute > 0:
            since = timezone.now() - timedelta(seconds=RATE_WINDOW_SECONDS)
            if Run.objects.filter(user_id=user_id, started_at__gte=since).count() >= runs_per_minute:
                raise RateLimited(str(conversation_id))
        top = Message.objects.filter(conversation_id=conversation_id).aggregate(top=Max("position"))["top"]
        position = 0 if top is None else top + 1
        run = Run.objects.create(
            id=run_id, conversation_id=conversation_id, user_id=user_id, prompt=prompt, resumed_from_id=resume_of
        )
        if resume_of is not None:
            Run.objects.filter(pk=resume_of).update(
                status=Run.Status.COMPLETED, decisions=dict(decisions or {}), interrupts=[], interrupt_state={}
            )
            return position
        Message.objects.create(
            conversation_id=conversation_id,
            run=run,
            position=position,
            role=Message.Role.USER,
            content=[{"text": prompt}],
        )
        if untitled:
            Conversation.objects.filter(pk=conversation_id, title="").update(title=prompt[:TITLE_CHARS])
    return position + 1


def run_in_progress(conversation_id: Any) -> bool:
    """Whether any connection or process is running a prompt of the conversation."""
    return Run.objects.filter(conversation_id=conversation_id, status=Run.Status.RUNNING).exists()


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
        Run.objects.filter(pk=run.pk).update(
            status=Run.Status.CANCELLED,
            decisions={"cancelled_by": user_label},
            interrupts=[],
            interrupt_state={},
            error="Cancelled while awaiting approval.",
        )
    return {"run_id": str(run.pk), "interrupts": run.interrupts}


def write_message(
    conversation_id: Any,
    run_id: Any,
    position: int,
    message: Mapping[str, Any],
    partial: bool,
    tool_calls: Mapping[str, dict[str, Any]],
) -> None:
    """Insert one message and, for a user-role message, a ToolResult row per toolResult block."""
    row = Message.objects.create(
        conversation_id=conversation_id,
        run_id=run_id,
        position=position,
        role=message["role"],
        content=to_storable(list(message.get("content") or [])),
        partial=partial,
    )
    results = [
        ToolResult(
            message=row,
            run_id=run_id,
            conversation_id=conversation_id,
            tool_use_id=str(result.get("toolUseId", "")),
            tool_name=tool_calls.get(str(result.get("toolUseId", "")), {}).get("name", ""),
            tool_input=to_storable(tool_calls.get(str(result.get("toolUseId", "")), {}).get("input", {})),
            status=ToolResult.Status.ERROR if result.get("status") == "error" else ToolResult.Status.SUCCESS,
            content=to_storable(list(result.get("content") or [])),
            duration_ms=tool_calls.get(str(result.get("toolUseId", "")), {}).get("duration_ms"),
        )
        for result in tool_results_in(message)
    ]
    if results:
        ToolResult.objects.bulk_create(results)


def finish_run(run_id: Any, conversation_id: Any, outcome: Mapping[str, Any]) -> None:
    """Record the run's status, stop reason, usage and timing, and touch the conversation."""
    usage = outcome.get("usage") or {}
    Run.objects.filter(pk=run_id).update(
        status=outcome["status"],
        stop_reason=outcome.get("stop_reason", "")[:64],
        input_tokens=int(usage.get("inputTokens", 0)),
        output_tokens=int(usage.get("outputTokens", 0)),
        total_tokens=int(usage.get("totalTokens", 0)),
        usage=usage,
        metrics=outcome.get("metrics") or {},
        latency_ms=outcome.get("latency_ms"),
        error=outcome.get("error", ""),
        interrupts=outcome.get("interrupts") or [],
        interrupt_state=outcome.get("interrupt_state") or {},
        finished_at=timezone.now(),
    )
    Conversation.objects.filter(pk=conversation_id).update(updated_at=timezone.now())


### The recorder ###


class RunRecorder:
    """Follows one run's events and writes them in order from a background writer task."""

    def __init__(
        self,
        conversation_id: Any,
        run_id: Any,
        user_id: Any,
        prompt: str,
        resume_of: str | None = None,
        decisions: Mapping[str, Any] | None = None,
    ) -> None:
        self.conversation_id = conversation_id
        self.run_id = run_id
        self.user_id = user_id
        self.prompt = prompt
        self.resume_of = resume_of
        self.decisions = decisions
        self.runs_per_minute = 0
        self.messages: list[dict[str, Any]] = [] if resume_of else [{"role": "user", "content": [{"text": prompt}]}]
        self.pending_text: list[str] = []
        self.tool_calls: dict[str, dict[str, Any]] = {}
        self.cancelling = False
        self._position = 0
        self._queue: asyncio.Queue[Callable[[], None] | None] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._started_at = time.monotonic()
        self.failed_writes = 0

    async def start(self, stale_after_seconds: float, prepare: Callable[[], Any] | None = None) -> Any:
        """Write the Run and its prompt, then start the writer task; return what ``prepare`` returned.

        ``prepare`` runs first, in the same hop to the database thread. Raises ConversationBusy, or
        AgentUnavailable when ``prepare`` failed (no run is written then).
        """

        def begin() -> tuple[Any, int]:
            try:
                prepared = prepare() if prepare is not None else None
            except Exception as exc:
                raise AgentUnavailable(str(exc)) from exc
            position = create_run(
                self.conversation_id,
                self.run_id,
                self.user_id,
                self.prompt,
                stale_after_seconds,
                self.resume_of,
                self.decisions,
                self.runs_per_minute,
            )
            return prepared, position

        prepared, self._position = await database_sync_to_async(begin)()
        self._writer = asyncio.create_task(self._drain(), name=f"agentapp-recorder-{self.run_id}")
        return prepared

    def seed(self, message: Mapping[str, Any]) -> None:
        """Know an already stored message (the paused tool call a resume answers) without writing it again."""
        self.messages.append(dict(message))
        self._note_tool_uses(message, time.monotonic())

    def _note_tool_uses(self, message: Mapping[str, Any], now: float) -> None:
        """Remember each tool call of an assistant message, to name and time its result."""
        for block in message.get("content") or []:
            if isinstance(block, Mapping) and isinstance(block.get("toolUse"), Mapping):
                tool_use = block["toolUse"]
                self.tool_calls[str(tool_use.get("toolUseId", ""))] = {
                    "name": str(tool_use.get("name", "")),
                    "input": tool_use.get("input", {}),
                    "started": now,
                }

    def observe(self, event: Mapping[str, Any]) -> None:
        """Note one stream_async event; complete messages are queued for writing."""
        if isinstance(event.get("data"), str):
            self.pending_text.append(event["data"])
        elif "event_loop_throttled_delay" in event:
            # Strands retries the model call from scratch: the text of the failed attempt is not part of the answer.
            self.pending_text = []
        elif isinstance(event.get("message"), Mapping):
            self._on_message(event["message"])

    def _on_message(self, message: Mapping[str, Any]) -> None:
        partial = False
        content = message.get("content") or []
        if message.get("role") == "assistant" and self.cancelling and not any("toolUse" in block for block in content):
            # A cancelled answer: Strands puts a placeholder in its place; keep what the user saw, if anything.
            partial = True
            if self.pending_text:
                message = {"role": "assistant", "content": [{"text": "".join(self.pending_text)}]}
        self.pending_text = []
        now = time.monotonic()
        if message.get("role") == "assistant":
            self._note_tool_uses(message, now)
        for result in tool_results_in(message):
            call = self.tool_calls.get(str(result.get("toolUseId", "")))
            if call is not None and "started" in call:
                call["duration_ms"] = int((now - call.pop("started")) * 1000)
        self._enqueue_message(dict(message), partial)

    def _enqueue_message(self, message: dict[str, Any], partial: bool) -> None:
        self.messages.append(message)
        position = self._position
        self._position += 1
        calls = {key: dict(value) for key, value in self.tool_calls.items()}
        self._queue.put_nowait(
            lambda: write_message(self.conversation_id, self.run_id, position, message, partial, calls)
        )

    async def _drain(self) -> None:
        """Run the queued writes in order, all those waiting in one hop to the database thread."""
        while True:
            jobs = [await self._queue.get()]
            while not self._queue.empty():
                jobs.append(self._queue.get_nowait())
            writes = [job for job in jobs if job is not None]
            if writes:
                await database_sync_to_async(self._write_all)(writes)
            if len(writes) < len(jobs):
                return

    def _write_all(self, writes: list[Callable[[], None]]) -> None:
        for write in writes:
            try:
                write()
            except Exception:
                self.failed_writes += 1
                logger.exception("agentapp: could not save a message of run %s", self.run_id)

    async def finish(self, outcome: dict[str, Any]) -> None:
        """Save partial text and answer dangling tool uses, then wait for every write and record the outcome."""
        if self.pending_text:
            self._enqueue_message({"role": "assistant", "content": [{"text": "".join(self.pending_text)}]}, True)
            self.pending_text = []
        # A run paused for approval leaves its tool calls open: the resume answers them.
        orphans = orphan_tool_uses(self.messages) if outcome.get("status") != STATUS_AWAITING_APPROVAL else []
        if orphans:
            self._enqueue_message(error_results_for(orphans, INTERRUPTED_TOOL_TEXT), False)
        outcome.setdefault("latency_ms", int((time.monotonic() - self._started_at) * 1000))
        self._queue.put_nowait(lambda: finish_run(self.run_id, self.conversation_id, outcome))
        self._queue.put_nowait(None)
        if self._writer is not None:
            await asyncio.shield(self._writer)
