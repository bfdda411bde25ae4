"""Feedback buttons on the chat page, in a real browser against a real daphne server (see test_browser.py)."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import expect

from tests.livedaphne import LiveDaphne
from tests.test_browser import RUN_TIMEOUT_MS, browser, new_tab, server  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


def test_thumbs_reach_the_other_browser_and_survive_a_reload(server: LiveDaphne, new_tab) -> None:  # noqa: F811
    rater = new_tab().open(server.url)
    rater.ask("Calculate 2+2")
    expect(rater.last_run().locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    expect(rater.page).to_have_url(re.compile(r"\?c=[0-9a-f-]{36}$"))
    watcher = new_tab(cookies_from=rater).open(rater.page.url)  # the same anonymous session, another browser

    # The finished run's answer gets its buttons; a thumb sent from one page is counted on both.
    rater.last_run().locator(".feedback-down").click()
    for tab in (rater, watcher):
        expect(tab.last_run().locator(".feedback-summary")).to_have_text("0 up, 1 down")
    expect(rater.last_run().locator(".feedback-down")).to_have_attribute("aria-pressed", "true")

    # A comment goes with the rating; the other page shows it on hover, as text.
    comment = rater.last_run().locator(".feedback-comment")
    comment.fill("<b>Wrong</b> sum")
    comment.press("Enter")
    expect(watcher.last_run().locator(".feedback-summary")).to_have_attribute("title", "anonymous: <b>Wrong</b> sum")

    # After a reload the conversation frame brings it back; the same user changing it keeps one rating.
    watcher.page.reload()
    expect(watcher.last_run().locator(".feedback-summary")).to_have_text("0 up, 1 down", timeout=RUN_TIMEOUT_MS)
    watcher.last_run().locator(".feedback-up").click()
    for tab in (rater, watcher):
        expect(tab.last_run().locator(".feedback-summary")).to_have_text("1 up, 0 down")
