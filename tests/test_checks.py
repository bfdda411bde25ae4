"""agentapp's system checks: settings that would fail only at run time are refused by ``manage.py check``."""

from __future__ import annotations

from typing import Any

import pytest
from django.core import checks

REDIS = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": ["redis://x"]}}}


def agentapp_errors() -> list[str]:
    return [message.id for message in checks.run_checks() if (message.id or "").startswith("agentapp.")]


@pytest.mark.parametrize("backend", ["channels.layers.InMemoryChannelLayer", "agentapp.layers.InMemoryChannelLayer"])
def test_workers_with_an_in_memory_layer_are_refused(settings: Any, backend: str) -> None:
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": backend}}
    settings.AGENTAPP = {"WORKER_CHANNEL": "agentapp.runs"}
    assert agentapp_errors() == ["agentapp.E001"]


def test_workers_with_redis_and_in_memory_without_workers_pass(settings: Any) -> None:
    settings.CHANNEL_LAYERS = REDIS
    settings.AGENTAPP = {"WORKER_CHANNEL": "agentapp.runs"}
    assert agentapp_errors() == []
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "agentapp.layers.InMemoryChannelLayer"}}
    settings.AGENTAPP = {}
    assert agentapp_errors() == []


@pytest.mark.parametrize("model", ["gpt", "agentapp.no_such_module.factory"])
def test_an_unknown_model_is_refused(settings: Any, model: str) -> None:
    settings.AGENTAPP = {"MODEL": model}
    assert agentapp_errors() == ["agentapp.E002"]


def test_a_known_model_passes(settings: Any) -> None:
    settings.AGENTAPP = {"MODEL": "offline"}
    assert agentapp_errors() == []
