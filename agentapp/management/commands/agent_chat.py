"""``manage.py agent_chat "Calculate 2+2" --user ada``: stream a run in the terminal and save it like any other run.

A new conversation belongs to ``--user`` and shows in that user's list on the chat page; without ``--user`` the
command refuses to create one unless ``--no-owner`` says so. Ctrl-C stops the run at Strands' next safe point (saved
``cancelled``; a second Ctrl-C stops it at once, saved ``interrupted``), prints one line and exits with status 130.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from types import TracebackType
from typing import Any

from channels.db import database_sync_to_async
from django.contrib.auth import get_user_model
from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agentapp import protocol
from agentapp.agents import build_agent
from agentapp.conf import app_settings
from agentapp.history import load_messages
from agentapp.models import Conversation
from agentapp.multiagent import MultiAgentRun, is_team
from agentapp.recorder import ConversationBusy
from agentapp.runner import AgentRun

# Exit status after Ctrl-C, as shells report a process ended by SIGINT (128 + 2).
INTERRUPTED_EXIT_STATUS = 130


class Command(BaseCommand):
    """Runs one prompt through the configured agent, printing text, tool calls and results as they come."""

    help = "Send a prompt to the agent and stream the run in the terminal (saved to the database)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prompt", help="The prompt to send.")
        parser.add_argument("--conversation", help="UUID of a conversation to continue.")
        parser.add_argument(
            "--user",
            help="Username the run is for; a new conversation belongs to this user (default with --conversation: "
            "the conversation's owner).",
        )
        parser.add_argument(
            "--no-owner",
            action="store_true",
            help="Create a new conversation without an owner: it is saved and shown in the admin, but no one opens "
            "it on the chat page.",
        )
        parser.add_argument("--json", action="store_true", help="Print the wire frames as JSON lines.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = self._user(options["user"])
        if options["conversation"] is None and user is None and not options["no_owner"]:
            raise CommandError(
                "A new conversation needs an owner: pass --user USERNAME (it then shows in that user's list on the "
                "chat page), or --no-owner to create one that only the admin shows."
            )
        conversation = self._conversation(options["conversation"], user)
        if user is None:
            user = conversation.owner
        printer = FramePrinter(self.stdout, options["json"])
        self.ctrl_c: StopOnCtrlC | None = None
        try:
            status = asyncio.run(self._run(conversation, user, options["prompt"], printer))
        except (KeyboardInterrupt, asyncio.CancelledError):
            # Ctrl-C before the run streamed (asyncio.run's own handler), or a second one: the task was cancelled and
            # the runner saved the run as interrupted on its way out.
            self._interrupted(printer, protocol.STATUS_INTERRUPTED)
        if self.ctrl_c is not None and self.ctrl_c.presses:
            self._interrupted(printer, status)
        if status != protocol.STATUS_COMPLETED:
            raise CommandError(f"Run ended {status}.")

    def _interrupted(self, printer: FramePrinter, status: str) -> None:
        """End the command after Ctrl-C: one line on stderr, exit status 130, no traceback."""
        if not printer.as_json:
            self.stdout.write("")  # end the line the streamed text was on
        where = f"run {printer.run_id} saved as {status}" if printer.run_id else "no run was started"
        raise CommandError(f"Interrupted: {where}.", returncode=INTERRUPTED_EXIT_STATUS)

    def _user(self, username: str | None) -> Any:
        if not username:
            return None
        try:
            return get_user_model().objects.get_by_natural_key(username)
        except get_user_model().DoesNotExist:
            raise CommandError(f"No user {username!r}.") from None

    def _conversation(self, conversation_id: str | None, user: Any) -> Conversation:
        if conversation_id is None:
            return Conversation.objects.create(owner=user)
        try:
            return Conversation.objects.get(pk=conversation_id)
        except (Conversation.DoesNotExist, ValidationError, ValueError) as exc:
            raise CommandError(f"No conversation {conversation_id!r}.") from exc

    async def _run(self, conversation: Conversation, user: Any, prompt: str, printer: FramePrinter) -> str:
        history = await database_sync_to_async(load_messages)(conversation.pk)
        agent = await database_sync_to_async(build_agent)(conversation, user, history)
        run_class = MultiAgentRun if is_team(agent) else AgentRun  # a Swarm or a Graph reads the history itself
        run = run_class(agent, prompt, str(conversation.pk), printer.emit, user_id=getattr(user, "pk", None))
        try:
            with StopOnCtrlC(run) as self.ctrl_c:
                return await run.execute(time_limit=app_settings.RUN_TIME_LIMIT_SECONDS)
        except ConversationBusy:
            raise CommandError("Another run is in progress in this conversation.") from None


class StopOnCtrlC:
    """While a run streams, the first Ctrl-C asks it to stop at Strands' next safe point; a second cancels its task.

    Outside the main thread (or where the loop cannot watch signals) it does nothing and Ctrl-C keeps its default.
    """

    def __init__(self, run: AgentRun) -> None:
        self.run = run
        self.presses = 0
        self.task = asyncio.current_task()
        self.installed = False

    def __enter__(self) -> StopOnCtrlC:
        try:
            asyncio.get_running_loop().add_signal_handler(signal.SIGINT, self.pressed)
        except (ValueError, RuntimeError, NotImplementedError):
            return self
        self.installed = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        if self.installed:
            asyncio.get_running_loop().remove_signal_handler(signal.SIGINT)

    def pressed(self) -> None:
        """Called on each Ctrl-C."""
        self.presses += 1
        if self.presses == 1:
            self.run.cancel()
        elif self.task is not None:
            self.task.cancel()


class FramePrinter:
    """Renders wire frames for a terminal: text as it streams, tool calls and results marked."""

    def __init__(self, out: Any, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.announced_tools: set[str] = set()
        self.run_id = ""

    async def emit(self, frame: dict[str, Any]) -> None:
        """Print one frame."""
        if frame["type"] == protocol.RUN_STARTED:
            self.run_id = str(frame["run_id"])
        if self.as_json:
            self.out.write(protocol.encode_frame(frame))
            return
        kind = frame["type"]
        if kind == protocol.RUN_STARTED:
            self.out.write(f"conversation {frame['conversation_id']}  run {frame['run_id']}")
        elif kind == protocol.DATA:
            self.out.write(frame["data"], ending="")
            self.out.flush()
        elif kind == protocol.MESSAGE and frame["message"]["role"] == "assistant":
            for block in frame["message"]["content"]:
                tool_use = block.get("toolUse")
                if tool_use:
                    self.out.write(f"\n[tool] {tool_use['name']} {tool_use['input']}")
        elif kind == protocol.TOOL_RESULT:
            result = frame["tool_result"]
            texts = " ".join(str(item.get("text", item.get("json", ""))) for item in result["content"])
            self.out.write(f"[{result['status']}] {result['name']}: {texts}")
        elif kind == protocol.ERROR:
            self.out.write(f"\n[error {frame['code']}] {frame['message']}")
        elif kind == protocol.RUN_FINISHED:
            self.out.write(f"\n[run {frame['status']}] stop reason: {frame['stop_reason']}")
        if sys.stdout.isatty():
            self.out.flush()
