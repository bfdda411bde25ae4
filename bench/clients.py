"""Clients that time one answer: in process, over a streamed HTTP body, over a bare or an agentapp WebSocket.

Every loop is bounded by a deadline and a frame cap; every connection goes to a loopback address only
(proxies from the environment are ignored).
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
from strands import Agent
from websockets.asyncio.client import ClientConnection, connect

from bench.baseline import build_agent

# Hard cap on frames read for one answer, so a misbehaving server cannot keep a client looping.
MAX_FRAMES = 200_000
CONNECT_TIMEOUT = 30.0


@dataclass
class Timing:
    """One answer as a client saw it: seconds from the prompt to the end and to the first text, and what came.

    ``arrivals`` holds one receive time (``time.perf_counter``) per token, ``delays`` one emit-to-receive time
    in seconds per token of a stamped server (see ``bench/stamped.py``). ``frames`` counts every frame (or body
    chunk read) of the answer, ``data_frames`` those that carried text.
    """

    elapsed: float = 0.0
    first_token: float | None = None
    tokens: int = 0
    chars: int = 0
    frames: int = 0
    data_frames: int = 0
    status: str = ""
    error: str = ""
    arrivals: list[float] = field(default_factory=list)
    delays: list[float] = field(default_factory=list)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens / self.elapsed if self.elapsed else 0.0

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.elapsed if self.elapsed else 0.0


### (a) in process ###


async def in_process(prompt: str, timeout: float, agent: Agent | None = None, keep_arrivals: bool = False) -> Timing:
    """Iterate ``stream_async`` of a fresh agent (built here unless given); the clock starts at the call."""
    agent = build_agent() if agent is None else agent
    timing = Timing(status="completed")
    async with asyncio.timeout(timeout):
        start = time.perf_counter()
        async for event in agent.stream_async(prompt):
            if "data" in event:
                now = time.perf_counter()
                if timing.first_token is None:
                    timing.first_token = now - start
                timing.tokens += 1
                timing.frames += 1
                timing.data_frames += 1
                timing.chars += len(event["data"])
                if keep_arrivals:
                    timing.arrivals.append(now)
        timing.elapsed = time.perf_counter() - start
    return timing


### (b) streamed HTTP body ###


def http_client() -> httpx.AsyncClient:
    """An HTTP client that ignores proxy settings (loopback only) and never times out mid-answer on its own."""
    return httpx.AsyncClient(trust_env=False, timeout=httpx.Timeout(CONNECT_TIMEOUT, read=CONNECT_TIMEOUT))


async def http_stream(client: httpx.AsyncClient, url: str, prompt: str, timeout: float) -> Timing:
    """POST the prompt and read the streamed body; tokens are not visible in a byte stream, only characters.

    ``frames`` counts the body chunks as the client read them (one per HTTP chunk unless several arrived in one
    read, or one was split over two).
    """
    timing = Timing()
    body: list[bytes] = []
    async with asyncio.timeout(timeout):
        start = time.perf_counter()
        async with client.stream("POST", url, content=prompt.encode("utf-8")) as response:
            response.raise_for_status()
            async for chunk in response.aiter_raw():
                if not chunk:
                    continue
                if timing.first_token is None:
                    timing.first_token = time.perf_counter() - start
                timing.frames += 1
                body.append(chunk)
        timing.elapsed = time.perf_counter() - start
    timing.data_frames = timing.frames
    timing.chars = len(b"".join(body).decode("utf-8"))
    timing.status = "completed"
    return timing


### WebSockets ###


async def open_socket(url: str, cookie: str | None = None, origin: str | None = None) -> ClientConnection:
    """A WebSocket to a loopback URL with no proxy and no compression (agentapp's server offers none)."""
    if urlsplit(url).hostname not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"benchmarks only talk to loopback addresses, not {url}")
    headers = {"Cookie": f"sessionid={cookie}"} if cookie else None
    return await connect(
        url,
        origin=origin,  # type: ignore[arg-type]
        additional_headers=headers,
        proxy=None,
        compression=None,
        open_timeout=CONNECT_TIMEOUT,
        close_timeout=5,
        max_size=None,
        ping_interval=None,
    )


