"""A small driver around channels' WebsocketCommunicator that speaks the agentapp protocol."""

from __future__ import annotations

import json
from typing import Any

from channels.testing import WebsocketCommunicator

from project.asgi import application

TIMEOUT = 10


class Client:
    """One WebSocket connection to the example site's ASGI application."""

    def __init__(self, path: str = "/ws/agent/", user: Any = None, headers: list | None = None) -> None:
        self.communicator = WebsocketCommunicator(
            application, path, headers=headers if headers is not None else [(b"origin", b"http://127.0.0.1")]
        )
        if user is not None:
            self.communicator.scope["user"] = user
        self.raw: list[str] = []

    async def connect(self) -> tuple[bool, Any]:
        return await self.communicator.connect(timeout=TIMEOUT)

    async def receive(self, timeout: float = TIMEOUT) -> dict[str, Any]:
        raw = await self.communicator.receive_from(timeout=timeout)
        self.raw.append(raw)
        frame = json.loads(raw)
        assert isinstance(frame, dict)
        return frame

    async def send(self, frame: Any) -> None:
        await self.communicator.send_to(text_data=json.dumps(frame))

    async def send_text(self, text: str) -> None:
        """Send a raw text frame, JSON or not."""
        await self.communicator.send_to(text_data=text)

    async def send_bytes(self, data: bytes) -> None:
        """Send a binary frame."""
        await self.communicator.send_to(bytes_data=data)

    async def prompt(self, text: str) -> None:
        await self.send({"type": "prompt", "prompt": text})

    async def cancel(self) -> None:
        await self.send({"type": "cancel"})

    async def hello(self) -> dict[str, Any]:
        """Connect and return the ``conversation`` frame, failing the test on anything else."""
        connected, _ = await self.connect()
        assert connected
        frame = await self.receive()
        assert frame["type"] == "conversation", frame
        return frame

    async def receive_close(self, timeout: float = TIMEOUT) -> int:
        """Wait for the server to close the socket and return the close code."""
        message = await self.communicator.receive_output(timeout)
        assert message["type"] == "websocket.close", message
        return message.get("code", 1000)

    async def until_finished(self) -> list[dict[str, Any]]:
        """Receive frames up to and including ``run_finished``."""
        frames = []
        while True:
            frame = await self.receive()
            frames.append(frame)
            if frame["type"] == "run_finished":
                return frames

    async def until(self, frame_type: str) -> list[dict[str, Any]]:
        frames = []
        while True:
            frame = await self.receive()
            frames.append(frame)
            if frame["type"] == frame_type:
                return frames

    async def close(self) -> None:
        await self.communicator.disconnect(timeout=TIMEOUT)


def streamed_text(frames: list[dict[str, Any]]) -> str:
    """The text of every ``data`` frame, joined."""
    return "".join(frame["data"] for frame in frames if frame["type"] == "data")
