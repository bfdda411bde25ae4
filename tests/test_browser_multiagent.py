"""The chat page labels each assistant text block of a multi-agent run with the node that wrote it.

A real daphne server runs ``tests.multiagent_agents.swarm`` (two offline agents, the first hands off to the second);
after a reload the stored answer is shown from history.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from playwright.sync_api import expect

from tests.livedaphne import LiveDaphne, live_daphne
from tests.livesettings import agentapp_settings
from tests.test_browser import RUN_TIMEOUT_MS, Tab, browser, new_tab  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaphne]:
    """A demo site whose agent is a two-agent Swarm."""
    tmp = tmp_path_factory.mktemp("live_multiagent")
    env = {
        "AGENTAPP_DEMO": "1",
        "AGENTAPP_OFFLINE_TPS": "0",
        **agentapp_settings(tmp, AGENT_FACTORY="tests.multiagent_agents.swarm"),
    }
    with live_daphne(tmp, env) as live:
        yield live
    failures = [line for line in live.output().splitlines() if "Traceback" in line or " ERROR " in line]
    assert failures == [], live.output()


def test_each_node_text_is_labelled_with_its_agent_and_the_answer_stays(server: LiveDaphne, new_tab) -> None:  # noqa: F811
    tab: Tab = new_tab().open(server.url + "/")
    tab.ask("Hand off to writer and name the capital of France")
    run = tab.last_run()
    expect(run.locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    blocks = run.locator(".message.assistant")
    expect(blocks.locator(".speaker")).to_have_text(["researcher", "writer"])
    expect(blocks.nth(0).locator(".markdown")).to_have_text("I handed off to writer.")
    expect(blocks.nth(1).locator(".markdown")).to_have_text("The capital of France is Paris.")
    expect(run.locator(".run-note")).to_have_text(["Handoff: researcher → writer"])

    tab.page.reload()
    expect(tab.page.locator("#connection")).to_have_attribute("data-state", "open")
    stored = tab.page.locator("#transcript .run .message.assistant")
    expect(stored).to_have_count(1)
    expect(stored.locator(".markdown")).to_have_text("The capital of France is Paris.")
