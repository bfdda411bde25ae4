"""Who is watching a conversation: every connection hears how many connections are open on it, across processes.

Each server process counts its own connections to a conversation and tells the conversation's group its count
whenever it changes, and again every ``PRESENCE_HEARTBEAT_SECONDS``; a process new to the conversation asks the
others for theirs (one answer per process). A process not heard from for ``EXPIRY_BEATS`` heartbeats (it died, or
its messages were lost) is no longer counted. So a change costs one group message, and a heartbeat one per
process, whatever the number of watchers. Clients that open the socket with ``?presence=1`` get a ``presence``
frame on every change of the total.
"""

from __future__ import annotations

import asyncio
import itertools
import random
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

from . import protocol
from .broadcast import layer_call
from .conf import app_settings
from .messages import PRESENCE_QUERY as QUERY
from .messages import presence_message, presence_query_message

# A process silent for this many heartbeats is taken as gone.
EXPIRY_BEATS = 2.5
# Changes within this many seconds (the answers to a query) make one frame, not one each.
SETTLE_SECONDS = 0.05
# Queries this process answered, remembered so that only one of its connections answers each.
ANSWERED_QUERIES_KEPT = 1000

# This process, as other processes know it.
PROCESS_ID = uuid.uuid4().hex
# Numbers this process's counts in the order it took them: a count that arrives after a newer one is stale (each
# connection's leave is sent on its own, so a burst of them may cross on the way).
_COUNT_NUMBERS = itertools.count()


def wants_presence(scope: dict[str, Any]) -> bool:
    """Whether the client asked for ``presence`` frames (``?presence=1`` in the socket's URL)."""
    query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
    return query.get("presence", [""])[-1] in ("1", "true")


