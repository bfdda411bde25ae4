"""Queued prompts on the chat page, in a real browser (Debian's chromium through Playwright) against real daphne.

While a paced offline run streams, a prompt sent from the page waits in the conversation's queue: the "Queued" list
shows it with a Cancel button, and it starts when the run ends. Every wait is a Playwright expectation, never a sleep.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.sync_api import Locator, expect

from tests.livedaphne import LiveCluster, LiveDaphne, manage, own_database, serve, server_env
from tests.livesettings import agentapp_settings
from tests.test_browser import XSS_PROMPT, Tab, browser, new_tab  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow

TOKENS_PER_SECOND = 20
# At TOKENS_PER_SECOND this run streams for 8 s: long enough to queue, reload and cancel behind it.
LONG_PROMPT = "Stream 160 tokens"
RUN_TIMEOUT_MS = 30_000

# Run by ``manage.py shell``: each stored run of a conversation, as {prompt: status}.
RUNS_SCRIPT = """
import json, os
from agentapp.models import Run
runs = Run.objects.filter(conversation_id=os.environ["AGENTAPP_TEST_CONVERSATION"]).order_by("started_at")
print(json.dumps({run.prompt: run.status for run in runs}))
"""


@dataclass(frozen=True)
class Site:
    """A running server and the environment of manage.py commands against its database."""

    live: LiveDaphne
    environment: dict[str, str]

    def runs(self, conversation_id: str) -> dict[str, str]:
        """The stored runs of a conversation: prompt -> status."""
        env = {**self.environment, "AGENTAPP_TEST_CONVERSATION": conversation_id}
        return json.loads(manage(env, "shell", "-c", RUNS_SCRIPT).strip().splitlines()[-1])


def start_site(tmp_dir: Path, env: dict[str, str]) -> Iterator[Site]:
    """Serve the example site on a database of its own; on the way out, fail on any traceback or error it logged."""
    with own_database(tmp_dir) as database_url:
        environment = server_env(database_url, env)
        manage(environment, "migrate", "--noinput")
        with serve(environment, tmp_dir / "daphne.log") as live:
            yield Site(live, environment)
    failures = [line for line in live.output().splitlines() if "Traceback" in line or " ERROR " in line]
    assert failures == [], live.output()


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The example site in demo mode (anonymous chat), the offline model paced at TOKENS_PER_SECOND."""
    yield from start_site(
        tmp_path_factory.mktemp("queue"), {"AGENTAPP_OFFLINE_TPS": str(TOKENS_PER_SECOND), "AGENTAPP_DEMO": "1"}
    )


@pytest.fixture(scope="module")
def limited_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    """The example site for logged-in users, allowing each one run a minute."""
    tmp_dir = tmp_path_factory.mktemp("queue_limited")
    env = {
        **agentapp_settings(tmp_dir, RUNS_PER_USER_PER_MINUTE=1),
        "AGENTAPP_OFFLINE_TPS": str(TOKENS_PER_SECOND),
        "AGENTAPP_DEMO": "0",
    }
    yield from start_site(tmp_dir, env)


### Helpers ###


def queue_prompt(tab: Tab, prompt: str) -> None:
    """Send a prompt while a run is going: the Queue button stands where Send was."""
    expect(tab.page.locator("#send")).to_be_hidden()
    tab.page.locator("#prompt").fill(prompt)
    tab.page.locator("#queue-send").click()


def queued(tab: Tab) -> Locator:
    """The prompts of the page's Queued list, in order."""
    return tab.page.locator("#queued .queued-run .queued-prompt")


def conversation_of(tab: Tab) -> str:
    """The id of the conversation the page shows (its ?c= parameter)."""
    match = re.search(r"[?&]c=([0-9a-f-]{36})", tab.page.url)
    assert match, tab.page.url
    return match.group(1)


def join(tab: Tab, url: str) -> Tab:
    """Open a conversation that may have a run going (Send then stays disabled, unlike ``Tab.open``)."""
    tab.page.goto(url)
    expect(tab.page.locator("#connection")).to_have_attribute("data-state", "open")
    return tab


### Tests ###