async def bare_stream(
    socket: ClientConnection, prompt: str, timeout: float, merged: bool = False, keep_arrivals: bool = False
) -> Timing:
    """Send the prompt to the bare consumer and count text frames until its binary done frame.

    ``merged``: the socket was opened with ``?merge=1``, each frame is ``"<deltas>\n<text>"``.
    """
    timing = Timing()
    async with asyncio.timeout(timeout):
        start = time.perf_counter()
        await socket.send(prompt)
        for _ in range(MAX_FRAMES):
            message = await socket.recv()
            timing.frames += 1
            if isinstance(message, bytes):
                timing.status = "completed"
                break
            now = time.perf_counter()
            if timing.first_token is None:
                timing.first_token = now - start
            tokens = 1
            if merged:
                count, _, message = message.partition("\n")
                tokens = int(count)
            timing.tokens += tokens
            timing.data_frames += 1
            timing.chars += len(message)
            if keep_arrivals:
                timing.arrivals.extend([now] * tokens)
        timing.elapsed = time.perf_counter() - start
    return timing


async def session_cookie(base_url: str) -> str:
    """GET / on the site (demo mode saves a session for anonymous visitors) and return the session id."""
    async with http_client() as client:
        response = await client.get(base_url + "/")
        response.raise_for_status()
        cookie = response.cookies.get("sessionid")
    if not cookie:
        raise RuntimeError(f"GET {base_url}/ set no sessionid cookie; is AGENTAPP_DEMO=1 set on the server?")
    return cookie


async def open_conversation(base_url: str, cookie: str) -> ClientConnection:
    """Open a new agentapp conversation and read its ``conversation`` frame."""
    ws_url = base_url.replace("http://", "ws://", 1) + "/ws/agent/"
    socket = await open_socket(ws_url, cookie=cookie, origin=base_url)
    async with asyncio.timeout(CONNECT_TIMEOUT):
        frame = json.loads(await socket.recv())
    if frame.get("type") != "conversation":
        await socket.close()
        raise RuntimeError(f"expected a conversation frame, got {frame}")
    return socket


def carried(frame: dict[str, Any]) -> int:
    """Text deltas a ``data`` frame carries: a merged frame covers ``seq_first``..``seq`` (one delta without them)."""
    seq = frame.get("seq")
    if not isinstance(seq, int):
        return 1
    first = frame.get("seq_first", seq)
    return seq - first + 1 if isinstance(first, int) else 1


def emit_stamps(text: str) -> list[float]:
    """The emit times a stamped server wrote as the text of a ``data`` frame, one per delta."""
    try:
        return [float(word) for word in text.split()]
    except ValueError:
        raise ValueError(f"data {text[:40]!r} is not emit stamps; is the server on bench.settings_stamped?") from None


async def agentapp_stream(
    socket: ClientConnection,
    prompt: str,
    timeout: float,
    keep_arrivals: bool = False,
    stop_at_first: bool = False,
    stamped: bool = False,
) -> Timing:
    """Send a prompt frame and count the tokens of ``data`` frames until ``run_finished`` (or the first frame).

    ``stamped``: the text is emit stamps (``bench/stamped.py``); each token's emit-to-receive time is kept.
    """
    timing = Timing()
    async with asyncio.timeout(timeout):
        start = time.perf_counter()
        await socket.send(json.dumps({"type": "prompt", "prompt": prompt}))
        for _ in range(MAX_FRAMES):
            raw = await socket.recv()
            now, received = time.perf_counter(), time.monotonic()
            frame: dict[str, Any] = json.loads(raw)
            timing.frames += 1
            kind = frame.get("type")
            if kind == "data":
                timing.data_frames += 1
                if timing.first_token is None:
                    timing.first_token = now - start
                    if stop_at_first:
                        break
                tokens = carried(frame)
                timing.tokens += tokens
                timing.chars += len(frame["data"])
                if keep_arrivals:
                    timing.arrivals.extend([now] * tokens)
                if stamped:
                    timing.delays.extend(received - emitted for emitted in emit_stamps(frame["data"]))
            elif kind == "error":
                timing.error = f"{frame.get('code')}: {frame.get('message')}"
                if not frame.get("run_id"):
                    timing.status = "refused"  # an error outside a run: the prompt was not accepted
                    break
            elif kind == "run_finished":
                timing.status = str(frame.get("status"))
                break
        timing.elapsed = time.perf_counter() - start
    return timing


async def drain_until_finished(socket: ClientConnection, timeout: float) -> None:
    """Read and drop frames until ``run_finished``, so the next prompt is not refused as busy."""
    async with asyncio.timeout(timeout):
        for _ in range(MAX_FRAMES):
            if json.loads(await socket.recv()).get("type") == "run_finished":
                return
