"""Benchmark 5's anchor: a bare Channels consumer that streams a paced answer to a group over a Redis layer.

Serve with ``BENCH_FANOUT_LAYER=core|pubsub REDIS_URL=redis://... daphne bench.bare_fanout:application``. Every
socket on ``/<group>/`` joins the channel-layer group ``<group>`` and gets a ``joined`` frame; a text frame from
any socket is a prompt: the agent's deltas are merged within the same window as agentapp's broadcast
(``BROADCAST_WINDOW_SECONDS``, 30 ms from a window's first delta) and each window is one ``group_send``, which
every member's consumer writes with a bare ``send``. A frame is ``"<seq> <deltas>\\n<text>"`` (``seq`` of its
last delta); ``"<seq> done"`` ends the answer. No database, no JSON, no presence, no run log.
"""

from __future__ import annotations

import asyncio
import os
import re

from django.conf import settings

if not settings.configured:
    settings.configure(
        CHANNEL_LAYERS={
            "default": {
                "BACKEND": {
                    "core": "channels_redis.core.RedisChannelLayer",
                    "pubsub": "channels_redis.pubsub.RedisPubSubChannelLayer",
                }[os.environ.get("BENCH_FANOUT_LAYER", "core")],
                "CONFIG": {"hosts": [os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/1")]},
            }
        },
        INSTALLED_APPS=[],
        USE_TZ=True,
    )

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter

from bench.baseline import build_agent

TOKENS_PER_SECOND = float(os.environ.get("BENCH_BARE_TPS", "50"))
WINDOW_SECONDS = 0.03  # agentapp's default BROADCAST_WINDOW_SECONDS


class BareGroupConsumer(AsyncWebsocketConsumer):
    """A group member; a prompt from any member streams to the whole group."""

    group = ""
    task: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Join the group named by the path, accept, and say so."""
        self.group = "bare." + re.sub(r"[^A-Za-z0-9]", "", self.scope["path"])[:80]
        await self.channel_layer.group_add(self.group, self.channel_name)
        await self.accept()
        await self.send(text_data="joined")

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Start the answer to a prompt in a task."""
        if text_data and (self.task is None or self.task.done()):
            self.task = asyncio.create_task(self.run(text_data))

    async def run(self, prompt: str) -> None:
        """Stream the answer to the group, one ``group_send`` per window of deltas."""
        pending: list[str] = []
        seq = 0
        flusher: asyncio.Task[None] | None = None

        async def flush() -> None:
            nonlocal seq, flusher
            flusher = None
            if pending:
                texts = pending[:]
                pending.clear()
                seq += len(texts)
                await self.channel_layer.group_send(
                    self.group, {"type": "bare.frame", "text": f"{seq} {len(texts)}\n{''.join(texts)}"}
                )

        async def flush_later() -> None:
            await asyncio.sleep(WINDOW_SECONDS)
            await flush()

        async for event in build_agent(TOKENS_PER_SECOND).stream_async(prompt):
            if "data" in event:
                pending.append(event["data"])
                if flusher is None:
                    flusher = asyncio.create_task(flush_later())
        if flusher is not None:
            await flusher
        await flush()
        await self.channel_layer.group_send(self.group, {"type": "bare.frame", "text": f"{seq + 1} done"})

    async def bare_frame(self, event: dict[str, str]) -> None:
        """Write a group frame to this socket as it is."""
        await self.send(text_data=event["text"])

    async def disconnect(self, code: int) -> None:
        """Leave the group."""
        await self.channel_layer.group_discard(self.group, self.channel_name)


application = ProtocolTypeRouter({"websocket": BareGroupConsumer.as_asgi()})
