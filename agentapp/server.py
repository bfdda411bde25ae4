"""Serve a project with daphne, with agentapp's WebSocket limits and write backpressure: ``python -m agentapp.server``.

It takes daphne's command line (``python -m agentapp.server -b 0.0.0.0 -p 8000 project.asgi:application``) and
changes two things for WebSockets:

- The largest message daphne reads is ``SERVER_MAX_MESSAGE_BYTES`` (unless ``--websocket-max-message-size`` /
  ``--websocket-max-frame-size`` say otherwise), and past it the client gets a close frame with code 1009 instead
  of a dropped TCP connection (autobahn's ``failByDrop``). Frames between ``MAX_FRAME_BYTES`` and that limit reach
  the consumer, which answers ``frame_too_large`` and keeps the socket. What the server sends is not held to it.
- Each socket's write buffer is offered to the application as the ``agentapp.flow`` scope extension (see
  ``agentapp.outbox.WriteFlow``): a push producer on the Twisted transport, paused while the buffer is over its
  high-water mark, so the socket's outbox waits for a client that does not read instead of buffering without end.
  The kernel's share is bounded too (``SERVER_SEND_LOWAT_BYTES``, TCP_NOTSENT_LOWAT), so that a client that stops
  reading shows within a few hundred kilobytes, not the megabytes a socket's send buffer grows to.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import Callable
from typing import Any

# daphne.cli imports daphne.server first, which installs Twisted's asyncio reactor before anything else does.
from daphne.cli import CommandLineInterface
from daphne.server import Server
from django.core.exceptions import ImproperlyConfigured
from twisted.internet.interfaces import IPushProducer
from zope.interface import implementer

from .conf import app_settings
from .outbox import FLOW_EXTENSION

logger = logging.getLogger(__name__)

_LIMIT_OPTIONS = ("websocket_max_message_size", "websocket_max_frame_size")


def max_message_bytes() -> int:
    """``SERVER_MAX_MESSAGE_BYTES``, checked: frames over ``MAX_FRAME_BYTES`` must reach the consumer."""
    limit = app_settings.SERVER_MAX_MESSAGE_BYTES
    if not isinstance(limit, int) or limit <= app_settings.MAX_FRAME_BYTES:
        raise ImproperlyConfigured(
            f"AGENTAPP['SERVER_MAX_MESSAGE_BYTES'] ({limit!r}) must be an integer above MAX_FRAME_BYTES "
            f"({app_settings.MAX_FRAME_BYTES}), so that a frame too large gets frame_too_large."
        )
    return limit


def _bound_unsent(transport: Any, limit: int) -> None:
    """Let the kernel hold at most ``limit`` unsent bytes (Linux, macOS); the rest waits in Twisted's buffer."""
    option = getattr(socket, "TCP_NOTSENT_LOWAT", None)
    while transport is not None and not hasattr(transport, "socket"):
        transport = getattr(transport, "transport", None)  # under TLS: the TCP transport the TLS one wraps
    sock = getattr(transport, "socket", None)
    if option is None or limit <= 0 or sock is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, limit)
    except OSError:
        logger.debug("agentapp: TCP_NOTSENT_LOWAT refused on %r", sock, exc_info=True)


