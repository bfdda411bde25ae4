"""Benchmark 6: AG-UI beside the WebSocket, on the same agentapp server: tokens/s of one 2,000-token answer after a
tool call (benchmark 1's prompt) and time to first token of a direct answer (benchmark 3's).

Both transports run on the ``agentapp`` server (benchmark 1's case (d)), so the merge policy is the same: an AG-UI
request drives the WebSocket consumer in-process, and its events come from the frames the socket outbox merged (one
TEXT_MESSAGE_CONTENT per ``data`` frame). The two are interleaved run by run, after one warm-up pair. The WebSocket
clock starts when the prompt frame is sent on a connection opened (and greeted) beforehand; AG-UI has no connection
to open beforehand, so its clock starts when the ``POST agui/`` is sent, and includes what the endpoint does before
the run: parse the input, open the consumer, read the conversation. AG-UI events carry no ``seq``: the client counts
the answer's tokens as its words (the offline model streams one word per token) and checks there are 2,000.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx

from bench import clients
from bench.baseline import HELLO_PROMPT, STREAM_PROMPT, STREAM_TOKENS
from bench.servers import ServerPool
from bench.stats import median, percentile, ratio

RUN_TIMEOUT = 60.0


@asynccontextmanager
async def agui_client(base_url: str, session: str) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the site's session, holding the CSRF cookie and sending the token and the site's Origin."""
    async with clients.http_client() as http:
        http.cookies.set("sessionid", session)
        (await http.get(base_url + "/api/conversations/")).raise_for_status()  # sets the csrftoken cookie
        http.headers.update({"X-CSRFToken": http.cookies["csrftoken"], "Origin": base_url})
        yield http


def run_input(prompt: str) -> dict[str, Any]:
    """A RunAgentInput for a new thread, as ``HttpAgent`` sends it."""
    return {
        "threadId": str(uuid.uuid4()),
        "runId": str(uuid.uuid4()),
        "state": {},
        "messages": [{"id": str(uuid.uuid4()), "role": "user", "content": prompt}],
        "tools": [],
        "context": [],
        "forwardedProps": {},
    }


async def agui_stream(http: httpx.AsyncClient, base_url: str, prompt: str, timeout: float) -> clients.Timing:
    """POST the prompt to ``agui/`` (a new conversation) and read its events until RUN_FINISHED or RUN_ERROR."""
    timing = clients.Timing()
    text: list[str] = []
    async with asyncio.timeout(timeout):
        start = time.perf_counter()
        async with http.stream("POST", base_url + "/agui/", json=run_input(prompt)) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                event = json.loads(line[len("data: ") :])
                timing.frames += 1
                kind = event.get("type")
                if kind == "TEXT_MESSAGE_CONTENT":
                    if timing.first_token is None:
                        timing.first_token = time.perf_counter() - start
                    timing.data_frames += 1
                    text.append(event["delta"])
                elif kind == "RUN_ERROR":
                    timing.status, timing.error = "failed", f"{event.get('code')}: {event.get('message')}"
                    break
                elif kind == "RUN_FINISHED":
                    timing.status = "completed"
                    break
        timing.elapsed = time.perf_counter() - start
    answer = "".join(text)
    timing.chars, timing.tokens = len(answer), len(answer.split())
    return timing


async def websocket_stream(base_url: str, cookie: str, prompt: str) -> clients.Timing:
    """The same prompt over agentapp's WebSocket, on a new conversation (opening it is not timed)."""
    socket = await clients.open_conversation(base_url, cookie)
    try:
        return await clients.agentapp_stream(socket, prompt, RUN_TIMEOUT)
    finally:
        await socket.close()


def _problem(timing: clients.Timing, tokens: int | None) -> str:
    if timing.status != "completed" or timing.first_token is None:
        return f"status {timing.status!r} {timing.error}".strip()
    if tokens is not None and timing.tokens != tokens:
        return f"{timing.tokens} tokens, expected {tokens}"
    return ""


def _latency(values: list[float]) -> dict[str, Any]:
    return {"runs": len(values), "p50_ms": percentile(values, 50) * 1000, "p99_ms": percentile(values, 99) * 1000}


async def measure(pool: ServerPool, stream_runs: int, ttft_runs: int, log: Callable[[str], None]) -> dict[str, Any]:
    """Interleaved pairs (WebSocket, AG-UI): ``stream_runs`` 2,000-token answers, then ``ttft_runs`` direct ones."""
    (server,) = pool.get("agentapp")
    cookie = await clients.session_cookie(server.url)
    tokens_per_second: dict[str, list[float]] = {"websocket": [], "agui": []}
    frames: dict[str, list[float]] = {"websocket": [], "agui": []}
    first_token: dict[str, list[float]] = {"websocket": [], "agui": []}
    errors: list[str] = []
    async with agui_client(server.url, cookie) as http:

        async def pair(prompt: str, tokens: int | None, index: int) -> dict[str, clients.Timing] | None:
            timings = {
                "websocket": await websocket_stream(server.url, cookie, prompt),
                "agui": await agui_stream(http, server.url, prompt, RUN_TIMEOUT),
            }
            problems = [f"{name} {problem}" for name, t in timings.items() if (problem := _problem(t, tokens))]
            if problems:
                errors.append(f"{prompt!r} run {index}: {'; '.join(problems)}")
                return None
            return timings if index else None  # run 0 is a warm-up

        for index in range(stream_runs + 1):
            if timings := await pair(STREAM_PROMPT, STREAM_TOKENS, index):
                for name, timing in timings.items():
                    tokens_per_second[name].append(timing.tokens_per_second)
                    frames[name].append(timing.data_frames)
        log(f"agui: streaming done at {time.strftime('%H:%M:%S')}")
        for index in range(ttft_runs + 1):
            if timings := await pair(HELLO_PROMPT, None, index):
                for name, timing in timings.items():
                    first_token[name].append(timing.first_token or 0.0)
        log(f"agui: first tokens done at {time.strftime('%H:%M:%S')}")
    result: dict[str, Any] = {
        "stream_prompt": STREAM_PROMPT,
        "ttft_prompt": HELLO_PROMPT,
        "errors": errors,
        **{
            name: {
                "tokens_per_second_median": median(tokens_per_second[name]),
                "stream_runs": len(tokens_per_second[name]),
                "text_frames_median": median(frames[name]),
                "first_token": _latency(first_token[name]),
            }
            for name in ("websocket", "agui")
        },
    }
    result["tokens_per_second_ratio"] = ratio(
        result["agui"]["tokens_per_second_median"], result["websocket"]["tokens_per_second_median"]
    )
    result["first_token_overhead_p50_ms"] = (
        result["agui"]["first_token"]["p50_ms"] - (result["websocket"]["first_token"]["p50_ms"])
    )
    return result
