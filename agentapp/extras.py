"""Optional parts of agentapp installed as extras (``pip install 'agentapp[redis]'``), and the check that a
setting naming one finds it installed.

The core install carries what every site needs; the Redis channel layer, the PostgreSQL driver and the model
providers' SDKs are extras, imported only where they are used. ``check_settings`` runs when Django starts
(``AgentappConfig.ready``) so a missing extra is an ``ImproperlyConfigured`` naming the pip command, not an
ImportError deep in a request.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from importlib.util import find_spec
from typing import Any

from django.core.exceptions import ImproperlyConfigured

# Module a backend or provider needs, mapped to the extra that installs it.
EXTRA_OF_MODULE = {
    "channels_redis": "redis",
    "boto3": "bedrock",
    "psycopg": "postgres",
    "openai": "openai",
    "anthropic": "anthropic",
}
# ``AGENTAPP["MODEL"]`` values whose SDK comes with an extra, mapped to the module they import.
MODEL_MODULES = {"bedrock": "boto3", "openai": "openai", "anthropic": "anthropic"}


def installed(module: str) -> bool:
    """Whether ``module`` can be imported, without importing it."""
    return find_spec(module) is not None


def require(module: str, setting: str, is_installed: Callable[[str], bool] = installed) -> None:
    """Raise ImproperlyConfigured naming the extra to install when ``setting`` needs ``module`` and it is missing."""
    if is_installed(module):
        return
    extra = EXTRA_OF_MODULE.get(module)
    fix = f"pip install 'agentapp[{extra}]'" if extra else f"pip install {module}"
    raise ImproperlyConfigured(f"{setting} needs the {module} package, which is not installed: {fix}.")


def check_settings(
    channel_layers: Mapping[str, Any], model: Any, is_installed: Callable[[str], bool] = installed
) -> None:
    """Check that the channel layers (``CHANNEL_LAYERS``) and the model (``AGENTAPP["MODEL"]``) have their extras."""
    for alias, layer in channel_layers.items():
        backend = str(layer.get("BACKEND", "")) if isinstance(layer, Mapping) else ""
        module = backend.partition(".")[0]
        if module in EXTRA_OF_MODULE:
            require(module, f"CHANNEL_LAYERS[{alias!r}] ({backend})", is_installed)
    if isinstance(model, str) and model in MODEL_MODULES:
        require(MODEL_MODULES[model], f"AGENTAPP['MODEL'] = {model!r}", is_installed)
