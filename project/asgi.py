"""ASGI entry point of the example site: HTTP through Django, WebSockets through agentapp's routes."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "project.settings")
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ChannelNameRouter, ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402
from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler  # noqa: E402

from agentapp.bodylimit import BodyLimit  # noqa: E402
from agentapp.routing import channel_routes, websocket_urlpatterns  # noqa: E402

if settings.DEBUG:
    # Plain daphne serves no static files; in development let Django serve the chat page's JS and CSS.
    django_asgi_app = ASGIStaticFilesHandler(django_asgi_app)

routes = {
    # Bodies over the largest agentapp takes (an attachment) are refused before Django reads them.
    "http": BodyLimit(django_asgi_app),
    "websocket": AllowedHostsOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
}
if channel_routes():  # workers run the agents (AGENTAPP["WORKER_CHANNEL"], docs/deployment.md)
    routes["channel"] = ChannelNameRouter(channel_routes())
application = ProtocolTypeRouter(routes)
