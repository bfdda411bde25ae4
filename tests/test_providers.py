"""Settings to a Strands model: provider names, dotted factories, keys, missing SDKs, one model per process."""

from __future__ import annotations

import sys
from typing import Any

import pytest
from django.core.exceptions import ImproperlyConfigured
from strands.models.anthropic import AnthropicModel
from strands.models.bedrock import BedrockModel
from strands.models.openai import OpenAIModel

from agentapp import providers
from agentapp.agents import build_default_agent
from agentapp.offline_model import OfflineModel
from agentapp.providers import build_model, shared_model

BUILT: list[dict[str, Any]] = []


def counting_factory(**options: Any) -> OfflineModel:
    """A model factory for ``AGENTAPP["MODEL"]``: records its options, returns an offline model."""
    BUILT.append(options)
    return OfflineModel(model_id=options.get("model_id", "counted"))


def not_a_model(**options: Any) -> object:
    return object()


@pytest.fixture(autouse=True)
def no_keys(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    BUILT.clear()


@pytest.fixture
def agentapp(settings: Any) -> Any:
    """Set ``AGENTAPP`` keys over the example site's."""

    def apply(**values: Any) -> None:
        settings.AGENTAPP = {**getattr(settings, "AGENTAPP", {}), **values}

    return apply


### Choosing a provider ###


@pytest.mark.parametrize("choice", ["gpt", "OpenAI", "", None, 3])
def test_unknown_provider_names_the_choices(agentapp, choice):
    agentapp(MODEL=choice)

    with pytest.raises(ImproperlyConfigured) as refused:
        build_model()

    message = str(refused.value)
    for name in ("'offline'", "'bedrock'", "'openai'", "'anthropic'", "dotted path"):
        assert name in message
    assert repr(choice) in message


def test_openai_with_the_two_settings(agentapp):
    options = {"client_args": {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-x"}, "model_id": "llama3.2"}
    agentapp(MODEL="openai", MODEL_OPTIONS=options)

    model = build_model()

    assert isinstance(model, OpenAIModel)
    assert model.config["model_id"] == "llama3.2"
    assert model.client_args == options["client_args"]


def test_openai_defaults_and_model_id_setting(agentapp, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env")
    agentapp(MODEL="openai")
    assert build_model().config["model_id"] == providers.OPENAI_DEFAULT_MODEL_ID

    agentapp(MODEL="openai", MODEL_ID="gpt-4.1", MODEL_OPTIONS={"params": {"max_tokens": 64}})
    model = build_model()
    assert (model.config["model_id"], model.config["params"]) == ("gpt-4.1", {"max_tokens": 64})

    # MODEL_OPTIONS wins over MODEL_ID.
    agentapp(MODEL="openai", MODEL_ID="gpt-4.1", MODEL_OPTIONS={"model_id": "o4-mini"})
    assert build_model().config["model_id"] == "o4-mini"


def test_anthropic_defaults_and_options(agentapp, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    agentapp(MODEL="anthropic")
    model = build_model()

    assert isinstance(model, AnthropicModel)
    assert model.config["model_id"] == providers.ANTHROPIC_DEFAULT_MODEL_ID
    assert model.config["max_tokens"] == providers.ANTHROPIC_DEFAULT_MAX_TOKENS
    assert model.client.api_key == "sk-ant-env"

    agentapp(MODEL="anthropic", MODEL_ID="claude-x", MODEL_OPTIONS={"max_tokens": 512, "client_args": {"api_key": "k"}})
    model = build_model()
    assert (model.config["model_id"], model.config["max_tokens"], model.client.api_key) == ("claude-x", 512, "k")


@pytest.mark.parametrize(("choice", "variable"), [("openai", "OPENAI_API_KEY"), ("anthropic", "ANTHROPIC_API_KEY")])
def test_a_provider_without_a_key_is_refused_at_build(agentapp, choice, variable):
    agentapp(MODEL=choice, MODEL_OPTIONS={"client_args": {"base_url": "http://127.0.0.1:9"}})

    with pytest.raises(ImproperlyConfigured, match=variable):
        build_model()


@pytest.mark.parametrize(
    ("choice", "module"), [("openai", "strands.models.openai"), ("anthropic", "strands.models.anthropic")]
)
def test_a_missing_sdk_names_the_extra(agentapp, monkeypatch, choice, module):
    monkeypatch.setitem(sys.modules, module, None)  # as if the SDK the Strands module imports were absent
    agentapp(MODEL=choice, MODEL_OPTIONS={"client_args": {"api_key": "k"}})

    with pytest.raises(ImproperlyConfigured, match=rf"pip install 'agentapp\[{choice}\]'"):
        build_model()


def test_bedrock_settings_still_work_and_model_settings_win(agentapp):
    agentapp(
        MODEL="bedrock",
        BEDROCK_MODEL_ID="bedrock-id",
        BEDROCK_REGION="eu-west-1",
        BEDROCK_ENDPOINT_URL="http://127.0.0.1:9",
    )
    model = build_model()
    assert isinstance(model, BedrockModel)
    assert (model.config["model_id"], model.client.meta.region_name) == ("bedrock-id", "eu-west-1")

    agentapp(MODEL_ID="model-id", MODEL_OPTIONS={"max_tokens": 32})
    model = build_model()
    assert (model.config["model_id"], model.config["max_tokens"]) == ("model-id", 32)
    assert model.client.meta.endpoint_url == "http://127.0.0.1:9"


def test_offline_takes_the_model_id(agentapp):
    agentapp(MODEL="offline", MODEL_ID="demo")

    model = build_model()

    assert isinstance(model, OfflineModel)
    assert model.get_config()["model_id"] == "demo"


### Dotted paths ###


def test_a_dotted_factory_gets_the_options(agentapp):
    agentapp(MODEL="tests.test_providers.counting_factory", MODEL_ID="m1", MODEL_OPTIONS={"host": "h"})

    model = build_model()

    assert isinstance(model, OfflineModel)
    assert BUILT == [{"model_id": "m1", "host": "h"}]


def test_a_strands_model_class_is_a_factory(agentapp):
    options = {"client_args": {"base_url": "http://127.0.0.1:9/v1", "api_key": "k"}, "model_id": "qwen"}
    agentapp(MODEL="strands.models.openai.OpenAIModel", MODEL_OPTIONS=options)

    model = build_model()

    assert isinstance(model, OpenAIModel)
    assert model.config["model_id"] == "qwen"


@pytest.mark.parametrize(
    ("path", "match"),
    [
        ("tests.test_providers.no_such_factory", "cannot be imported"),
        ("no_such_package.factory", "cannot be imported"),
        ("tests.test_providers.not_a_model", "returned object, not a Model"),
    ],
)
def test_a_bad_dotted_path_is_refused(agentapp, path, match):
    agentapp(MODEL=path)

    with pytest.raises(ImproperlyConfigured, match=match):
        build_model()


### Retries ###


def test_model_retry_applies_to_every_provider(agentapp):
    agentapp(MODEL="openai", MODEL_OPTIONS={"client_args": {"api_key": "k"}}, MODEL_RETRY={"max_attempts": 2})
    assert build_default_agent(None, None)._retry_strategy._max_attempts == 2

    agentapp(MODEL="bedrock", MODEL_OPTIONS={}, BEDROCK_RETRY={"max_attempts": 4, "initial_delay": 0}, MODEL_RETRY={})
    assert build_default_agent(None, None)._retry_strategy._max_attempts == 4
    agentapp(MODEL_RETRY={"max_attempts": 5})
    strategy = build_default_agent(None, None)._retry_strategy
    assert (strategy._max_attempts, strategy._initial_delay) == (5, 0)


### One model per process ###


def test_agents_share_the_process_model(agentapp):
    agentapp(MODEL="tests.test_providers.counting_factory")

    first, second = build_default_agent(None, None), build_default_agent(None, None)

    assert first.model is second.model is shared_model()
    assert len(BUILT) == 1


def test_a_settings_change_builds_a_new_model(agentapp):
    agentapp(MODEL="tests.test_providers.counting_factory", MODEL_ID="before")
    before = shared_model()

    agentapp(MODEL_ID="after")
    after = shared_model()

    assert after is not before
    assert (before.get_config()["model_id"], after.get_config()["model_id"]) == ("before", "after")
    assert shared_model() is after
    assert len(BUILT) == 2


### The README's examples ###


def readme_examples() -> list[str]:
    """The Python blocks of the README's "Use a real model" section."""
    from pathlib import Path

    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Use a real model", 1)[1].split("\n### ", 1)[0]
    return [block.split("```", 1)[0] for block in section.split("```python\n")[1:]]


@pytest.mark.parametrize(
    ("index", "model_class", "model_id"),
    [(0, OpenAIModel, "llama3.2"), (1, AnthropicModel, "claude-sonnet-4-20250514")],
)
def test_the_readme_settings_build_the_model(agentapp, monkeypatch, index, model_class, model_id):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-env")
    namespace: dict[str, Any] = {}
    exec(readme_examples()[index], namespace)
    assert set(namespace["AGENTAPP"]) == {"MODEL", "MODEL_OPTIONS"}  # two settings
    agentapp(**namespace["AGENTAPP"])

    model = shared_model()

    assert isinstance(model, model_class)
    assert model.config["model_id"] == model_id