def test_prompts_sent_during_a_run_are_queued_cancellable_and_run_next(site: Site, new_tab) -> None:  # noqa: F811
    asker = new_tab().open(site.live.url)
    expect(asker.page).to_have_url(re.compile(r"\?c=[0-9a-f-]{36}$"))
    asker.ask(LONG_PROMPT)
    first = asker.last_run()
    expect(first.locator(".run-status")).to_have_text("running")
    expect(asker.page.locator("#queue")).to_be_hidden()

    # Two prompts sent during the run wait in order; the second is HTML, shown as text.
    queue_prompt(asker, "Calculate 2+2")
    expect(queued(asker)).to_have_text(["Calculate 2+2"])
    expect(asker.page.locator("#queue")).to_be_visible()
    queue_prompt(asker, XSS_PROMPT)
    expect(queued(asker)).to_have_text(["Calculate 2+2", XSS_PROMPT])
    assert asker.page.locator("#agentapp img, #agentapp script").count() == 0

    # A second browser on the conversation sees the queue from its conversation frame.
    watcher = join(new_tab(cookies_from=asker), asker.page.url)
    expect(queued(watcher)).to_have_text(["Calculate 2+2", XSS_PROMPT])

    # Cancel takes the HTML prompt out of the queue, on both pages.
    asker.page.locator("#queued .queued-run").nth(1).locator(".queued-cancel").click()
    for tab in (asker, watcher):
        expect(queued(tab)).to_have_text(["Calculate 2+2"])
    # All of the above happened while the first run was still streaming.
    expect(first.locator(".run-status")).to_have_text("running")

    # The first run ends, the queued prompt starts as a run of its own and leaves the list.
    for tab in (asker, watcher):
        expect(tab.page.locator("#transcript .run")).to_have_count(2, timeout=RUN_TIMEOUT_MS)
        expect(tab.page.locator("#transcript .run").first.locator(".run-status")).to_have_text("completed")
        second = tab.last_run()
        expect(second.locator(".message.user")).to_have_text("Calculate 2+2")
        expect(second.locator(".message.assistant")).to_have_text("2+2 = 4.", timeout=RUN_TIMEOUT_MS)
        expect(second.locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
        expect(tab.page.locator("#queue")).to_be_hidden()
        expect(tab.page.locator("#send")).to_be_enabled()
        expect(tab.page.locator("#queue-send")).to_be_hidden()
        assert tab.page.locator("#agentapp img, #agentapp script").count() == 0
        assert tab.page.evaluate("window.__xss") is None

    assert site.runs(conversation_of(asker)) == {
        LONG_PROMPT: "completed",
        "Calculate 2+2": "completed",
        XSS_PROMPT: "cancelled",
    }


def test_a_queued_prompt_refused_when_its_turn_comes_is_said_on_the_page(limited_site: Site, new_tab) -> None:  # noqa: F811
    cluster = LiveCluster([limited_site.live], limited_site.environment)
    seeded = cluster.seed(["ada"], owner="ada")
    tab = new_tab()
    url = f"{limited_site.live.url}/?c={seeded['conversation']}"
    tab.context.add_cookies([{"name": "sessionid", "value": seeded["users"]["ada"]["session"], "url": url}])
    tab.open(url)

    tab.ask(LONG_PROMPT)
    expect(tab.last_run().locator(".run-status")).to_have_text("running")
    queue_prompt(tab, "Calculate 2+2")
    expect(queued(tab)).to_have_text(["Calculate 2+2"])

    # Its turn comes within the minute of the first run: the rate limit refuses it, and the page says so.
    refusal = tab.page.locator("#transcript .queue-refused")
    expect(refusal).to_contain_text('The queued prompt "Calculate 2+2" was not run', timeout=RUN_TIMEOUT_MS)
    expect(refusal).to_contain_text("(rate_limited)")
    expect(tab.page.locator("#queue")).to_be_hidden()
    expect(tab.page.locator("#transcript .run")).to_have_count(1)
    expect(tab.last_run().locator(".run-status")).to_have_text("completed")
    expect(tab.page.locator("#send")).to_be_enabled()

    runs = limited_site.runs(seeded["conversation"])
    assert runs[LONG_PROMPT] == "completed"
    assert runs.get("Calculate 2+2") not in (None, "completed", "queued", "running"), runs
