"""The chat page in a real browser (Debian's chromium through Playwright) against a real daphne server.

The server runs the offline model paced at ``TOKENS_PER_SECOND`` so a run is still streaming when the
test presses Stop. Every wait is a Playwright expectation with a timeout, never a sleep.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Dialog,
    Locator,
    Page,
    WebSocketRoute,
    expect,
    sync_playwright,
)

from tests.livedaphne import ROOT, LiveCluster, LiveDaphne, live_cluster, live_daphne
from tests.livesettings import agentapp_settings
from tests.markdown_agent import PACE_ENV

pytestmark = pytest.mark.slow

CHROMIUM = os.environ.get("AGENTAPP_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TOKENS_PER_SECOND = 20
RUN_TIMEOUT_MS = 15_000
VIEWPORT = {"width": 1100, "height": 680}
PHONE = {"width": 375, "height": 740}
# Screenshots go to the ignored artifacts/ folder; `make screenshot` copies chat.png to docs/ on purpose.
ARTIFACTS = ROOT / "artifacts"
SCREENSHOT = ARTIFACTS / "chat.png"
XSS_PROMPT = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


### Fixtures ###


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaphne]:
    """The example site served by daphne in demo mode (anonymous chat), with its own database."""
    env = {"AGENTAPP_OFFLINE_TPS": str(TOKENS_PER_SECOND), "AGENTAPP_DEMO": "1"}
    with live_daphne(tmp_path_factory.mktemp("live"), env) as live:
        yield live
    failures = [line for line in live.output().splitlines() if "Traceback" in line or " ERROR " in line]
    assert failures == [], live.output()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Headless chromium from the system package; Playwright never downloads a browser here."""
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (or set AGENTAPP_CHROMIUM)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield launched
        launched.close()


class Tab:
    """A page of the chat site and the uncaught script errors it raised."""

    def __init__(self, context: BrowserContext) -> None:
        self.context = context
        self.page: Page = context.new_page()
        self.errors: list[str] = []
        self.dialogs: list[str] = []  # alert(), confirm() or prompt() opened by anything on the page
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))
        self.page.on("dialog", self.on_dialog)

    def on_dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)
        dialog.dismiss()

    def open(self, url: str) -> Tab:
        """Load the page and wait until its socket has delivered the conversation frame."""
        self.page.goto(url)
        expect(self.page.locator("#connection")).to_have_attribute("data-state", "open")
        expect(self.page.locator("#send")).to_be_enabled()
        return self

    def ask(self, prompt: str) -> None:
        """Type a prompt and send it."""
        self.page.locator("#prompt").fill(prompt)
        self.page.locator("#send").click()

    def last_run(self) -> Locator:
        """The newest run in the transcript."""
        return self.page.locator("#transcript .run").last


class Relay:
    """Routes a page's agent sockets through the test: forwards every frame, optionally sending run frames twice.

    With ``duplicate`` on, each run frame is sent again, and each ``data`` frame is followed by a merged copy of
    it and the previous one (``seq_first``..``seq``), as group broadcasts carry them: the page must show each once.
    """

    def __init__(self, page: Page, duplicate: bool = False) -> None:
        self.duplicate = duplicate
        self.urls: list[str] = []
        self.pages: list[WebSocketRoute] = []
        self.servers: list[WebSocketRoute] = []
        page.route_web_socket(re.compile(r"/ws/agent/"), self.route)

    def route(self, page_side: WebSocketRoute) -> None:
        self.urls.append(page_side.url)
        self.pages.append(page_side)
        server_side = page_side.connect_to_server()  # page -> server frames still flow on their own
        self.servers.append(server_side)
        last_data: dict[str, dict] = {}

        def from_server(message: str | bytes) -> None:
            page_side.send(message)
            frame = json.loads(message)
            if not self.duplicate or "run_id" not in frame:
                return
            page_side.send(message)
            if frame["type"] == "data":
                previous = last_data.get(frame["run_id"])
                if previous is not None:
                    merged = {**frame, "seq_first": previous["seq"], "data": previous["data"] + frame["data"]}
                    page_side.send(json.dumps(merged))
                last_data[frame["run_id"]] = frame

        server_side.on_message(from_server)


@pytest.fixture
def new_tab(browser: Browser) -> Iterator:
    """Make tabs in fresh browser contexts (a context is a separate cookie jar: a new anonymous session)."""
    contexts: list[BrowserContext] = []
    tabs: list[Tab] = []

    def make(cookies_from: Tab | None = None, viewport: dict[str, int] = VIEWPORT) -> Tab:
        context = browser.new_context(viewport=viewport)
        if cookies_from is not None:
            context.add_cookies(cookies_from.context.cookies())
        contexts.append(context)
        tabs.append(Tab(context))
        return tabs[-1]

    yield make
    for context in contexts:
        context.close()
    assert [error for tab in tabs for error in tab.errors] == []
    assert [dialog for tab in tabs for dialog in tab.dialogs] == []


