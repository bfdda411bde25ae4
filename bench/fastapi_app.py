"""Baseline (b): the FastAPI ``StreamingResponse`` example, streaming an agent's text as a plain HTTP body.

Serve with ``uvicorn bench.fastapi_app:app``; POST the prompt as the request body to ``/stream``: each text
delta is yielded as it comes (one body chunk per delta). ``/stream?merge=1`` yields every delta that queued
while the response was writing as one chunk, the rule of agentapp's socket outbox (``agentapp/outbox.py``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from bench.bare_consumer import batches
from bench.baseline import build_agent

app = FastAPI()


@app.post("/stream")
async def stream(request: Request, merge: int = 0) -> StreamingResponse:
    """Run the prompt in the body on a fresh agent and stream its text, per delta or merged (``merge=1``)."""
    prompt = (await request.body()).decode("utf-8")
    agent = build_agent()

    async def text() -> AsyncIterator[str]:
        async for event in agent.stream_async(prompt):
            if "data" in event:
                yield event["data"]

    async def merged() -> AsyncIterator[str]:
        async with aclosing(batches(agent, prompt)) as answer:
            async for texts in answer:
                yield "".join(texts)

    return StreamingResponse(merged() if merge else text(), media_type="text/plain; charset=utf-8")
