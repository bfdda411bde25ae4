"""A project includes only the parts of agentapp it wants: the socket alone, the page, the API or SSE."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from django.contrib import admin
from django.contrib.auth import get_user_model
from django.test import Client as HttpClient
from django.test import override_settings
from django.urls import Resolver404, include, path, resolve, reverse

import agentapp.urls.api
import agentapp.urls.sse
from agentapp import protocol
from tests.wsclient import Client as SocketClient

CONVERSATION = uuid.uuid4()
PAGE_PATHS = ["/agent/"]
API_PATHS = ["/agent/api/conversations/", f"/agent/api/conversations/{CONVERSATION}/members/"]
SSE_PATHS = ["/agent/sse/", f"/agent/sse/{CONVERSATION}/"]


# Root URLconfs of projects that include one set each (Django takes any object with ``urlpatterns``).
class SocketOnly:
    urlpatterns = [path("admin/", admin.site.urls)]


class PageOnly:
    urlpatterns = [path("agent/", include("agentapp.urls.page"))]


class ApiOnly:
    urlpatterns = [path("agent/", include("agentapp.urls.api"))]


class SseOnly:
    urlpatterns = [path("agent/", include("agentapp.urls.sse"))]


class ApiAndSse:
    # README: two sets joined under the one ``agentapp`` namespace.
    urlpatterns = [path("agent/", include((agentapp.urls.api.urlpatterns + agentapp.urls.sse.urlpatterns, "agentapp")))]


class Everything:
    urlpatterns = [path("agent/", include("agentapp.urls"))]


def routed(urlconf: Any, paths: list[str]) -> list[str]:
    """The paths among ``paths`` that the URLconf routes to a view."""
    found = []
    for candidate in paths:
        try:
            resolve(candidate, urlconf=urlconf)
        except Resolver404:
            continue
        found.append(candidate)
    return found


@pytest.fixture
def user(db: Any) -> Any:
    return get_user_model().objects.create_user("ada", password="x")


@pytest.mark.parametrize(
    ("urlconf", "expected"),
    [
        (SocketOnly, []),
        (PageOnly, PAGE_PATHS + API_PATHS),
        (ApiOnly, API_PATHS),
        (SseOnly, SSE_PATHS),
        (ApiAndSse, API_PATHS + SSE_PATHS),
        (Everything, PAGE_PATHS + API_PATHS + SSE_PATHS),
    ],
)
def test_each_set_routes_its_own_paths_only(urlconf: Any, expected: list[str]) -> None:
    assert routed(urlconf, PAGE_PATHS + API_PATHS + SSE_PATHS) == expected


def test_joined_sets_reverse_in_the_agentapp_namespace() -> None:
    assert reverse("agentapp:api_conversations", urlconf=ApiAndSse) == "/agent/api/conversations/"
    assert reverse("agentapp:sse", urlconf=ApiAndSse) == "/agent/sse/"


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_socket_only_project_chats_and_serves_no_page_api_or_sse(offline_instant, user) -> None:
    with override_settings(ROOT_URLCONF=SocketOnly):
        socket = SocketClient(user=user)
        hello = await socket.hello()
        await socket.prompt("Calculate 2+2")
        frames = await socket.until_finished()
        await socket.close()
    assert hello["messages"] == []
    assert frames[-1]["type"] == protocol.RUN_FINISHED and frames[-1]["status"] == "completed"


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=SocketOnly)
def test_a_socket_only_project_answers_404_for_the_page_the_api_and_sse(user) -> None:
    http = HttpClient()
    http.force_login(user)
    statuses = {url: http.get(url).status_code for url in PAGE_PATHS + API_PATHS + SSE_PATHS}
    assert statuses == dict.fromkeys(PAGE_PATHS + API_PATHS + SSE_PATHS, 404)


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=PageOnly)
def test_the_page_set_serves_the_page_and_its_api_but_not_sse(user) -> None:
    http = HttpClient()
    http.force_login(user)
    page = http.get("/agent/")
    assert page.status_code == 200
    assert 'data-api-path="/agent/api/conversations/"' in page.content.decode()
    assert http.get("/agent/api/conversations/").status_code == 200
    assert http.get("/agent/sse/").status_code == 404


@pytest.mark.django_db
@override_settings(ROOT_URLCONF=ApiOnly)
def test_the_api_set_serves_the_api_but_not_the_page(user) -> None:
    http = HttpClient()
    http.force_login(user)
    assert http.get("/agent/api/conversations/").status_code == 200
    assert http.get("/agent/").status_code == 404
    assert http.get(f"/agent/sse/{CONVERSATION}/").status_code == 404
