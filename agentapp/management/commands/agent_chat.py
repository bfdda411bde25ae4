"""``manage.py agent_chat "Calculate 2+2"``: stream a run in the terminal and save it like any other run."""

from __future__ import annotations

import asyncio
import sys
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
from agentapp.recorder import ConversationBusy
from agentapp.runner import AgentRun


class Command(BaseCommand):
    """Runs one prompt through the configured agent, printing text, tool calls and results as they come."""

    help = "Send a prompt to the agent and stream the run in the terminal (saved to the database)."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("prompt", help="The prompt to send.")
        parser.add_argument("--conversation", help="UUID of a conversation to continue.")
        parser.add_argument("--user", help="Username that owns a new conversation (default: none).")
        parser.add_argument("--json", action="store_true", help="Print the wire frames as JSON lines.")

    def handle(self, *args: Any, **options: Any) -> None:
        user = self._user(options["user"])
        conversation = self._conversation(options["conversation"], user)
        status = asyncio.run(self._run(conversation, user, options["prompt"], options["json"]))
        if status != protocol.STATUS_COMPLETED:
            raise CommandError(f"Run ended {status}.")

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

    async def _run(self, conversation: Conversation, user: Any, prompt: str, as_json: bool) -> str:
        history = await database_sync_to_async(load_messages)(conversation.pk)
        agent = await database_sync_to_async(build_agent)(conversation, user, history)
        printer = FramePrinter(self.stdout, as_json)
        run = AgentRun(agent, prompt, str(conversation.pk), printer.emit, user_id=getattr(user, "pk", None))
        try:
            return await run.execute(time_limit=app_settings.RUN_TIME_LIMIT_SECONDS)
        except ConversationBusy:
            raise CommandError("Another run is in progress in this conversation.") from None


class FramePrinter:
    """Renders wire frames for a terminal: text as it streams, tool calls and results marked."""

    def __init__(self, out: Any, as_json: bool) -> None:
        self.out = out
        self.as_json = as_json
        self.announced_tools: set[str] = set()

    async def emit(self, frame: dict[str, Any]) -> None:
        """Print one frame."""
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
