"""The WebSocket consumer: one agent per connection, runs in a task, frames to the socket and the group."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from . import protocol
from .access import Denied, is_authenticated, open_conversation
from .agents import build_agent
from .broadcast import CANCEL_MESSAGE_TYPE, GroupBroadcaster, group_name
from .conf import app_settings
from .history import load_messages, public_history
from .recorder import ConversationBusy, run_in_progress
from .runner import AgentRun

logger = logging.getLogger(__name__)


class AgentConsumer(AsyncWebsocketConsumer):
    """Talks the agentapp wire protocol (see ``docs/protocol.md``) for one conversation."""

    conversation: Any = None
    conversation_id: str | None = None
    group: str | None = None
    agent: Any = None
    active_run: AgentRun | None = None
    run_task: asyncio.Task[None] | None = None
    # True from an accepted prompt until its run_finished is sent; the task lives on while the broadcast flushes.
    running: bool = False
    # A cancel (or disconnect) that came while the run was still starting, applied as soon as it exists.
    cancel_requested: bool = False

    ### Connection ###

    async def connect(self) -> None:
        """Authorize the user for the conversation, join its group and send its history."""
        self.user = self.scope.get("user")
        session_key = await self._session_key()
        conversation_id = self.scope.get("url_route", {}).get("kwargs", {}).get("conversation_id")
        opened = await database_sync_to_async(open_conversation)(self.user, session_key, conversation_id)
        await self.accept()
        if isinstance(opened, Denied):
            await self.send_frame(protocol.error_frame(None, opened.code, opened.message))
            await self.close(code=opened.close_code)
            return
        self.conversation = opened
        self.conversation_id = str(opened.pk)
        self.group = group_name(self.conversation_id)
        if self.channel_layer is not None:
            await self.channel_layer.group_add(self.group, self.channel_name)
        history = await database_sync_to_async(public_history)(opened.pk, app_settings.HISTORY_FRAME_MESSAGES)
        await self.send_frame(
            {
                "type": protocol.CONVERSATION,
                "conversation_id": self.conversation_id,
                "title": opened.title,
                "messages": history,
            }
        )

    async def _session_key(self) -> str | None:
        session = self.scope.get("session")
        if session is None or is_authenticated(self.scope.get("user")):
            return None
        if not session.session_key and app_settings.ALLOW_ANONYMOUS:
            await database_sync_to_async(session.save)()
        return session.session_key

    async def disconnect(self, code: int) -> None:
        """Stop this connection's run (its stream is closed and the run saved), then leave the group."""
        self.cancel_requested = True
        if self.active_run is not None:
            self.active_run.cancel()
        if self.run_task is not None:
            await asyncio.shield(self.run_task)
        if self.group and self.channel_layer is not None:
            await self.channel_layer.group_discard(self.group, self.channel_name)

    ### Client frames ###

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Validate a client frame and dispatch it; bad frames get an ``error`` frame, never a traceback."""
        if self.conversation_id is None:
            return
        try:
            frame = protocol.parse_client_frame(
                text_data, bytes_data, app_settings.MAX_FRAME_BYTES, app_settings.MAX_PROMPT_CHARS
            )
        except protocol.ProtocolError as error:
            await self.send_error(error.code, error.message)
            return
        if frame.type == protocol.CLIENT_PROMPT:
            await self.start_run(frame.prompt)
        elif frame.type == protocol.CLIENT_CANCEL:
            await self.request_cancel()

    async def start_run(self, prompt: str) -> None:
        """Start a run in a task, so this consumer keeps reading frames (a cancel) while it streams."""
        if self.running:
            await self.send_error(protocol.ERR_BUSY, "A run is already in progress on this connection.")
            return
        self.running = True
        self.cancel_requested = False
        self.run_task = asyncio.create_task(
            self._run(prompt, self.run_task), name=f"agentapp-run-{self.conversation_id}"
        )

    async def request_cancel(self) -> None:
        """Cancel the conversation's active run, here or on any other connection to it."""
        if self.active_run is not None:
            self.active_run.cancel()
        elif self.running:
            self.cancel_requested = True
        elif self.channel_layer is not None and await database_sync_to_async(run_in_progress)(self.conversation_id):
            await self.channel_layer.group_send(self.group, {"type": CANCEL_MESSAGE_TYPE})
        else:
            await self.send_error(protocol.ERR_NO_ACTIVE_RUN, "There is no run to cancel.")

    ### The run ###

    async def _run(self, prompt: str, previous: asyncio.Task[None] | None) -> None:
        if previous is not None:
            await asyncio.wait([previous])  # the last run may still be flushing its group broadcast
        user_id = self.user.pk if is_authenticated(self.user) else None
        try:
            history = await database_sync_to_async(load_messages)(self.conversation_id)
            if self.agent is None:
                self.agent = await database_sync_to_async(build_agent)(self.conversation, self.user, history)
            else:
                self.agent.messages = history
        except Exception:
            logger.exception("agentapp: could not build the agent for %s", self.conversation_id)
            self.running = False
            await self.send_error(protocol.ERR_RUN_FAILED, "The agent could not be started.")
            return
        broadcaster = None
        if self.channel_layer is not None:
            broadcaster = GroupBroadcaster(
                self.channel_layer, self.group, self.channel_name, app_settings.BROADCAST_WINDOW_SECONDS
            )

        async def emit(frame: dict[str, Any]) -> None:
            await self.send_frame(frame)
            if broadcaster is not None:
                broadcaster.publish(frame)

        run = AgentRun(self.agent, prompt, self.conversation_id, emit, user_id=user_id)
        self.active_run = run
        if self.cancel_requested:
            run.cancel()
        try:
            await run.execute(time_limit=app_settings.RUN_TIME_LIMIT_SECONDS)
        except ConversationBusy:
            self.running = False
            await self.send_error(protocol.ERR_BUSY, "Another run is in progress in this conversation.")
        finally:
            self.active_run = None
            self.running = False
            if broadcaster is not None:
                await broadcaster.close()

    ### Group messages ###

    async def agentapp_frame(self, message: dict[str, Any]) -> None:
        """A frame of a run started on another connection to this conversation."""
        if message.get("origin") != self.channel_name:
            await self.send_frame(message["frame"])

    async def agentapp_cancel(self, message: dict[str, Any]) -> None:
        """Another connection asked to cancel the conversation's run; the one running it obeys."""
        if self.active_run is not None:
            self.active_run.cancel()

    ### Sending ###

    async def send_frame(self, frame: dict[str, Any]) -> None:
        """Send one frame as JSON text; a socket that is already gone is ignored."""
        try:
            await self.send(text_data=protocol.encode_frame(frame))
        except Exception:
            logger.debug("agentapp: dropped a frame for a closed socket", exc_info=True)

    async def send_error(self, code: str, message: str) -> None:
        """Send an ``error`` frame outside any run."""
        await self.send_frame(protocol.error_frame(self.conversation_id, code, message))