### Tests ###


def test_calculator_run_streams_text_and_a_tool_card(server: LiveDaphne, new_tab) -> None:
    tab = new_tab().open(server.url)
    expect(tab.page).to_have_url(re.compile(r"\?c=[0-9a-f-]{36}$"))
    tab.ask("Calculate 2+2")

    run = tab.last_run()
    expect(run.locator(".message.user")).to_have_text("Calculate 2+2")
    card = run.locator(".tool-card")
    expect(card.locator(".tool-name")).to_have_text("calculator")
    expect(card.locator(".tool-input")).to_contain_text('"expression":"2+2"')
    expect(card.locator(".tool-status")).to_have_text("success", timeout=RUN_TIMEOUT_MS)
    expect(card.locator(".tool-result")).to_have_text("4")
    expect(card).to_have_class(re.compile(r"\bsuccess\b"))
    expect(run.locator(".message.assistant")).to_have_text("2+2 = 4.", timeout=RUN_TIMEOUT_MS)
    expect(run.locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    expect(tab.page.locator("#conversation-title")).to_have_text("Calculate 2+2")
    expect(tab.page.locator("#conversations a[aria-current=page]")).to_have_text("Calculate 2+2")
    expect(tab.page.locator("#send")).to_be_enabled()
    expect(tab.page.locator("#stop")).to_be_disabled()

    ARTIFACTS.mkdir(exist_ok=True)
    tab.page.screenshot(path=str(SCREENSHOT))

    # The same conversation reopened from its link: the stored history renders the same card and answer.
    tab.page.reload()
    expect(tab.page.locator("#connection")).to_have_attribute("data-state", "open")
    history = tab.last_run()
    expect(history.locator(".message.user")).to_have_text("Calculate 2+2")
    expect(history.locator(".tool-card .tool-result")).to_have_text("4")
    expect(history.locator(".tool-card .tool-status")).to_have_text("success")
    expect(history.locator(".message.assistant")).to_have_text("2+2 = 4.")


def test_failing_tool_call_shows_an_error_card(server: LiveDaphne, new_tab) -> None:
    tab = new_tab().open(server.url)
    tab.ask("Calculate the square root of -1")

    run = tab.last_run()
    card = run.locator(".tool-card")
    expect(card.locator(".tool-status")).to_have_text("error", timeout=RUN_TIMEOUT_MS)
    expect(card).to_have_class(re.compile(r"\berror\b"))
    expect(card.locator(".tool-result")).to_contain_text("math domain error")
    expect(run.locator(".message.assistant")).to_contain_text("I could not compute sqrt(-1)", timeout=RUN_TIMEOUT_MS)
    expect(run.locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)


def test_stop_cancels_the_run_and_keeps_the_partial_text(server: LiveDaphne, new_tab) -> None:
    tab = new_tab().open(server.url)
    tab.ask("Stream 400 tokens")

    run = tab.last_run()
    expect(run.locator(".run-status")).to_have_text("running")
    expect(run.locator(".message.assistant")).to_contain_text("w5 ", timeout=RUN_TIMEOUT_MS)
    expect(tab.page.locator("#send")).to_be_disabled()
    tab.page.locator("#stop").click()

    expect(run.locator(".run-status")).to_have_text("cancelled", timeout=RUN_TIMEOUT_MS)
    answer = run.locator(".message.assistant")
    expect(answer).to_contain_text("w0 w1 w2 w3 w4 w5 ")
    expect(answer).not_to_contain_text("w399")
    expect(answer).to_have_class(re.compile(r"\bpartial\b"))
    expect(tab.page.locator("#stop")).to_be_disabled()
    expect(tab.page.locator("#send")).to_be_enabled()
    # The stopped model call reported no usage: the footer counts the words that streamed (one delta each).
    words = re.findall(r"\bw\d+\b", answer.locator(".markdown").inner_text())
    assert len(words) > 5
    expect(run.locator(".run-usage")).to_have_text(f"{len(words)} tokens streamed")

    # The partial text was saved: reopening the conversation shows it, marked as cut short.
    tab.page.reload()
    saved = tab.last_run().locator(".message.assistant.partial")
    expect(saved).to_contain_text("w0 w1 w2 w3 w4 w5 ")
    expect(saved.locator(".partial-note")).to_have_text("stopped")


def test_second_browser_sees_the_run_live_and_can_stop_it(server: LiveDaphne, new_tab) -> None:
    watcher = new_tab().open(server.url)
    expect(watcher.page).to_have_url(re.compile(r"\?c=[0-9a-f-]{36}$"))
    asker = new_tab(cookies_from=watcher).open(watcher.page.url)  # the same anonymous session, another browser

    prompt = "Calculate 15 * 23 and then add 100"
    asker.ask(prompt)
    for tab in (asker, watcher):
        run = tab.last_run()
        expect(run.locator(".message.user")).to_have_text(prompt, timeout=RUN_TIMEOUT_MS)
        expect(run.locator(".tool-card .tool-result")).to_have_text(["345", "445"], timeout=RUN_TIMEOUT_MS)
        # Exact text: the watcher's merged group frames must neither drop nor repeat a delta.
        expect(run.locator(".message.assistant")).to_have_text(
            "15 * 23 = 345, then 345 + 100 = 445.", timeout=RUN_TIMEOUT_MS
        )
        expect(run.locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    expect(watcher.page.locator("#conversation-title")).to_have_text(prompt)

    # A run started in one browser is stopped from the other.
    asker.ask("Stream 400 tokens")
    watched = watcher.last_run()
    expect(watched.locator(".message.assistant")).to_contain_text("w5 ", timeout=RUN_TIMEOUT_MS)
    watcher.page.locator("#stop").click()
    for tab in (asker, watcher):
        expect(tab.last_run().locator(".run-status")).to_have_text("cancelled", timeout=RUN_TIMEOUT_MS)
        expect(tab.last_run().locator(".message.assistant")).not_to_contain_text("w399")
        expect(tab.page.locator("#send")).to_be_enabled()
    # Merged group frames count every delta they carry: both browsers count the same words.
    words = re.findall(r"\bw\d+\b", asker.last_run().locator(".markdown").inner_text())
    for tab in (asker, watcher):
        expect(tab.last_run().locator(".run-usage")).to_have_text(f"{len(words)} tokens streamed")


def test_prompt_and_title_are_rendered_as_text(server: LiveDaphne, new_tab) -> None:
    # The assistant's Markdown is tested with given model output below (test_hostile_markdown_...).
    tab = new_tab().open(server.url)
    tab.ask(XSS_PROMPT)

    run = tab.last_run()
    expect(run.locator(".message.user")).to_have_text(XSS_PROMPT)
    expect(run.locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    expect(tab.page.locator("#conversation-title")).to_have_text(XSS_PROMPT)
    assert tab.page.locator("#agentapp img, #agentapp script").count() == 0
    assert tab.page.evaluate("window.__xss") is None

    # Reloaded: the server-rendered title and the history frame are text too.
    tab.page.reload()
    expect(tab.page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(tab.page.locator("#conversations a[aria-current=page]")).to_have_text(XSS_PROMPT)
    expect(tab.last_run().locator(".message.user")).to_have_text(XSS_PROMPT)
    assert tab.page.locator("#agentapp img, #agentapp script").count() == 0
    assert tab.page.evaluate("window.__xss") is None


def test_repeated_and_merged_frames_are_shown_once(server: LiveDaphne, new_tab) -> None:
    tab = new_tab()
    Relay(tab.page, duplicate=True)
    tab.open(server.url)
    tab.ask("Calculate 15 * 23 and then add 100")

    run = tab.last_run()
    expect(run.locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    expect(run.locator(".message.user")).to_have_text("Calculate 15 * 23 and then add 100")
    expect(run.locator(".tool-card .tool-result")).to_have_text(["345", "445"])
    expect(run.locator(".message.assistant")).to_have_text("15 * 23 = 345, then 345 + 100 = 445.")
    expect(tab.page.locator("#transcript .run")).to_have_count(1)


def test_dropped_socket_reconnects_to_the_same_conversation(server: LiveDaphne, new_tab) -> None:
    tab = new_tab()
    relay = Relay(tab.page)
    tab.open(server.url)
    tab.ask("Calculate 2+2")
    expect(tab.last_run().locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    conversation_id = tab.page.url.rsplit("?c=", 1)[1]

    relay.pages[-1].close(code=1012, reason="service restart")
    relay.servers[-1].close()
    # Back online, the page re-renders the stored history: a run from history has no live status.
    expect(tab.last_run().locator(".run-status")).to_be_empty(timeout=RUN_TIMEOUT_MS)
    expect(tab.page.locator("#connection")).to_have_attribute("data-state", "open")
    assert [url.split("/ws/agent/", 1)[1] for url in relay.urls] == ["?presence=1", f"{conversation_id}/?presence=1"]
    expect(tab.last_run().locator(".message.assistant")).to_have_text("2+2 = 4.")

    # A real error frame from the server is shown: a cancel with no run in progress.
    relay.servers[-1].send(json.dumps({"type": "cancel"}))
    expect(tab.page.locator("#transcript .notice.error")).to_have_text(
        "Error: There is no run to cancel. (no_active_run)"
    )

    tab.ask("Calculate 3+4")
    expect(tab.last_run().locator(".message.assistant")).to_have_text("3+4 = 7.", timeout=RUN_TIMEOUT_MS)
    expect(tab.page.locator("#transcript .run")).to_have_count(2)


def test_conversation_links_open_only_for_their_owner(server: LiveDaphne, new_tab) -> None:
    owner = new_tab().open(server.url)
    owner.ask("Calculate 2+2")
    expect(owner.last_run().locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    stranger = new_tab()  # another anonymous session
    response = stranger.page.goto(owner.page.url)
    assert response is not None and response.status == 404
    response = stranger.page.goto(f"{server.url}/?c=not-a-uuid")
    assert response is not None and response.status == 404
    stranger.open(server.url)
    # Its list holds only the conversation it just opened, not the owner's titled one.
    expect(stranger.page.locator("#conversations a")).to_have_text(["New conversation"])


def test_every_browser_on_a_conversation_shows_how_many_watch(server: LiveDaphne, new_tab) -> None:
    first = new_tab().open(server.url)
    expect(first.page.locator("#watchers")).to_have_text("1 watching")
    second = new_tab(cookies_from=first).open(first.page.url)  # the same anonymous session, another browser
    for tab in (first, second):
        expect(tab.page.locator("#watchers")).to_have_text("2 watching")
    second.page.close()
    expect(first.page.locator("#watchers")).to_have_text("1 watching")

    # A demo conversation belongs to a session, not a user: its owner is told it cannot be shared.
    first.page.locator("#share-toggle").click()
    expect(first.page.locator("#share-note")).to_contain_text("cannot be shared")
    expect(first.page.locator("#share-add")).to_be_disabled()
    expect(first.page.locator("#share-username")).to_be_disabled()


### Sharing between logged-in users ###


@pytest.fixture(scope="module")
def accounts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveCluster]:
    """The example site without demo mode, on a database the test can seed with users and their sessions."""
    env = {"AGENTAPP_OFFLINE_TPS": str(TOKENS_PER_SECOND), "AGENTAPP_DEMO": "0"}
    with live_cluster(tmp_path_factory.mktemp("live_accounts"), 1, env) as live:
        yield live
    output = live.servers[0].output()
    assert [line for line in output.splitlines() if "Traceback" in line or " ERROR " in line] == [], output


def signed_in(new_tab, server: LiveDaphne, session_key: str) -> Tab:
    """A tab in a browser logged in with this session."""
    tab = new_tab()
    tab.context.add_cookies([{"name": "sessionid", "value": session_key, "url": server.url}])
    return tab


def test_the_owner_shares_a_conversation_from_the_page(accounts: LiveCluster, new_tab) -> None:
    users = accounts.seed(["ada", "vera"])["users"]
    server = accounts.servers[0]
    owner = signed_in(new_tab, server, users["ada"]["session"]).open(server.url)
    expect(owner.page).to_have_url(re.compile(r"\?c=[0-9a-f-]{36}$"))
    panel = owner.page.locator("#share-panel")
    owner.page.locator("#share-toggle").click()
    expect(panel.locator("#share-members")).to_have_text("Not shared with anyone yet.")

    panel.locator("#share-username").fill("nobody")
    panel.locator("#share-add").click()
    expect(panel.locator("#share-status")).to_have_text("No user has this username.")
    expect(panel.locator("#share-status")).to_have_class(re.compile(r"\berror\b"))
    panel.locator("#share-username").fill("vera")
    panel.locator("#share-role").select_option("viewer")
    panel.locator("#share-add").click()
    expect(panel.locator("#share-status")).to_have_text("Shared with vera as viewer.")
    vera_row = panel.locator('.share-member[data-username="vera"]')
    expect(vera_row.locator(".share-name")).to_have_text("vera")
    expect(vera_row.locator(".share-member-role")).to_have_value("viewer")

    # Vera opens the link as a viewer: she watches the owner's run, and may not prompt or share.
    viewer = signed_in(new_tab, server, users["vera"]["session"])
    response = viewer.page.goto(owner.page.url)
    assert response is not None and response.status == 200
    expect(viewer.page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(viewer.page.locator("#send")).to_be_disabled()
    expect(viewer.page.locator("#prompt")).to_be_disabled()
    expect(viewer.page.locator("#share-toggle")).to_be_hidden()
    for tab in (owner, viewer):
        expect(tab.page.locator("#watchers")).to_have_text("2 watching")
    owner.ask("Calculate 2+2")
    expect(viewer.last_run().locator(".message.assistant")).to_have_text("2+2 = 4.", timeout=RUN_TIMEOUT_MS)
    expect(viewer.last_run().locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    expect(viewer.page.locator("#send")).to_be_disabled()

    # Made a member, she may prompt once she reopens it; removed, her page is disconnected.
    vera_row.locator(".share-member-role").select_option("member")
    expect(panel.locator("#share-status")).to_have_text("Shared with vera as member.")
    viewer.open(owner.page.url)
    expect(viewer.page.locator("#share-toggle")).to_be_hidden()
    vera_row.locator(".share-remove").click()
    expect(panel.locator("#share-status")).to_have_text("vera no longer has access.")
    expect(panel.locator("#share-members")).to_have_text("Not shared with anyone yet.")
    expect(viewer.page.locator("#connection")).to_have_attribute("data-state", "refused")
    expect(owner.page.locator("#watchers")).to_have_text("1 watching")


### Human approval ###

APPROVAL_SETTINGS = """
from project.settings import *  # noqa: F403

AGENTAPP = {**AGENTAPP, "APPROVAL_TOOLS": ["calculator"]}  # noqa: F405
"""


@pytest.fixture(scope="module")
def approval_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaphne]:
    """The example site with every calculator call waiting for approval (settings written for this server only)."""
    settings_dir = tmp_path_factory.mktemp("approval_settings")
    (settings_dir / "approval_settings.py").write_text(APPROVAL_SETTINGS)
    env = {
        "AGENTAPP_OFFLINE_TPS": str(TOKENS_PER_SECOND),
        "AGENTAPP_DEMO": "1",
        "DJANGO_SETTINGS_MODULE": "approval_settings",
        "PYTHONPATH": os.pathsep.join([str(settings_dir), str(ROOT)]),
    }
    with live_daphne(tmp_path_factory.mktemp("live_approval"), env) as live:
        yield live
    failures = [line for line in live.output().splitlines() if "Traceback" in line or " ERROR " in line]
    assert failures == [], live.output()


def test_approve_deny_and_stop_a_tool_call_waiting_for_approval(approval_server: LiveDaphne, new_tab) -> None:
    asker = new_tab().open(approval_server.url)
    asker.ask("Calculate 2+2")
    paused = asker.last_run()
    approval = paused.locator(".approval")
    expect(approval.locator(".approval-head")).to_have_text("Approval needed: calculator", timeout=RUN_TIMEOUT_MS)
    expect(approval.locator(".approval-input")).to_have_text('{"expression":"2+2"}')
    expect(paused.locator(".run-status")).to_have_text("awaiting_approval", timeout=RUN_TIMEOUT_MS)
    expect(asker.page.locator("#send")).to_be_disabled()
    expect(asker.page.locator("#stop")).to_be_enabled()

    # Another browser of the session opens the conversation: the pending approval is there, and it answers.
    other = new_tab(cookies_from=asker)
    other.page.goto(asker.page.url)  # not Tab.open: Send stays disabled while the approval is pending
    expect(other.page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(other.page.locator("#send")).to_be_disabled()
    expect(other.page.locator(".approval .approval-head")).to_have_text("Approval needed: calculator")
    other.page.locator(".approval button.approve").click()
    for tab in (asker, other):
        expect(tab.page.locator(".approval .approval-outcome")).to_have_text("approved", timeout=RUN_TIMEOUT_MS)
        resumed = tab.last_run()
        expect(resumed.locator(".tool-card .tool-result")).to_have_text("4", timeout=RUN_TIMEOUT_MS)
        expect(resumed.locator(".message.assistant")).to_have_text("2+2 = 4.", timeout=RUN_TIMEOUT_MS)
        expect(resumed.locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
        expect(tab.page.locator("#send")).to_be_enabled()
        expect(tab.page.locator(".approval button")).to_have_count(0)

    # Denied: the tool does not run and the model reads why.
    asker.ask("Calculate 3+3")
    expect(asker.last_run().locator(".approval button.deny")).to_be_enabled(timeout=RUN_TIMEOUT_MS)
    asker.last_run().locator(".approval button.deny").click()
    denied = asker.last_run()
    expect(denied.locator(".tool-card .tool-status")).to_have_text("error", timeout=RUN_TIMEOUT_MS)
    expect(denied.locator(".tool-card .tool-result")).to_contain_text("Denied by anonymous")
    expect(denied.locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)

    # Stop during the wait: the approval is cancelled everywhere and the conversation can go on.
    asker.ask("Calculate 5+5")
    expect(other.last_run().locator(".approval button.approve")).to_be_enabled(timeout=RUN_TIMEOUT_MS)
    asker.page.locator("#stop").click()
    for tab in (asker, other):
        expect(tab.last_run().locator(".approval .approval-outcome")).to_have_text("cancelled", timeout=RUN_TIMEOUT_MS)
        expect(tab.page.locator("#send")).to_be_enabled()
        expect(tab.page.locator("#stop")).to_be_disabled()


### Markdown: the model's answer is the prompt (tests/markdown_agent.py) ###

ECHO_TOKENS_PER_SECOND = 40
SAMPLE_MARKDOWN = """## Steps

1. Open **the page**
2. Ask with `Calculate 2+2`

| Operation | Result | Note |
|:--|--:|:--|
| 2+2 | 4 | a_rather_long_unbroken_cell_value_that_is_wider_than_a_phone_screen_by_itself |

```python
print("a code line long enough to be wider than a phone screen, which must scroll inside its block")
```

> Quoted, with a [link](https://example.com/docs) and mail to <mailto:ada@example.com>.
"""
HOSTILE_MARKDOWN = """[click me](javascript:alert(1)) [relative](/admin/) [web](https://example.com/x)

<img src=x onerror="alert(2)">

<script>alert(3)</script>

<iframe src="javascript:alert(4)"></iframe><svg onload="alert(5)"></svg>

![pic](javascript:alert(6)) ![remote](https://example.com/p.png)
[data](data:text/html;base64,PHNjcmlwdD5hbGVydCg3KTwvc2NyaXB0Pg==)

Inline `<b onclick="alert(8)">code</b>` and <a href="javascript:alert(9)" onmouseover="alert(10)">raw link</a>:
[upper](JaVaScRiPt:alert(12)) [tab](java&#x09;script:alert(13)) <javascript:alert(14)>

```
<script>alert(11)</script>
```
"""
# Every attribute a sanitized answer may carry: what the renderer emits, and rel/target on kept links.
ALLOWED_ATTRIBUTES = {"href", "title", "align", "start", "rel", "target"}


@pytest.fixture(scope="module")
def markdown_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaphne]:
    """A demo site whose agent answers every prompt with the prompt itself, paced, so the page gets given Markdown."""
    tmp = tmp_path_factory.mktemp("live_markdown")
    env = {
        "AGENTAPP_DEMO": "1",
        PACE_ENV: str(ECHO_TOKENS_PER_SECOND),
        **agentapp_settings(tmp, AGENT_FACTORY="tests.markdown_agent.echo_agent"),
    }
    with live_daphne(tmp, env) as live:
        yield live
    failures = [line for line in live.output().splitlines() if "Traceback" in line or " ERROR " in line]
    assert failures == [], live.output()


def answered(tab: Tab, prompt: str) -> Locator:
    """Send a prompt and return the rendered Markdown of its answer once the run completed."""
    tab.ask(prompt)
    run = tab.last_run()
    expect(run.locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    return run.locator(".message.assistant .markdown")


def assert_sanitized(tab: Tab, answer: Locator) -> None:
    """Nothing in the answer can run script, load a resource or leave the page but a safe link."""
    # In every rendered answer (the page's own controls, like the feedback form, are not model output).
    hostile = "#transcript .markdown :is(img, script, iframe, svg, input, form, style, object, embed)"
    assert tab.page.locator(hostile).count() == 0
    attributes = answer.evaluate("(root) => [...root.querySelectorAll('*')].flatMap((e) => e.getAttributeNames())")
    assert set(attributes) <= ALLOWED_ATTRIBUTES, attributes
    links = answer.locator("a").evaluate_all(
        "(links) => links.map((a) => [a.textContent, a.getAttribute('href'), a.rel, a.target])"
    )
    safe = {"rel": "noopener noreferrer", "target": "_blank"}
    assert links == [
        ["click me", None, "", ""],
        ["relative", None, "", ""],
        ["web", "https://example.com/x", safe["rel"], safe["target"]],
        ["remote", "https://example.com/p.png", safe["rel"], safe["target"]],
        ["data", None, "", ""],
        ["upper", None, "", ""],
        ["tab", None, "", ""],
        ["javascript:alert(14)", None, "", ""],
    ]
    # Raw HTML reads as the text it is, in code and out of it.
    text = answer.inner_text()
    for raw in ('<img src=x onerror="alert(2)">', "<script>alert(3)</script>", '<iframe src="javascript:alert(4)">'):
        assert raw in text
    expect(answer.locator("p code")).to_have_text('<b onclick="alert(8)">code</b>')
    expect(answer.locator("pre code")).to_have_text("<script>alert(11)</script>\n")
    assert "pic" in text  # a javascript: image is its alt text only
    answer.hover()
    answer.locator("a", has_text="click me").click()  # an anchor without href: nothing happens
    assert tab.dialogs == []


def test_markdown_answers_render_as_they_stream(markdown_server: LiveDaphne, new_tab) -> None:
    tab = new_tab().open(markdown_server.url)
    answer = answered(tab, SAMPLE_MARKDOWN)
    expect(answer.locator("h2")).to_have_text("Steps")
    expect(answer.locator("ol > li")).to_have_text(["Open the page", "Ask with Calculate 2+2"])
    expect(answer.locator("ol strong")).to_have_text("the page")
    expect(answer.locator("table th")).to_have_text(["Operation", "Result", "Note"])
    expect(answer.locator("table td").nth(1)).to_have_text("4")
    expect(answer.locator("pre code")).to_contain_text('print("a code line long enough')
    expect(answer.locator("blockquote a").first).to_have_attribute("href", "https://example.com/docs")
    expect(answer.locator("blockquote a").nth(1)).to_have_attribute("href", "mailto:ada@example.com")
    # The stored answer renders the same from history.
    tab.page.reload()
    expect(tab.page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(tab.last_run().locator(".markdown table td").nth(1)).to_have_text("4")

    # Bold text is bold while the run still streams the rest; Stop counts the chunks that streamed.
    tab.ask("**bold start** " + " ".join(f"w{index}" for index in range(400)))
    run = tab.last_run()
    expect(run.locator(".markdown strong")).to_have_text("bold start", timeout=RUN_TIMEOUT_MS)
    expect(run.locator(".run-status")).to_have_text("running")
    expect(run.locator(".markdown")).to_contain_text("w5 ", timeout=RUN_TIMEOUT_MS)
    tab.page.locator("#stop").click()
    expect(run.locator(".run-status")).to_have_text("cancelled", timeout=RUN_TIMEOUT_MS)
    streamed = run.locator(".markdown").inner_text().split()  # "bold", "start", "w0", ...: one chunk each
    assert streamed[:3] == ["bold", "start", "w0"] and "w399" not in streamed
    expect(run.locator(".run-usage")).to_have_text(f"{len(streamed)} tokens streamed")


def test_hostile_markdown_is_sanitized(markdown_server: LiveDaphne, new_tab) -> None:
    tab = new_tab().open(markdown_server.url)
    answer = answered(tab, HOSTILE_MARKDOWN)
    assert_sanitized(tab, answer)
    # The same answer from history (the conversation frame) goes through the same sanitizer.
    tab.page.reload()
    expect(tab.page.locator("#connection")).to_have_attribute("data-state", "open")
    assert_sanitized(tab, tab.last_run().locator(".message.assistant .markdown"))
    expect(tab.last_run().locator(".message.user")).to_have_text(HOSTILE_MARKDOWN.strip())


### Phone width ###


def assert_no_horizontal_scroll(page: Page) -> None:
    """Neither the page nor the transcript scrolls sideways (wide code and tables scroll inside their block)."""
    widths = page.evaluate(
        """() => {
            const transcript = document.getElementById("transcript");
            return [document.documentElement.scrollWidth, window.innerWidth,
                    transcript.scrollWidth, transcript.clientWidth];
        }"""
    )
    page_width, viewport_width, transcript_width, transcript_client = widths
    assert page_width <= viewport_width and transcript_width <= transcript_client, widths


def test_phone_width_has_a_drawer_and_a_readable_chat(markdown_server: LiveDaphne, new_tab) -> None:
    tab = new_tab(viewport=PHONE).open(markdown_server.url)
    page = tab.page
    menu = page.locator("#menu-toggle")
    sidebar = page.locator("#sidebar")
    expect(menu).to_be_visible()
    expect(menu).to_have_attribute("aria-expanded", "false")
    expect(sidebar).to_be_hidden()

    # The drawer holds the conversation list, New conversation and Log in; Escape closes it, focus returns.
    menu.click()
    expect(menu).to_have_attribute("aria-expanded", "true")
    expect(sidebar).to_be_visible()
    expect(sidebar.locator("#conversations a[aria-current=page]")).to_be_focused()
    expect(sidebar.locator("#new-conversation")).to_be_in_viewport(ratio=1)  # wholly: the drawer slid in
    expect(sidebar.get_by_role("link", name="Log in")).to_be_in_viewport(ratio=1)
    ARTIFACTS.mkdir(exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "chat-phone-drawer.png"))
    page.keyboard.press("Escape")
    expect(menu).to_have_attribute("aria-expanded", "false")
    expect(sidebar).to_be_hidden()
    expect(menu).to_be_focused()

    # Closed by its button and by the backdrop too.
    menu.click()
    page.locator("#drawer-close").click()
    expect(sidebar).to_be_hidden()
    menu.click()
    page.locator("#drawer-backdrop").click(position={"x": PHONE["width"] - 20, "y": PHONE["height"] // 2})
    expect(sidebar).to_be_hidden()

    # A prompt is sent and its answer, with a wide table and code line, is read without scrolling sideways.
    answer = answered(tab, SAMPLE_MARKDOWN)
    expect(answer.locator("table td").nth(1)).to_have_text("4")
    expect(tab.last_run().locator(".message.assistant")).to_be_in_viewport()
    assert_no_horizontal_scroll(page)
    box = tab.last_run().locator(".message.assistant").bounding_box()
    assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"]
    page.screenshot(path=str(ARTIFACTS / "chat-phone.png"))

    # The first conversation is in the drawer's list, and New conversation there starts another.
    first = page.url
    menu.click()
    sidebar.locator("#new-conversation").click()
    expect(page.locator("#connection")).to_have_attribute("data-state", "open")
    expect(page).not_to_have_url(first)
    expect(page).to_have_url(re.compile(r"\?c=[0-9a-f-]{36}$"))
    menu.click()
    expect(sidebar.locator("#conversations a")).to_have_count(2)
    sidebar.locator("#conversations a", has_text="## Steps").click()
    expect(page).to_have_url(first)
    expect(tab.last_run().locator(".markdown table td").nth(1)).to_have_text("4")


def test_rename_search_and_export_from_the_page(server: LiveDaphne, new_tab) -> None:
    tab = new_tab().open(server.url)
    tab.ask("Calculate 2+2")
    expect(tab.last_run().locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    watcher = new_tab(cookies_from=tab).open(tab.page.url)  # the same session on a second page

    # Rename: the form replaces the heading; both pages and the sidebar show the new title.
    tab.page.locator("#rename").click()
    expect(tab.page.locator("#rename-input")).to_have_value("Calculate 2+2")
    tab.page.locator("#rename-input").fill("  Household   sums ")
    tab.page.locator("#rename-save").click()
    expect(tab.page.locator("#rename-form")).to_be_hidden()
    for page in (tab.page, watcher.page):
        expect(page.locator("#conversation-title")).to_have_text("Household sums")
        expect(page.locator("#conversations a[aria-current=page]")).to_have_text("Household sums")
    expect(watcher.page).to_have_title("Household sums · agentapp")
    # A blank title is refused by the form; a too long one cannot be typed (maxlength).
    tab.page.locator("#rename").click()
    expect(tab.page.locator("#rename-input")).to_have_attribute("maxlength", "200")
    tab.page.locator("#rename-cancel").click()
    expect(tab.page.locator("#conversation-title")).to_have_text("Household sums")

    # Export: the header links download this conversation.
    href = tab.page.locator("#export-md").get_attribute("href")
    exported = tab.context.request.get(server.url.rstrip("/") + href if href.startswith("/") else href)
    assert exported.status == 200
    assert exported.text().startswith("# Household sums\n")
    assert "**Tool call** `calculator`" in exported.text()

    # Search: matches replace the list until the box is cleared; another session finds nothing of this one's.
    tab.open(server.url)
    tab.ask("Calculate 3+4")
    expect(tab.last_run().locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    search = tab.page.locator("#search")
    search.fill("household")
    expect(tab.page.locator("#search-results a")).to_have_text(["Household sums"])
    expect(tab.page.locator("#conversations")).to_be_hidden()
    expect(tab.page.locator("#search-status")).to_have_text("1 found")
    search.fill("calculate")
    expect(tab.page.locator("#search-results a")).to_have_count(2)
    search.fill("giraffe")
    expect(tab.page.locator("#search-status")).to_have_text("Nothing found.")
    expect(tab.page.locator("#search-results a")).to_have_count(0)
    search.fill("")
    expect(tab.page.locator("#conversations")).to_be_visible()
    expect(tab.page.locator("#search-results")).to_be_hidden()
    search.fill("household")
    tab.page.locator("#search-results a").click()
    expect(tab.page.locator("#conversation-title")).to_have_text("Household sums")

    stranger = new_tab().open(server.url)
    stranger.page.locator("#search").fill("household")
    expect(stranger.page.locator("#search-status")).to_have_text("Nothing found.")
    expect(stranger.page.locator("#search-results a")).to_have_count(0)
