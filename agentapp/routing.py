"""Routes: include ``websocket_urlpatterns`` in your project's ``URLRouter``, and ``channel_routes()`` in a
``ChannelNameRouter`` under ``"channel"`` when workers run the agents (``WORKER_CHANNEL``, docs/deployment.md)."""

from typing import Any

from django.urls import path

from .conf import app_settings
from .consumers import AgentConsumer

websocket_urlpatterns = [
    path("ws/agent/", AgentConsumer.as_asgi()),
    path("ws/agent/<uuid:conversation_id>/", AgentConsumer.as_asgi()),
]


def channel_routes() -> dict[str, Any]:
    """The worker consumer under the ``WORKER_CHANNEL`` name (none without workers)."""
    from .workers import RunWorkerConsumer

    channel = app_settings.WORKER_CHANNEL
    return {channel: RunWorkerConsumer.as_asgi()} if channel else {}
