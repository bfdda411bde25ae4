"""Trace attributes: every span of a run (agent, cycle, model, tool) names its conversation, run and user."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from strands import Agent

from agentapp import tracing
from agentapp.offline_model import OfflineModel
from tests.test_access import chat
from tests.wsclient import Client


@pytest.fixture(scope="module")
def spans() -> Iterator[InMemorySpanExporter]:
    """Every finished span of the process, kept in memory (the global provider is set once per process)."""
    provider = trace.get_tracer_provider()
    if not isinstance(provider, TracerProvider):
        provider = TracerProvider()
        trace.set_tracer_provider(provider)
    exporter = InMemorySpanExporter()
    processor = SimpleSpanProcessor(exporter)
    provider.add_span_processor(processor)
    yield exporter
    processor.shutdown()


def run_spans(exporter: InMemorySpanExporter, run_id: str) -> list[Any]:
    return [span for span in exporter.get_finished_spans() if span.attributes.get(tracing.RUN_ID) == run_id]


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_runs_spans_carry_its_conversation_run_and_user(settings, spans):
    settings.AGENTAPP = {"OFFLINE_TOKENS_PER_SECOND": 0}
    user = await get_user_model().objects.acreate_user("traced", password=None)
    page = Client(user=user)
    conversation_id = (await page.hello())["conversation_id"]
    spans.clear()

    first = (await chat(page, "Calculate 2+2"))[-1]["run_id"]
    second = (await chat(page, "Calculate 3+4"))[-1]["run_id"]
    await page.close()

    for run_id in (first, second):
        traced = run_spans(spans, run_id)
        # The agent, each event loop cycle, each model call and the calculator call.
        assert {span.name for span in traced} == {
            "invoke_agent agentapp",
            "execute_event_loop_cycle",
            "chat",
            "execute_tool calculator",
        }
        for span in traced:
            assert span.attributes[tracing.CONVERSATION_ID] == conversation_id
            assert span.attributes[tracing.SESSION_ID] == conversation_id
            assert span.attributes[tracing.USER_ID] == str(user.pk)
            assert span.attributes[tracing.ENDUSER_ID] == str(user.pk)
        # One trace per run: every span of the run shares the agent span's trace id.
        assert len({span.context.trace_id for span in traced}) == 1
    # Every span Strands made in these runs carries a run id (none kept the previous run's).
    assert {span.attributes.get(tracing.RUN_ID) for span in spans.get_finished_spans()} == {first, second}


def test_tag_run_replaces_the_last_run_and_keeps_the_factorys_attributes():
    attributes = {"team": "sales", tracing.RUN_ID: "set by the factory"}
    agent = Agent(model=OfflineModel(), trace_attributes=attributes, callback_handler=None)
    tracing.tag_run(agent, "c-1", "r-1", 7)
    assert agent.trace_attributes == {
        "team": "sales",
        tracing.CONVERSATION_ID: "c-1",
        tracing.SESSION_ID: "c-1",
        tracing.RUN_ID: "r-1",
        tracing.USER_ID: "7",
        tracing.ENDUSER_ID: "7",
    }
    tracing.tag_run(agent, "c-1", "r-2", None)  # an anonymous visitor: no user on the spans
    assert agent.trace_attributes == {
        "team": "sales",
        tracing.CONVERSATION_ID: "c-1",
        tracing.SESSION_ID: "c-1",
        tracing.RUN_ID: "r-2",
    }
