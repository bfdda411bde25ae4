"""Baseline (b): the FastAPI ``StreamingResponse`` example, streaming an agent's text as a plain HTTP body.

Serve with ``uvicorn bench.fastapi_app:app``; POST the prompt as the request body to ``/stream``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

from bench.baseline import build_agent

app = FastAPI()


@app.post("/stream")
async def stream(request: Request) -> StreamingResponse:
    """Run the prompt in the body on a fresh agent and stream each text delta as it comes."""
    prompt = (await request.body()).decode("utf-8")
    agent = build_agent()

    async def text() -> AsyncIterator[str]:
        async for event in agent.stream_async(prompt):
            if "data" in event:
                yield event["data"]

    return StreamingResponse(text(), media_type="text/plain; charset=utf-8")
