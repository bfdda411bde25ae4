"""One channel-layer subscription per conversation per process: a room receives each group message once.

A connection joins its conversation's ``Room`` instead of the layer group. The room's own channel is the
process's only member of the group: a frame sent to the group costs the layer one delivery per process, not one
per socket, and the room hands it to every local connection (``Member.hub_deliver``), which forwards it without a
task or a copy of its own. A run's frames reach the watchers on its own process straight from the room
(``LocalFirst``); the layer carries them only when another process may watch.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Protocol

from . import presence, protocol
from .broadcast import (
    CANCEL_MESSAGE_TYPE,
    FRAME_MESSAGE_TYPE,
    PRESENCE_MESSAGE_TYPE,
    SYNC_MESSAGE_TYPE,
    group_name,
    layer_call,
    layer_health,
    watch_receive_cleaners,
)
from .conf import app_settings
from .messages import rejoined_message

logger = logging.getLogger(__name__)

# Marks group messages this process already handed to its own rooms: the copy the layer brings back is skipped.
HUB_ID = uuid.uuid4().hex


async def received(
    receive: Callable[[], Awaitable[dict[str, Any]]], layer: Any, recover: Callable[[], Awaitable[Any]]
) -> AsyncIterator[dict[str, Any]]:
    """The messages ``receive`` gets from the layer, for ever: after a receive that failed, ``recover`` runs first."""
    while True:
        try:
            message = await receive()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            layer_health.failed("receive", exc)
            await recover()
            continue
        watch_receive_cleaners(layer)
        yield message


class Member(Protocol):
    """A local connection to a conversation, as its room sees it."""

    channel_name: str

    def hub_deliver(self, message: dict[str, Any]) -> None:
        """Take one group message; never blocks (work that must wait goes to the connection's own queue)."""


class Room:
    """This process's subscription to one conversation's group and the local connections it feeds."""

    def __init__(self, layer: Any, conversation_id: str) -> None:
        self.layer = layer
        self.conversation_id = conversation_id
        self.group = group_name(conversation_id)
        self.members: dict[str, Member] = {}
        self.channel: str | None = None
        self.closed = False
        self._ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._tasks: list[asyncio.Task[None]] = []

    async def _open(self) -> None:
        """Take a channel, join the group and start listening; a failing layer is logged, the listener tries again."""
        joined = False
        try:
            self.channel = await self.layer.new_channel()
            joined = await layer_call(self.layer.group_add(self.group, self.channel), "group_add")
        except Exception as exc:
            layer_health.failed("new_channel", exc)
        finally:
            if not self._ready.done():
                self._ready.set_result(None)
        if not self.closed:
            name = f"agentapp-room-{self.conversation_id}"
            self._tasks = [
                asyncio.create_task(self._listen(joined), name=name),
                asyncio.create_task(self._renew(), name=f"{name}-renew"),
            ]

    async def ready(self) -> None:
        """Wait until the room is in the group (or has tried and logged why not)."""
        await asyncio.shield(self._ready)

    async def _close(self) -> None:
        self.closed = True
        await self.ready()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.channel is not None:
            await layer_call(self.layer.group_discard(self.group, self.channel), "group_discard")

    ### Receiving ###

    async def _listen(self, joined: bool) -> None:
        if not joined:
            await self._back()
        async for message in received(lambda: self.layer.receive(self.channel), self.layer, self._back):
            if message.get("type") == PRESENCE_MESSAGE_TYPE:
                # Once per process: every local connection shares the conversation's count.
                view = presence.views.get(self.conversation_id)
                if view is not None:
                    await view.receive(message)
            elif message.get("via") != HUB_ID:
                self.deliver(message)

    async def _back(self) -> None:
        """Join the group again, then tell the local connections to ask for what they missed meanwhile."""
        await self._rejoin()
        self.deliver(rejoined_message())

    async def _rejoin(self) -> None:
        """The layer may have lost the group (a Redis restart does), or never had it: join again until it works."""
        while True:
            await asyncio.sleep(app_settings.BROADCAST_RETRY_SECONDS)
            try:
                if self.channel is None:
                    self.channel = await self.layer.new_channel()
            except Exception as exc:
                layer_health.failed("new_channel", exc)
                continue
            if await layer_call(self.layer.group_add(self.group, self.channel), "group_add"):
                return

    async def _renew(self) -> None:
        """Join again now and then: channels-redis drops a membership after its ``group_expiry``."""
        while True:
            await asyncio.sleep(app_settings.PRESENCE_HEARTBEAT_SECONDS)
            if self.channel is not None:
                await layer_call(self.layer.group_add(self.group, self.channel), "group_add")

    def deliver(self, message: dict[str, Any]) -> None:
        """Hand a group message to the local connections that need it: a replay request or a cancel to one of
        them (it answers for the process), anything else to each."""
        kind = message.get("type")
        if kind in (SYNC_MESSAGE_TYPE, CANCEL_MESSAGE_TYPE):
            # One connection answers for the process (the asker itself cannot: its own log is read locally).
            asker = message.get("reply_to")
            for channel, member in self.members.items():
                if channel != asker:
                    member.hub_deliver(message)
                    return
            return
        for member in list(self.members.values()):
            member.hub_deliver(message)


class Hub:
    """The rooms of one event loop and one channel layer."""

    def __init__(self, layer: Any) -> None:
        self.layer = layer
        self.rooms: dict[str, Room] = {}
        self._opening: set[asyncio.Task[None]] = set()

    async def join(self, conversation_id: str, member: Member) -> Room:
        """Add a connection to its conversation's room, opening the room for the first one."""
        room = self.rooms.get(conversation_id)
        if room is None:
            room = self.rooms[conversation_id] = Room(self.layer, conversation_id)
            # In a task of its own: a connection cancelled while joining leaves the room usable for the others.
            task = asyncio.create_task(room._open(), name=f"agentapp-room-open-{conversation_id}")
            self._opening.add(task)
            task.add_done_callback(self._opening.discard)
        room.members[member.channel_name] = member
        await room.ready()
        return room

    async def leave(self, room: Room, member: Member) -> None:
        """Remove a connection; the last one out closes the room and leaves the group."""
        if room.members.pop(member.channel_name, None) is None or room.members:
            return
        if self.rooms.get(room.conversation_id) is room:
            del self.rooms[room.conversation_id]
        await room._close()

    def room(self, conversation_id: str) -> Room | None:
        """The open room of a conversation, or None."""
        return self.rooms.get(conversation_id)


_hubs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[int, Hub]] = weakref.WeakKeyDictionary()


