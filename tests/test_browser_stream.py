"""The chat page shows reasoning folded, citations under their text and a streaming tool's progress on its card.

A real daphne server runs ``tests.stream_agents.streaming_agent`` (the offline model and a streaming tool); the
page gets the frames live, then the same from the stored history after a reload.
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
    """A demo site whose agent has the streaming ``progress`` tool."""
    tmp = tmp_path_factory.mktemp("live_stream")
    env = {
        "AGENTAPP_DEMO": "1",
        "AGENTAPP_OFFLINE_TPS": "0",
        **agentapp_settings(tmp, AGENT_FACTORY="tests.stream_agents.streaming_agent"),
    }
    with live_daphne(tmp, env) as live:
        yield live
    failures = [line for line in live.output().splitlines() if "Traceback" in line or " ERROR " in line]
    assert failures == [], live.output()


def completed(tab: Tab, prompt: str) -> None:
    tab.ask(prompt)
    expect(tab.last_run().locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)


def test_reasoning_citations_and_progress_are_shown_live_and_from_history(server: LiveDaphne, new_tab) -> None:  # noqa: F811
    tab: Tab = new_tab().open(server.url + "/")
    completed(tab, "Think about cats")
    reasoning = tab.last_run().locator("details.reasoning")
    expect(reasoning).to_have_count(1)
    expect(reasoning).not_to_have_attribute("open", "")
    expect(reasoning.locator(".reasoning-text")).to_have_text("Let me think about cats: it deserves a careful answer.")

    completed(tab, "Cite <b onclick=x>bold</b> sources")
    citations = tab.last_run().locator(".message.assistant .citations .citation")
    expect(citations).to_have_text(["<b onclick=x>bold</b> sources"])  # a title is text, never markup
    expect(tab.last_run().locator(".markdown")).to_contain_text("this answer has a source.")

    completed(tab, 'Call progress with {"steps": 2}')
    card = tab.last_run().locator(".tool-card")
    expect(card.locator(".tool-progress")).to_have_text("finished 2 steps")
    expect(card.locator(".tool-result")).to_have_text("finished 2 steps")

    tab.page.reload()
    expect(tab.page.locator("#connection")).to_have_attribute("data-state", "open")
    runs = tab.page.locator("#transcript .run")
    expect(runs).to_have_count(3)
    expect(runs.nth(0).locator("details.reasoning .reasoning-text")).to_contain_text("Let me think about cats")
    expect(runs.nth(1).locator(".citations .citation")).to_have_text(["<b onclick=x>bold</b> sources"])
    expect(runs.nth(1).locator(".markdown")).to_contain_text("this answer has a source.")
    assert tab.page.locator("#transcript .citations b").count() == 0
