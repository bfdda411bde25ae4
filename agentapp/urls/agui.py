"""The AG-UI endpoint (docs/agui.md): AG-UI clients run the agent over HTTP; ``include("agentapp.urls.agui")``."""

from django.urls import path

from .. import agui

app_name = "agentapp"

urlpatterns = [
    path("agui/", agui.run, name="agui"),
    path("agui/<uuid:conversation_id>/", agui.run, name="agui_conversation"),
]