def hub_for(layer: Any) -> Hub:
    """The hub of the running event loop for this channel layer."""
    hubs = _hubs.setdefault(asyncio.get_running_loop(), {})
    hub = hubs.get(id(layer))
    if hub is None or hub.layer is not layer:
        hub = hubs[id(layer)] = Hub(layer)
    return hub


class LocalFirst:
    """A channel layer as a run's broadcaster sees it: its group messages reach this process's room of the
    conversation at once, and go through the layer only when ``needs_layer()`` says another process may watch (a
    run's end always does)."""

    def __init__(self, layer: Any, hub: Hub, conversation_id: str, needs_layer: Callable[[], bool]) -> None:
        self.layer = layer
        self.hub = hub
        self.conversation_id = conversation_id
        self.needs_layer = needs_layer

    async def group_send(self, group: str, message: dict[str, Any]) -> None:
        room = self.hub.room(self.conversation_id)  # the room open now: connections may have left and come back
        if room is not None:
            room.deliver(message)
        frame = message.get("frame") if message.get("type") == FRAME_MESSAGE_TYPE else None
        if frame is not None and frame.get("type") != protocol.RUN_FINISHED and not self.needs_layer():
            return
        await self.layer.group_send(group, {**message, "via": HUB_ID})


class Inbox:
    """What one connection's handlers take next, in order: group messages its room could not forward at once, and
    what is sent to the connection's own channel (replies to it), moved in by a pump that survives the layer."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._pump: asyncio.Task[None] | None = None

    def put(self, message: dict[str, Any]) -> None:
        """Queue a message after those waiting."""
        self._queue.put_nowait(message)

    def empty(self) -> bool:
        """Whether no message waits (a frame may then be forwarded ahead of the handlers)."""
        return self._queue.empty()

    async def get(self, layer: Any, receive: Callable[[], Any]) -> dict[str, Any]:
        """The next message; the first call starts moving the connection's own channel messages in."""
        if self._pump is None:
            self._pump = asyncio.create_task(self._move(layer, receive), name="agentapp-channel")
        return await self._queue.get()

    def stop(self) -> None:
        """The connection ended: stop moving messages in."""
        if self._pump is not None:
            self._pump.cancel()

    async def _move(self, layer: Any, receive: Callable[[], Any]) -> None:
        # A receive that fails (Redis away) is retried: raising would end the consumer, and with it the socket and the
        # run it streams. The room notices the outage too, and tells its connections when it is back.
        async for message in received(receive, layer, lambda: asyncio.sleep(app_settings.BROADCAST_RETRY_SECONDS)):
            self._queue.put_nowait(message)
