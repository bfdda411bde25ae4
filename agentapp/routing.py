"""WebSocket routes: include ``websocket_urlpatterns`` in your project's ``URLRouter``."""

from django.urls import path

from .consumers import AgentConsumer

websocket_urlpatterns = [
    path("ws/agent/", AgentConsumer.as_asgi()),
    path("ws/agent/<uuid:conversation_id>/", AgentConsumer.as_asgi()),
]
