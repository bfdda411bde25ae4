"""Settings to a Strands model: the provider named by ``AGENTAPP["MODEL"]``, built once per process and shared.

A provider is a name (``offline``, ``bedrock``, ``openai``, ``anthropic``) or the dotted path of a callable that
takes the options as keyword arguments and returns a ``strands.models.Model`` (a Strands model class will do).
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string
from strands.models.model import Model

from .conf import app_settings

# Model ids used when neither MODEL_ID nor MODEL_OPTIONS["model_id"] names one.
OPENAI_DEFAULT_MODEL_ID = "gpt-4o-mini"
ANTHROPIC_DEFAULT_MODEL_ID = "claude-sonnet-4-20250514"
# Anthropic's API requires max_tokens on every request; this is used when MODEL_OPTIONS sets none.
ANTHROPIC_DEFAULT_MAX_TOKENS = 4096

### Providers ###


def _offline(options: dict[str, Any]) -> Model:
    from .offline_model import OfflineModel

    return OfflineModel(**{"tokens_per_second": float(app_settings.OFFLINE_TOKENS_PER_SECOND), **options})


def bedrock_options() -> dict[str, Any]:
    """Keyword arguments for ``BedrockModel`` from the ``BEDROCK_*`` settings; ``BEDROCK_OPTIONS`` wins."""
    options: dict[str, Any] = {"model_id": app_settings.BEDROCK_MODEL_ID, **app_settings.BEDROCK_OPTIONS}
    if app_settings.BEDROCK_REGION and "boto_session" not in options:
        options.setdefault("region_name", app_settings.BEDROCK_REGION)
    if app_settings.BEDROCK_ENDPOINT_URL:
        options.setdefault("endpoint_url", app_settings.BEDROCK_ENDPOINT_URL)
    if app_settings.BEDROCK_CLIENT_CONFIG is not None and "boto_client_config" not in options:
        from botocore.config import Config
        from strands.models.bedrock import DEFAULT_READ_TIMEOUT

        config = {"read_timeout": DEFAULT_READ_TIMEOUT, **app_settings.BEDROCK_CLIENT_CONFIG}
        options["boto_client_config"] = Config(**config)
    return options


def _bedrock(options: dict[str, Any]) -> Model:
    from strands.models.bedrock import BedrockModel

    return BedrockModel(**{**bedrock_options(), **options})


def _require_key(provider: str, client_args: dict[str, Any], keys: tuple[str, ...], env: tuple[str, ...]) -> None:
    """Refuse to build a model that could only fail at its first request for want of a key."""
    if any(client_args.get(key) for key in keys) or any(os.environ.get(name) for name in env):
        return
    raise ImproperlyConfigured(
        f"AGENTAPP['MODEL'] is {provider!r} but no API key is set: put it in "
        f"AGENTAPP['MODEL_OPTIONS']['client_args']['api_key'] or the {env[0]} environment variable "
        "(a local server that needs none still wants one, any string)."
    )


def _openai(options: dict[str, Any]) -> Model:
    from strands.models.openai import OpenAIModel

    options = {"model_id": OPENAI_DEFAULT_MODEL_ID, **options}
    if "client" not in options and "bedrock_mantle_config" not in options:
        _require_key("openai", options.get("client_args") or {}, ("api_key",), ("OPENAI_API_KEY",))
    return OpenAIModel(**options)


def _anthropic(options: dict[str, Any]) -> Model:
    from strands.models.anthropic import AnthropicModel

    options = {"model_id": ANTHROPIC_DEFAULT_MODEL_ID, "max_tokens": ANTHROPIC_DEFAULT_MAX_TOKENS, **options}
    _require_key(
        "anthropic",
        options.get("client_args") or {},
        ("api_key", "auth_token"),
        ("ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"),
    )
    return AnthropicModel(**options)


# Each provider: the builder and the optional extra that installs its SDK.
PROVIDERS: dict[str, tuple[Callable[[dict[str, Any]], Model], str | None]] = {
    "offline": (_offline, None),
    "bedrock": (_bedrock, None),
    "openai": (_openai, "openai"),
    "anthropic": (_anthropic, "anthropic"),
}

### Building ###


def model_options() -> dict[str, Any]:
    """Keyword arguments for the provider: ``MODEL_ID`` as ``model_id``, then ``MODEL_OPTIONS`` over it."""
    options: dict[str, Any] = {"model_id": app_settings.MODEL_ID} if app_settings.MODEL_ID else {}
    return {**options, **app_settings.MODEL_OPTIONS}


def model_factory(choice: Any) -> Callable[[dict[str, Any]], Model]:
    """The builder for ``AGENTAPP["MODEL"]``, or ImproperlyConfigured naming the choices."""
    if choice in PROVIDERS:
        return PROVIDERS[choice][0]
    if not isinstance(choice, str) or "." not in choice:
        names = ", ".join(repr(name) for name in PROVIDERS)
        raise ImproperlyConfigured(
            f"AGENTAPP['MODEL'] must be one of {names} or the dotted path of a model factory, not {choice!r}."
        )
    try:
        factory = import_string(choice)
    except ImportError as exc:
        raise ImproperlyConfigured(f"AGENTAPP['MODEL'] names {choice!r}, which cannot be imported: {exc}") from exc
    return lambda options: factory(**options)


def build_model() -> Model:
    """A new model as ``AGENTAPP["MODEL"]`` and its options say; most callers want ``shared_model``."""
    choice = app_settings.MODEL
    build = model_factory(choice)
    try:
        model = build(model_options())
    except ImportError as exc:
        extra = PROVIDERS.get(choice, (None, None))[1]
        if extra is None:
            raise
        raise ImproperlyConfigured(
            f"AGENTAPP['MODEL'] is {choice!r}, whose SDK is not installed: pip install 'agentapp[{extra}]' ({exc})."
        ) from exc
    if not isinstance(model, Model):
        raise ImproperlyConfigured(f"AGENTAPP['MODEL'] {choice!r} returned {type(model).__name__}, not a Model.")
    return model


### The process's model ###

# Strands models keep no per-request state: OpenAIModel opens a client per request, AnthropicModel holds one
# httpx-based async client (its pool belongs to the server's event loop), BedrockModel a thread-safe boto3 client
# and OfflineModel only its config; what Bedrock and Anthropic learn about a model id (drop stale thinking blocks)
# holds for every conversation. So every agent of the process can share one.
_lock = threading.Lock()
_shared: Model | None = None


def shared_model() -> Model:
    """The process's model, built on first use and kept until ``AGENTAPP`` changes."""
    global _shared
    with _lock:
        if _shared is None:
            _shared = build_model()
        return _shared


def forget_shared_model() -> None:
    """Drop the process's model; the next ``shared_model`` builds a new one from the settings."""
    global _shared
    with _lock:
        _shared = None


@receiver(setting_changed)
def _forget_on_change(*, setting: str, **kwargs: Any) -> None:
    if setting == "AGENTAPP":
        forget_shared_model()
