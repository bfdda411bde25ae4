"""A setting that needs an optional extra the install lacks fails at startup with the pip command to run."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from django.core.exceptions import ImproperlyConfigured

from agentapp.extras import check_settings

REDIS_LAYER = {"default": {"BACKEND": "channels_redis.core.RedisChannelLayer", "CONFIG": {"hosts": ["redis://x"]}}}
MEMORY_LAYER = {"default": {"BACKEND": "agentapp.layers.InMemoryChannelLayer"}}


def nothing_optional(module: str) -> bool:
    """An install with none of the extras."""
    return module not in {"channels_redis", "boto3", "openai", "anthropic", "psycopg"}


def test_the_redis_layer_without_the_redis_extra_names_it() -> None:
    with pytest.raises(ImproperlyConfigured) as refused:
        check_settings(REDIS_LAYER, "offline", nothing_optional)
    assert str(refused.value) == (
        "CHANNEL_LAYERS['default'] (channels_redis.core.RedisChannelLayer) needs the channels_redis package, "
        "which is not installed: pip install 'agentapp[redis]'."
    )


@pytest.mark.parametrize(("model", "extra"), [("bedrock", "bedrock"), ("openai", "openai"), ("anthropic", "anthropic")])
def test_a_model_without_its_extra_names_it(model: str, extra: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=rf"pip install 'agentapp\[{extra}\]'"):
        check_settings(MEMORY_LAYER, model, nothing_optional)


def test_the_core_install_passes_with_core_settings() -> None:
    check_settings(MEMORY_LAYER, "offline", nothing_optional)
    check_settings(REDIS_LAYER, "bedrock")  # this checkout installs every extra


def test_agentapp_imports_no_optional_package_at_module_level() -> None:
    optional = {"channels_redis", "redis", "boto3", "botocore", "openai", "anthropic", "psycopg", "dj_database_url"}
    package = Path(__file__).resolve().parents[1] / "agentapp"
    found = []
    for source in sorted(package.rglob("*.py")):
        for node in ast.parse(source.read_text(encoding="utf-8")).body:
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module or ""]
            found += [f"{source.name}: {name}" for name in names if name.partition(".")[0] in optional]
    assert found == []
