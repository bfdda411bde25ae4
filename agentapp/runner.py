"""One run of an agent: drive ``stream_async``, turn events into frames, hand them on, record them.

The path of an event reads top to bottom: agent stream -> frames (``protocol.RunFrames``, the whitelist) -> the
recorder (its text) and emit (socket, log, group). The recorder gets the agent's messages from Strands hooks
(agentapp.recording). The stream is always closed, whatever ends the run.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from strands import Agent
from strands.types.exceptions import ContextWindowOverflowException, ModelThrottledException

from . import approvals, protocol, tracing, usage
from .history import prompt_input
from .recorder import AgentUnavailable, ConversationBusy, RunRecorder
from .recording import recording_of
from .storable import storable

logger = logging.getLogger(__name__)

Emit = Callable[[dict[str, Any]], Awaitable[None]]

_FAILURE_CODES: dict[type[BaseException], tuple[str, str]] = {
    ModelThrottledException: (protocol.ERR_MODEL_THROTTLED, "The model is throttling requests; try again shortly."),
    ContextWindowOverflowException: (protocol.ERR_RUN_FAILED, "The conversation no longer fits the model's context."),
}


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """An error code and a client-safe message for an exception that ended a run.

    Strands wraps some model errors (a throttle after a tool round) in EventLoopException, so the causes count too.
    """
    cause: BaseException | None = exc
    while cause is not None:
        for kind, described in _FAILURE_CODES.items():
            if isinstance(cause, kind):
                return described
        cause = cause.__cause__
    return protocol.ERR_RUN_FAILED, f"The agent run failed ({type(exc).__name__})."


@dataclass
class AgentRun:
    """A prompt sent to an agent, streamed to ``emit`` frame by frame and saved by a recorder.

    ``prepare``, when given, returns the agent to run (built, or given the stored history) and is called in the
    database thread in the hop that writes the run; ``agent`` may then be None until it has run.
    """

    agent: Agent | None
    prompt: str
    conversation_id: str
    emit: Emit
    user_id: Any = None
    run_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    cancel_signal: threading.Event = field(default_factory=threading.Event)
    # A resume of a run paused for approval: its id and the answers {interrupt id: {"decision", "text", "user"}}.
    # The agent must hold that run's restored interrupt state (``approvals.restore_state``).
    resume_of: str | None = None
    responses: dict[str, dict[str, str]] | None = None
    runs_per_minute: int = 0
    prepare: Callable[[], Agent] | None = None
    # Told the id of each run whose process died and that this run's start ended (its watchers await its end).
    announce_dead: Callable[[str], Awaitable[None]] | None = None
    # The run's row exists already: a queued run this process claimed (agentapp.queueing).
    claimed: bool = False
    # The prompt's attachments (``attachments.PromptAttachment``): blocks for the model, references for the rest.
    attachments: list[Any] = field(default_factory=list)

    def __post_init__(self) -> None:
        # Text a database cannot store (NUL, lone surrogates) is replaced before the model or anyone sees it.
        self.prompt, altered = storable(self.prompt)
        self.frames = protocol.RunFrames(self.conversation_id, self.run_id)
        self.recorder = RunRecorder(
            self.conversation_id, self.run_id, self.user_id, self.prompt, self.resume_of, self.responses, altered
        )
        self.recorder.runs_per_minute = self.runs_per_minute
        self.recorder.claimed = self.claimed
        self.recorder.references = [attachment.reference for attachment in self.attachments]
        self.recorder.on_trouble = self._fail_with
        self.status = protocol.STATUS_COMPLETED
        self.stop_reason = ""
        self.timed_out = ""
        self.trouble = ""

    def _fail_with(self, message: str) -> None:
        """Stop the run because it can no longer be recorded; it ends ``failed`` with a ``storage_failed`` error."""
        if not self.trouble:
            self.trouble = message
            self.cancel()

    def cancel(self) -> None:
        """Ask the run to stop at Strands' next safe point."""
        self.recorder.cancelling = True
        self.cancel_signal.set()

    def _time_out(self, limit: float) -> None:
        self.timed_out = f"The run exceeded its time limit of {limit:g} seconds."
        self.cancel()

    async def _send(self, payload: dict[str, Any]) -> None:
        self.recorder.note(payload)
        await self.emit(self.frames.frame(payload))

    async def execute(self, time_limit: float) -> str:
        """Run to the end and return the final status; raises only ConversationBusy or AgentUnavailable, first.

        Whatever goes wrong after the run is stored reaches the client as an ``error`` frame, then ``run_finished``.
        """
        try:
            prepared = await self.recorder.start(prepare=self.prepare)
        except (ConversationBusy, AgentUnavailable):
            raise
        except Exception as exc:
            logger.exception("agentapp: run %s could not be stored", self.run_id)
            raise AgentUnavailable("The run could not be stored.") from exc
        if prepared is not None:
            self.agent = prepared
        tracing.tag_run(self.agent, self.conversation_id, self.run_id, self.user_id)  # spans name the run
        recording = recording_of(self.agent)
        recording.recorder = self.recorder  # the agent's messages and tool calls reach the recorder (hooks)
        outcome: dict[str, Any] = {}
        timer = asyncio.get_running_loop().call_later(time_limit, self._time_out, time_limit)
        stream = None
        try:
            # Inside the try: the run is stored now, and whatever happens next, it is finished and saved.
            if self.announce_dead is not None:
                for run_id in self.recorder.ended_dead:
                    await self.announce_dead(run_id)
            await self._send(self._started())
            stream = self.agent.stream_async(self._input(), cancel_signal=self.cancel_signal)
            async for event in stream:
                await self._forward(event, outcome)
            self._settle(outcome)
        except asyncio.CancelledError:
            self.status = protocol.STATUS_INTERRUPTED
            outcome["error"] = "The server stopped the run."
            await self._close(stream, outcome)
            raise
        except Exception as exc:
            logger.exception("agentapp: run %s failed", self.run_id)
            code, message = describe_failure(exc)
            self.status = protocol.STATUS_FAILED
            outcome["error"] = message
            await self._send({"type": protocol.ERROR, "code": code, "message": message})
        finally:
            timer.cancel()
        await self._close(stream, outcome)
        return self.status

    def _started(self) -> dict[str, Any]:
        """The ``run_started`` payload (with the answers, for a resume)."""
        started: dict[str, Any] = {"type": protocol.RUN_STARTED, "prompt": self.prompt}
        if self.attachments:
            started["attachments"] = [attachment.reference for attachment in self.attachments]
        if self.resume_of is not None:
            started.update(resumes=self.resume_of, responses=self.responses)
        return started

    def _input(self) -> Any:
        """What ``stream_async`` is given: the prompt, or for a resume the answers to the paused tool calls."""
        if self.resume_of is None:
            return prompt_input(self.agent.messages, self.prompt, [attachment.block for attachment in self.attachments])
        if self.agent.messages:
            paused = self.agent.messages[-1]
            self.recorder.seed(paused)
            self.frames.know_tool_uses(paused)
        return approvals.responses_prompt(self.responses or {})

    def _settle(self, outcome: dict[str, Any]) -> None:
        """Work out how a stream that ended without raising ended: time limit, cancel, approval or completion."""
        if self.trouble:
            self.status = protocol.STATUS_FAILED  # its error frame follows the last writes (see _close)
            outcome["error"] = self.trouble
        elif self.timed_out:
            self.status = protocol.STATUS_FAILED
            outcome["error"] = self.timed_out
            outcome["error_frame"] = (protocol.ERR_TIME_LIMIT, self.timed_out)
        elif self.cancel_signal.is_set() or self.stop_reason == "cancelled":
            self.status = protocol.STATUS_CANCELLED
        elif self.stop_reason == "interrupt":
            self.status = protocol.STATUS_AWAITING_APPROVAL
            outcome.update(
                interrupts=approvals.interrupt_payloads(self.agent),
                interrupt_state=approvals.export_state(self.agent),
            )

    async def _forward(self, event: dict[str, Any], outcome: dict[str, Any]) -> None:
        if "tool_interrupt_event" in event:
            await self._send({"type": protocol.INTERRUPT, "interrupts": approvals.interrupt_payloads(event)})
        for payload in self.frames.payloads(event):
            if payload["type"] == protocol.RESULT:
                self.stop_reason = payload[protocol.RESULT]["stop_reason"]
                outcome.update(
                    usage=payload[protocol.RESULT]["usage"],
                    metrics=payload[protocol.RESULT]["metrics"],
                    stop_reason=self.stop_reason,
                    structured_output=payload[protocol.RESULT].get("structured_output"),
                )
            await self._send(payload)

    async def _close(self, stream: Any, outcome: dict[str, Any]) -> None:
        if stream is not None:
            try:
                await stream.aclose()
            except Exception:
                logger.exception("agentapp: closing the stream of run %s failed", self.run_id)
        recording = recording_of(self.agent)
        if recording.recorder is self.recorder:
            recording.recorder = None  # the agent's next run has a recorder of its own
        outcome["status"] = self.status
        outcome.setdefault("stop_reason", self.stop_reason)
        outcome["model_id"] = usage.model_id_of(self.agent)  # priced by PRICING (agentapp.usage)
        error_frame = outcome.pop("error_frame", None)
        if error_frame is not None:
            await self._send({"type": protocol.ERROR, "code": error_frame[0], "message": error_frame[1]})
        await self.recorder.finish(outcome)
        if self.trouble or self.recorder.failed_writes:
            # The record is incomplete: say so, whatever else ended the run.
            self.status = protocol.STATUS_FAILED
            message = self.trouble or "A part of the run could not be saved."
            await self._send({"type": protocol.ERROR, "code": protocol.ERR_STORAGE_FAILED, "message": message})
        await self._send(
            {"type": protocol.RUN_FINISHED, "status": self.status, "stop_reason": outcome.get("stop_reason", "")}
        )