class ConversationView:
    """This process's picture of one conversation: its own connections and the other processes' counts."""

    def __init__(self, conversation_id: str, channel_layer: Any, group: str) -> None:
        self.conversation_id = conversation_id
        self.layer = channel_layer
        self.group = group
        self.local: dict[str, Presence] = {}  # channel name -> connection
        self.remote: dict[str, tuple[int, float]] = {}  # process id -> (count, monotonic time heard)
        self.numbers: dict[str, int] = {}  # process id -> number of the newest count heard from it
        self.answered: OrderedDict[str, None] = OrderedDict()
        self._heartbeat: asyncio.Task[None] | None = None

    @property
    def watchers(self) -> int:
        """Open connections to the conversation, on every process."""
        return len(self.local) + (sum(count for count, _ in self.remote.values()) if self.remote else 0)

    def changed(self) -> None:
        """Tell every connection of this process that the total may have changed."""
        for connection in self.local.values():
            connection.changed()

    async def publish(self, query: bool = False) -> None:
        """Tell the group this process's count (and ask the others for theirs when ``query``)."""
        if self.layer is None:
            return
        message: dict[str, Any] = presence_message(PROCESS_ID, len(self.local), next(_COUNT_NUMBERS))
        await layer_call(self.layer.group_send(self.group, message), "group_send")
        if query and self.local:
            ask = presence_query_message(PROCESS_ID, uuid.uuid4().hex, next(iter(self.local)))
            await layer_call(self.layer.group_send(self.group, ask), "group_send")

    async def receive(self, message: dict[str, Any]) -> None:
        """A presence message of another process, as one of this process's connections got it."""
        process = message.get("process")
        if not isinstance(process, str) or process == PROCESS_ID:
            return
        if message.get("event") == QUERY:
            await self._answer(message)
            return
        count = message.get("count")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            return
        number = message.get("number")
        if isinstance(number, int) and not isinstance(number, bool):
            if number <= self.numbers.get(process, -1):
                return  # older than a count already heard from that process
            self.numbers[process] = number
        if count == 0:
            self.remote.pop(process, None)
        else:
            self.remote[process] = (count, time.monotonic())
        self.changed()

    async def _answer(self, query: dict[str, Any]) -> None:
        query_id, reply_to = query.get("id"), query.get("reply_to")
        if not isinstance(query_id, str) or not isinstance(reply_to, str) or query_id in self.answered:
            return
        self.answered[query_id] = None
        while len(self.answered) > ANSWERED_QUERIES_KEPT:
            self.answered.popitem(last=False)
        answer = presence_message(PROCESS_ID, len(self.local), next(_COUNT_NUMBERS))
        await layer_call(self.layer.send(reply_to, answer), "send")

    def start_heartbeat(self) -> None:
        if self.layer is not None and self._heartbeat is None:
            self._heartbeat = asyncio.create_task(self._beat(), name=f"agentapp-presence-{self.conversation_id}")

    async def stop_heartbeat(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None

    async def _beat(self) -> None:
        interval = app_settings.PRESENCE_HEARTBEAT_SECONDS
        while True:
            # Jitter spreads the heartbeats of processes that joined together.
            await asyncio.sleep(interval * random.uniform(0.8, 1.0))
            await self.publish()
            horizon = time.monotonic() - interval * EXPIRY_BEATS
            gone = [process for process, (_, heard) in self.remote.items() if heard < horizon]
            for process in gone:
                del self.remote[process]
            if gone:
                self.changed()


# The conversations this process has connections to.
views: dict[str, ConversationView] = {}


class Presence:
    """One connection's part in its conversation's count; ``notify(frame)`` gets each new total."""

    def __init__(
        self,
        channel_layer: Any,
        group: str,
        channel: str,
        conversation_id: str,
        notify: Callable[[dict[str, Any]], Awaitable[None]] | None,
    ) -> None:
        self.layer = channel_layer
        self.group = group
        self.channel = channel
        self.conversation_id = conversation_id
        self.notify = notify
        self.sent: int | None = None
        self.view: ConversationView | None = None
        self._pending: asyncio.Task[None] | None = None
        self._announcing: asyncio.Task[None] | None = None

    @property
    def watchers(self) -> int:
        """Open connections to the conversation, this one included."""
        return self.view.watchers if self.view is not None else 1

    def start(self) -> None:
        """Count this connection in and tell the group, from a task: connecting never waits for it."""
        view = views.get(self.conversation_id)
        first = view is None
        if view is None:
            view = views[self.conversation_id] = ConversationView(self.conversation_id, self.layer, self.group)
        view.local[self.channel] = self
        self.view = view
        view.start_heartbeat()
        view.changed()
        # The first connection of this process to the conversation asks the other processes for their counts.
        self._announcing = asyncio.create_task(view.publish(query=first), name="agentapp-presence-announce")

    async def announce(self) -> None:
        """Tell the group this process's count again and ask for the others' (after the layer came back)."""
        if self.view is not None:
            await self.view.publish(query=True)

    async def stop(self) -> None:
        """Count this connection out and tell the group, so the others count one less at once."""
        view, self.view = self.view, None
        for task in (self._pending, self._announcing):
            if task is not None and not task.done():
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        if view is None or view.local.pop(self.channel, None) is None:
            return
        if not view.local:
            del views[self.conversation_id]
            await view.stop_heartbeat()
        view.changed()
        await view.publish()

    async def receive(self, message: dict[str, Any]) -> None:
        """A presence message from the group (or an answer to this connection's query)."""
        if self.view is not None:
            await self.view.receive(message)

    def changed(self) -> None:
        """The total may have changed: send it to the client soon, once, if it did."""
        if self.notify is None or self.watchers == self.sent or (self._pending and not self._pending.done()):
            return
        self._pending = asyncio.create_task(self._send_count(), name=f"agentapp-presence-{self.conversation_id}")

    async def _send_count(self) -> None:
        await asyncio.sleep(SETTLE_SECONDS)
        # A change while a frame was being sent is sent next: changed() left it to this task.
        while self.notify is not None and self.view is not None and self.watchers != self.sent:
            self.sent = self.watchers
            frame = {"type": protocol.PRESENCE, "conversation_id": self.conversation_id, "watchers": self.sent}
            await self.notify(frame)
