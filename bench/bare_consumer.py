"""Baseline (c): a bare Channels consumer that runs the agent in a task and sends its text deltas as text frames.

No database, no channel layer, no JSON envelope: the prompt arrives as a text frame, the text goes out as text
frames, and a binary ``done`` frame ends the answer. Serve with ``daphne bench.bare_consumer:application``.

- ``/`` sends one frame per delta, as it comes.
- ``/?merge=1`` merges the deltas that queued while its writer was busy into one frame, the rule of agentapp's
  socket outbox (``agentapp/outbox.py``): a writer task writes what waits, all of it in one frame, and an idle
  writer sends a delta at once. A merged frame is ``"<deltas>\\n<text>"`` so that a client can count tokens.

``BENCH_BARE_TPS`` paces the offline model (tokens per second, 0 by default), as benchmark 4's servers are.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import aclosing
from urllib.parse import parse_qs

from django.conf import settings

if not settings.configured:
    settings.configure(CHANNEL_LAYERS={}, INSTALLED_APPS=[], USE_TZ=True)

from channels.generic.websocket import AsyncWebsocketConsumer
from channels.routing import ProtocolTypeRouter
from strands import Agent

from bench.baseline import build_agent

DONE = b"done"
TOKENS_PER_SECOND = float(os.environ.get("BENCH_BARE_TPS", "0"))


def wants_merge(scope: dict[str, object]) -> bool:
    """Whether the socket's query string asks for merged frames (``merge=1``)."""
    raw = scope.get("query_string") or b""
    query = parse_qs(raw.decode("latin-1") if isinstance(raw, bytes) else str(raw))
    return query.get("merge") == ["1"]


class BareAgentConsumer(AsyncWebsocketConsumer):
    """One agent per prompt, streamed frame by frame (or merged behind a busy writer, with ``?merge=1``)."""

    task: asyncio.Task[None] | None = None

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        """Start a run for the prompt in a task, so the consumer keeps reading frames meanwhile."""
        if text_data and (self.task is None or self.task.done()):
            run = self.run_merged if wants_merge(self.scope) else self.run
            self.task = asyncio.create_task(run(text_data))

    async def run(self, prompt: str) -> None:
        """Stream the agent's answer as text frames, one per delta, then the done frame."""
        agent = build_agent(TOKENS_PER_SECOND)
        async for event in agent.stream_async(prompt):
            if "data" in event:
                await self.send(text_data=event["data"])
        await self.send(bytes_data=DONE)

    async def run_merged(self, prompt: str) -> None:
        """Stream the answer through a writer that sends every delta waiting for it in one frame."""
        async with aclosing(batches(build_agent(TOKENS_PER_SECOND), prompt)) as answer:
            async for texts in answer:
                await self.send(text_data=f"{len(texts)}\n{''.join(texts)}")
        await self.send(bytes_data=DONE)

    async def disconnect(self, code: int) -> None:
        """Stop a run still streaming to a socket that is gone."""
        if self.task is not None and not self.task.done():
            self.task.cancel()


async def batches(agent: Agent, prompt: str) -> AsyncIterator[list[str]]:
    """The answer's text deltas, each batch those that queued while the caller handled the one before."""
    pending: list[str] = []
    ready = asyncio.Event()
    producer = asyncio.create_task(produce(agent, prompt, pending, ready))
    try:
        while True:
            await ready.wait()
            ready.clear()
            if pending:
                texts = pending[:]
                pending.clear()
                yield texts
            if producer.done() and not pending:
                break
        await producer  # re-raise what the agent raised
    finally:
        producer.cancel()


async def produce(agent: Agent, prompt: str, pending: list[str], ready: asyncio.Event) -> None:
    """Queue each text delta of the answer for the writer, waking it; wake it once more at the end."""
    try:
        async for event in agent.stream_async(prompt):
            if "data" in event:
                pending.append(event["data"])
                ready.set()
    finally:
        ready.set()


application = ProtocolTypeRouter({"websocket": BareAgentConsumer.as_asgi()})
