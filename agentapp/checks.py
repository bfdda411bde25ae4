"""System checks (``manage.py check``, and every management command): settings that would fail only at run time.

- ``agentapp.E001``: ``WORKER_CHANNEL`` with an in-memory channel layer (workers are other processes, which such a
  layer cannot reach: prompts would be queued and never heard of again).
- ``agentapp.E002``: a ``MODEL`` that names no provider and no importable factory.
"""

from __future__ import annotations

from typing import Any

from channels.layers import InMemoryChannelLayer
from django.conf import settings
from django.core.checks import CheckMessage, Error, register
from django.core.exceptions import ImproperlyConfigured
from django.utils.module_loading import import_string

from .conf import app_settings


def layer_is_in_memory(channel_layers: dict[str, Any]) -> bool:
    """Whether the default channel layer keeps its messages inside one process."""
    backend = (channel_layers.get("default") or {}).get("BACKEND", "")
    try:
        layer_class = import_string(backend)
    except ImportError:
        return False  # the extras check names the missing package
    return isinstance(layer_class, type) and issubclass(layer_class, InMemoryChannelLayer)


@register()
def check_worker_layer(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Workers need a channel layer shared between processes."""
    if not app_settings.WORKER_CHANNEL or not layer_is_in_memory(getattr(settings, "CHANNEL_LAYERS", {})):
        return []
    return [
        Error(
            "AGENTAPP['WORKER_CHANNEL'] is set but the default channel layer is in-memory: worker processes would "
            "never hear of a prompt, nor their frames reach a socket.",
            hint="Use a layer shared between processes (channels_redis), or leave WORKER_CHANNEL unset to run agents "
            "in the web process.",
            id="agentapp.E001",
        )
    ]


@register()
def check_model(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``MODEL`` names a known provider or an importable factory."""
    from .providers import model_factory

    try:
        model_factory(app_settings.MODEL)
    except ImproperlyConfigured as refused:
        return [Error(str(refused), id="agentapp.E002")]
    return []
