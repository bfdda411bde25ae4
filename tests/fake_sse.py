"""A local HTTP server for fake model APIs that stream Server-Sent Events (OpenAI's and Anthropic's wires).

A subclass answers each JSON ``POST`` in ``answer``; the base records every request, hands out the failures a test
queued with ``fail_next``, and writes SSE as a real API does: chunked, one flushed HTTP chunk per event.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# Failure modes every fake knows; a subclass may add its own.
OK = "ok"  # no failure: the scripted answer
THROTTLE = "throttle"  # HTTP 429 before any event
STREAM_ERROR = "stream_error"  # an error event after a few text deltas
CUT = "cut"  # the connection closes after a few text deltas, the chunked body unfinished


class Exchange:
    """One request being answered: its path, headers and JSON body, and the ways to write the response."""

    def __init__(self, handler: BaseHTTPRequestHandler, body: dict[str, Any]) -> None:
        self.handler = handler
        self.path = handler.path
        self.headers = {name.lower(): value for name, value in handler.headers.items()}
        self.body = body

    def json(self, status: int, payload: dict[str, Any], headers: dict[str, str] | None = None) -> None:
        """A complete JSON response (an error before any event, as APIs send them)."""
        data = json.dumps(payload).encode("utf-8")
        self.handler.send_response(status)
        self.handler.send_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            self.handler.send_header(name, value)
        self.handler.send_header("Content-Length", str(len(data)))
        self.handler.end_headers()
        self.handler.wfile.write(data)

    def stream(self, events: Iterable[bytes], *, cut: bool = False) -> None:
        """A 200 ``text/event-stream``, one HTTP chunk per event; ``cut`` closes the socket instead of ending it."""
        self.handler.send_response(200)
        self.handler.send_header("Content-Type", "text/event-stream; charset=utf-8")
        self.handler.send_header("Cache-Control", "no-cache")
        self.handler.send_header("Transfer-Encoding", "chunked")
        self.handler.end_headers()
        for event in events:
            self.handler.wfile.write(f"{len(event):x}\r\n".encode("ascii") + event + b"\r\n")
            self.handler.wfile.flush()
        if cut:
            self.handler.close_connection = True
            self.handler.connection.shutdown(socket.SHUT_RDWR)
            return
        self.handler.wfile.write(b"0\r\n\r\n")
        self.handler.wfile.flush()


def sse(data: dict[str, Any] | str, event: str | None = None) -> bytes:
    """One Server-Sent Event: an optional ``event:`` line and a ``data:`` line (JSON, or a bare string)."""
    text = data if isinstance(data, str) else json.dumps(data)
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {text}\n\n".encode()


class FakeServer:
    """Start it, point an SDK's base URL at ``base_url``, read ``requests`` afterwards."""

    name = "fake-sse"

    def __init__(self) -> None:
        self.requests: list[dict[str, Any]] = []
        self._failures: list[str] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, name=self.name, daemon=True
        )

    @property
    def base_url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def fail_next(self, *modes: str) -> None:
        """Answer the next requests, one per mode, with these failures; later requests succeed."""
        with self._lock:
            self._failures.extend(modes)

    def record(self, exchange: Exchange) -> str:
        """Keep one request; return the failure mode it gets (``OK`` for none)."""
        with self._lock:
            self.requests.append({"path": exchange.path, "headers": exchange.headers, "body": exchange.body})
            return self._failures.pop(0) if self._failures else OK

    def answer(self, exchange: Exchange) -> None:
        """Write the response to one request."""
        raise NotImplementedError


def _handler_for(fake: FakeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = 10

        def log_message(self, format: str, *args: Any) -> None:
            """Keep the test output quiet."""

        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", 0)))
            try:
                body = json.loads(raw or b"{}")
            except ValueError:
                body = None
            exchange = Exchange(self, body if isinstance(body, dict) else {})
            if not isinstance(body, dict):
                exchange.json(400, {"error": {"message": "The body must be a JSON object."}})
                return
            fake.answer(exchange)

    return Handler
