"""Group broadcast of a run's frames through the channel layer, coalesced so cost follows time, not tokens.

The run never waits on the layer: frames go into a queue drained by one sender task, which merges
adjacent text deltas (and successive ``current_tool_use`` updates) collected within a short window.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from . import protocol

logger = logging.getLogger(__name__)

FRAME_MESSAGE_TYPE = "agentapp.frame"
CANCEL_MESSAGE_TYPE = "agentapp.cancel"


def group_name(conversation_id: str) -> str:
    """The channel-layer group of a conversation."""
    return f"agentapp.conversation.{conversation_id}"


def coalesce(frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Merge runs of adjacent ``data`` frames and of ``current_tool_use`` updates for one tool use."""
    merged: list[dict[str, Any]] = []
    for frame in frames:
        previous = merged[-1] if merged else None
        if previous is not None and previous["type"] == frame["type"] == protocol.DATA:
            previous[protocol.DATA] += frame[protocol.DATA]
            previous["seq"] = frame["seq"]
        elif (
            previous is not None
            and previous["type"] == frame["type"] == protocol.CURRENT_TOOL_USE
            and previous[protocol.CURRENT_TOOL_USE]["toolUseId"] == frame[protocol.CURRENT_TOOL_USE]["toolUseId"]
        ):
            merged[-1] = {**frame, "seq_first": previous.get("seq_first", previous["seq"])}
        else:
            merged.append(dict(frame, seq_first=frame["seq"]) if frame["type"] == protocol.DATA else dict(frame))
    return merged


class GroupBroadcaster:
    """Sends one run's frames to the conversation group from a background task."""

    def __init__(self, channel_layer: Any, group: str, origin: str, window_seconds: float) -> None:
        self.channel_layer = channel_layer
        self.group = group
        self.origin = origin
        self.window_seconds = window_seconds
        self.sends = 0
        self.failures = 0
        self._queue: asyncio.Queue[dict[str, Any] | None] = asyncio.Queue()
        self._task = asyncio.create_task(self._run(), name=f"agentapp-broadcast-{group}")

    def publish(self, frame: dict[str, Any]) -> None:
        """Queue a frame for the group; never blocks."""
        self._queue.put_nowait(frame)

    async def close(self) -> None:
        """Send what is queued, then stop the sender task."""
        self._queue.put_nowait(None)
        await asyncio.shield(self._task)

    def _take_ready(self, batch: list[dict[str, Any] | None]) -> None:
        while not self._queue.empty():
            batch.append(self._queue.get_nowait())

    async def _run(self) -> None:
        last_send = 0.0
        done = False
        while not done:
            batch: list[dict[str, Any] | None] = [await self._queue.get()]
            self._take_ready(batch)
            only_deltas = all(frame is not None and frame["type"] == protocol.DATA for frame in batch)
            wait = self.window_seconds - (time.monotonic() - last_send)
            if only_deltas and wait > 0:
                await asyncio.sleep(wait)
                self._take_ready(batch)
            done = None in batch
            frames = coalesce([frame for frame in batch if frame is not None])
            for frame in frames:
                await self._send(frame)
            last_send = time.monotonic()

    async def _send(self, frame: dict[str, Any]) -> None:
        try:
            await self.channel_layer.group_send(
                self.group, {"type": FRAME_MESSAGE_TYPE, "frame": frame, "origin": self.origin}
            )
            self.sends += 1
        except Exception as exc:
            self.failures += 1
            if self.failures == 1:
                logger.warning("agentapp: broadcast to %s failed (%s); the run goes on", self.group, exc)
