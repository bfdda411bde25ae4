"""Baseline (c): a bare Channels consumer that runs the agent in a task and sends each text delta as a text frame.

No database, no channel layer, no JSON envelope: the prompt arrives as a text frame, each ``data`` goes out
as its own text frame, and a binary ``done`` frame ends the answer. Serve with
``daphne bench.bare_consumer:application``.
"""

from __future__ import annotations

import asyncio

from django.conf import settings

if not settings.configured:
    settings.configure(CHANNEL_LAYERS={}, INSTALLED_APPS=[], USE_TZ=True)

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter

from bench.baseline import build_agent

DONE = b"done"


class BareAgentConsumer(AsyncWebsocketConsumer):
    """One agent per prompt, streamed frame by frame."""

    task: asyncio.Task[None] | None = None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Start a run for the prompt in a task, so the consumer keeps reading frames meanwhile."""
        if text_data and (self.task is None or self.task.done()):
            self.task = asyncio.create_task(self.run(text_data))

    async def run(self, prompt: str) -> None:
        """Stream the agent's answer as text frames, then the done frame."""
        agent = build_agent()
        async for event in agent.stream_async(prompt):
            if "data" in event:
                await self.send(text_data=event["data"])
        await self.send(bytes_data=DONE)

    async def disconnect(self, code: int) -> None:
        """Stop a run still streaming to a socket that is gone."""
        if self.task is not None and not self.task.done():
            self.task.cancel()


application = ProtocolTypeRouter({"websocket": BareAgentConsumer.as_asgi()})
