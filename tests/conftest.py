"""Shared fixtures: the channel layer under test (in-memory and real Redis) and WebSocket helpers."""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
from channels.layers import channel_layers

REDIS_URL = os.environ.get("AGENTAPP_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

LAYERS = {
    "memory": {"BACKEND": "agentapp.layers.InMemoryChannelLayer"},
    "redis": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}},
    "redis_pubsub": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer", "CONFIG": {"hosts": [REDIS_URL]}},
}


def require_redis() -> None:
    """Fail (never skip) when the Redis server the suite needs is not answering."""
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2).ping()
    except redis.RedisError as exc:
        pytest.fail(f"Redis at {REDIS_URL} is required by this test and is not reachable: {exc}")


@pytest.fixture(params=["memory", "redis"])
def layer(request: pytest.FixtureRequest, settings: Any) -> str:
    """Run the test once with the in-memory layer and once with the Redis layer."""
    if request.param.startswith("redis"):
        require_redis()
    settings.CHANNEL_LAYERS = {"default": LAYERS[request.param]}
    channel_layers.backends.clear()
    yield request.param
    channel_layers.backends.clear()


@pytest.fixture
def offline_instant(settings: Any) -> None:
    """The offline model with no pacing, so tests run at full speed."""
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "OFFLINE_TOKENS_PER_SECOND": 0}


def decode(raw: str) -> dict[str, Any]:
    """Parse a server frame, failing the test on anything but a JSON object."""
    frame = json.loads(raw)
    assert isinstance(frame, dict), raw
    return frame


@pytest.fixture(scope="session")
def django_db_modify_db_settings(django_db_modify_db_settings_parallel_suffix: None) -> None:
    """Close each connection after use, as Django does with ``CONN_MAX_AGE=0``, whatever the example site keeps.

    Async tests query from worker threads (Channels' database thread, one per request of Django's ASGI handler); a
    connection kept open in one of them would stop the test database from being dropped at the end.
    """
    from django.conf import settings

    for database in settings.DATABASES.values():
        database["CONN_MAX_AGE"] = 0


@pytest.fixture(scope="session", autouse=True)
def close_worker_thread_connections(django_db_setup: Any, django_db_blocker: Any) -> Any:
    """Close the connection async tests left open in asgiref's worker thread, so the test database can be dropped."""
    yield
    from asgiref.sync import SyncToAsync
    from django.db import connections

    from agentapp import dbwork

    with django_db_blocker.unblock():
        SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=30)
        dbwork.close_connections()


@pytest.fixture
def ada(db: Any) -> Any:
    """A user, ada (password "x")."""
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("ada", password="x")


@pytest.fixture
def stranger(db: Any) -> Any:
    """A user with no access to anyone else's conversations (password "x")."""
    from django.contrib.auth import get_user_model

    return get_user_model().objects.create_user("stranger", password="x")


@pytest.fixture
def paced(settings: Any) -> None:
    """The offline model streams 600 tokens a second (a run lasts long enough to be joined or cut)."""
    settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), "OFFLINE_TOKENS_PER_SECOND": 600}


@pytest.fixture
def people(db: Any) -> dict[str, Any]:
    """Four users: an owner, bob and vera (made a member and a viewer by ``shared``) and eve, a stranger."""
    from django.contrib.auth import get_user_model

    users = get_user_model().objects
    return {name: users.create_user(name, password=None) for name in ("owner", "bob", "vera", "eve")}


@pytest.fixture
def shared(people: dict[str, Any]) -> Any:
    """The owner's conversation, shared with bob as a member and vera as a viewer; eve is a stranger."""
    from agentapp.models import Conversation, ConversationMember

    conversation = Conversation.objects.create(owner=people["owner"], title="Shared")
    ConversationMember.objects.create(conversation=conversation, user=people["bob"], role="member")
    ConversationMember.objects.create(conversation=conversation, user=people["vera"], role="viewer")
    return conversation
