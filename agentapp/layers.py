"""Channels' in-memory channel layer, with costs that do not grow with the number of connections per message."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from channels.exceptions import ChannelFull
from channels.layers import InMemoryChannelLayer as ChannelsInMemoryChannelLayer


class InMemoryChannelLayer(ChannelsInMemoryChannelLayer):
    """The in-memory layer of one process, for development and single-process sites.

    Channels' layer scans every channel and group for expired entries on each ``receive`` and ``group_send``:
    with a thousand open sockets that scan costs more than the message. Here it runs at most once per
    ``sweep_seconds`` (expiry stays a minute by default, so it is at most that much late), and ``group_send``
    puts the message on each member's queue directly instead of through a task per member.
    """

    def __init__(self, *args: Any, sweep_seconds: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sweep_seconds = sweep_seconds
        self._next_sweep = 0.0

    def _clean_expired(self) -> None:
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + self.sweep_seconds
        super()._clean_expired()

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        """Send a message to every channel of the group; a full channel misses it, as in Channels."""
        assert isinstance(message, dict), "Message is not a dict"
        self.require_valid_group_name(group)
        self._clean_expired()
        for channel in list(self.groups.get(group, ())):
            with contextlib.suppress(ChannelFull):
                await self.send(channel, message)
