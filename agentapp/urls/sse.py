"""Server-Sent Events (docs/sse.md): the socket's frames over HTTP; ``include("agentapp.urls.sse")``."""

from django.urls import path

from .. import sse

app_name = "agentapp"

urlpatterns = [
    path("sse/", sse.stream, name="sse"),
    path("sse/<uuid:conversation_id>/", sse.stream, name="sse_conversation"),
]