@implementer(IPushProducer)
class TransportFlow:
    """One WebSocket's write buffer, as Twisted reports it to the push producer registered on its transport."""

    def __init__(self, transport: Any) -> None:
        self.transport = transport
        self.paused = False
        self._callbacks: list[Callable[[], None]] = []

    @classmethod
    def attach(cls, transport: Any) -> TransportFlow | None:
        """Register a flow as the transport's producer; None if the transport will not take one."""
        flow = cls(transport)
        try:
            try:
                transport.registerProducer(flow, True)
            except RuntimeError:
                # The HTTP channel that upgraded the connection is still registered; it has nothing left to produce.
                transport.unregisterProducer()
                transport.registerProducer(flow, True)
        except Exception:
            logger.warning("agentapp: no write backpressure for a WebSocket on %r", transport, exc_info=True)
            return None
        return flow

    def on_drain(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` each time the buffer has drained or the connection is gone."""
        self._callbacks.append(callback)

    def abort(self) -> None:
        """Drop the TCP connection now, discarding what is buffered."""
        self.transport.abortConnection()

    ### IPushProducer, called by the transport ###

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        self._notify()

    def stopProducing(self) -> None:
        self.paused = False  # the connection is gone: writes no longer wait (and go nowhere)
        self._notify()

    def _notify(self) -> None:
        for callback in list(self._callbacks):
            callback()


class RequestFlow(TransportFlow):
    """An HTTP response's write buffer, watched only while it streams (Server-Sent Events): ``attach`` registers the
    flow as the request's producer, ``detach`` unregisters it before the response ends."""

    def __init__(self, request: Any) -> None:
        super().__init__(request.transport)
        self.request = request
        self.attached = False

    def attach(self) -> None:
        """Start watching: the stream's writes wait while the client does not read."""
        if self.attached:
            return
        try:
            self.request.registerProducer(self, True)
        except Exception:
            logger.warning("agentapp: no write backpressure for a stream on %r", self.transport, exc_info=True)
            return
        self.attached = True
        _bound_unsent(self.transport, app_settings.SERVER_SEND_LOWAT_BYTES)

    def detach(self) -> None:
        """Stop watching (the request's channel takes no producer twice)."""
        if self.attached:
            self.attached = False
            if getattr(self.request, "channel", None) is not None:  # None once the client hung up
                self.request.unregisterProducer()
        self.paused = False


class AgentappServer(Server):
    """Daphne's server with agentapp's WebSocket message limit, a close frame past it, and the flow extension."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        limit = max_message_bytes()
        for option in _LIMIT_OPTIONS:
            if kwargs.get(option) is None:
                kwargs[option] = limit
        super().__init__(*args, **kwargs)

    def create_application(self, protocol: Any, scope: dict[str, Any]) -> Any:
        """Make the application instance of a connection; a WebSocket's gets its flow and fails with a close frame,
        an HTTP request's gets a flow its stream may attach."""
        if scope.get("type") == "websocket":
            # Past the size limits (or on a protocol error) autobahn sends a close frame (1009, 1002...) and waits
            # for the client's, instead of cutting the TCP connection: the client always learns why.
            protocol.failByDrop = False
            _bound_unsent(protocol.transport, app_settings.SERVER_SEND_LOWAT_BYTES)
            flow = TransportFlow.attach(protocol.transport)
            if flow is not None:
                scope = {**scope, "extensions": {**(scope.get("extensions") or {}), FLOW_EXTENSION: flow}}
        elif scope.get("type") == "http":
            # A stream (agentapp.sse) attaches it; other responses never register it.
            scope = {**scope, "extensions": {**(scope.get("extensions") or {}), FLOW_EXTENSION: RequestFlow(protocol)}}
        return super().create_application(protocol, scope)

    async def handle_reply(self, protocol: Any, message: dict[str, Any]) -> None:
        """Pass a message of the application to its connection; what the server sends is not held to the limit."""
        if message.get("type") != "websocket.send":
            await super().handle_reply(protocol, message)
            return
        # Autobahn holds outgoing messages to the incoming limit too, and would refuse a `conversation` frame with
        # a long history (an exception the app can only drop). The limit is on what clients send: it is lifted for
        # this one synchronous send only (daphne's handle_reply never awaits), so incoming frames still meet it.
        limit = protocol.maxMessagePayloadSize
        protocol.maxMessagePayloadSize = 0
        try:
            await super().handle_reply(protocol, message)
        finally:
            protocol.maxMessagePayloadSize = limit


class AgentappCommandLine(CommandLineInterface):
    """Daphne's command line, serving with ``AgentappServer``; the message limits default to the setting."""

    description = "Django HTTP/WebSocket server (daphne) with agentapp's WebSocket limits and backpressure"
    server_class = AgentappServer

    def __init__(self) -> None:
        super().__init__()
        self.parser.prog = "python -m agentapp.server"
        self.parser.set_defaults(**dict.fromkeys(_LIMIT_OPTIONS))


def main(argv: list[str] | None = None) -> None:
    """Run the server with daphne's arguments (``sys.argv[1:]`` by default)."""
    AgentappCommandLine().run(sys.argv[1:] if argv is None else argv)


if __name__ == "__main__":
    main()
