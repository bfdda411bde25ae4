"""Every HTTP route of agentapp: the chat page, the JSON API, Server-Sent Events and AG-UI.

Include them with ``path("agent/", include("agentapp.urls"))``. A project wanting only part includes one of the
sets instead: ``agentapp.urls.page`` (the page and the API it calls), ``agentapp.urls.api``, ``agentapp.urls.sse``
or ``agentapp.urls.agui``. The WebSocket is routed apart, by ``agentapp.routing.websocket_urlpatterns``.
"""

from . import agui, page, sse

app_name = "agentapp"

urlpatterns = [*page.urlpatterns, *sse.urlpatterns, *agui.urlpatterns]
