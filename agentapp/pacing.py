"""The pace of one connection's client frames: a token bucket, so a flood costs no database work.

Each connection may send ``CLIENT_FRAME_BURST`` frames at once, then ``CLIENT_FRAMES_PER_SECOND`` on average. A frame
over that pace is refused before it is even parsed: the first of a row gets one ``too_many_frames`` error frame, the
next ones nothing, and a connection that sends ``CLIENT_FRAME_BURST`` more frames while refused is closed with
``CLOSE_TOO_MANY_FRAMES``. Channels handles a socket's frames one after another, so without this a backlog of cheap
looking frames (each with a database hop) would keep the socket's cleanup waiting behind it.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import Enum

# Error code of a frame over the pace (one ``error`` frame per row of refused frames).
ERR_TOO_MANY_FRAMES = "too_many_frames"
# Close code of a connection that kept sending while its frames were refused (WebSocket "policy violation").
CLOSE_TOO_MANY_FRAMES = 1008


class Verdict(Enum):
    """What to do with one client frame."""

    ACCEPT = "accept"  # handle it
    REFUSE = "refuse"  # drop it and send the one ``too_many_frames`` error frame of this row
    DROP = "drop"  # drop it silently (its row's error frame was sent)
    CLOSE = "close"  # the connection keeps flooding: close it


class FramePace:
    """A token bucket of ``burst`` frames refilled at ``rate`` per second; no I/O, the clock can be given."""

    def __init__(self, burst: int, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = max(1, burst)
        self.rate = rate
        self.clock = clock
        self.tokens = float(self.burst)
        self.updated = clock()
        self.refused = 0  # frames refused since the last accepted one

    def check(self) -> Verdict:
        """Take one token for a frame, or say how to refuse it."""
        now = self.clock()
        self.tokens = min(float(self.burst), self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            self.refused = 0
            return Verdict.ACCEPT
        self.refused += 1
        if self.refused > self.burst:
            return Verdict.CLOSE
        return Verdict.REFUSE if self.refused == 1 else Verdict.DROP
