"""The attach button in a real browser against a real daphne server: upload, prompt, thumbnail, reload."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import expect

from tests import attachment_files as files
from tests.livedaphne import LiveDaphne, live_daphne
from tests.test_browser import RUN_TIMEOUT_MS, browser, new_tab  # noqa: F401  (fixtures)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveDaphne]:
    """The example site in demo mode, its uploads in a folder of its own."""
    folder = tmp_path_factory.mktemp("live-attachments")
    env = {"AGENTAPP_OFFLINE_TPS": "0", "AGENTAPP_DEMO": "1", "MEDIA_ROOT": str(folder / "media")}
    with live_daphne(folder, env) as live:
        yield live
    failures = [line for line in live.output().splitlines() if "Traceback" in line or " ERROR " in line]
    assert failures == [], live.output()


def test_attach_an_image_and_see_it(server: LiveDaphne, new_tab, tmp_path: Path) -> None:  # noqa: F811
    image = tmp_path / "cat.png"
    image.write_bytes(files.png(4, 3))
    report = tmp_path / "report.pdf"
    report.write_bytes(files.PDF)
    tab = new_tab().open(server.url)
    tab.page.locator("#attach-input").set_input_files([str(image), str(report)])
    expect(tab.page.locator("#attached .attached-file")).to_have_count(2)
    tab.ask("What did I attach?")
    run = tab.last_run()
    expect(run.locator(".run-status")).to_have_text("completed", timeout=RUN_TIMEOUT_MS)
    expect(run.locator(".message.assistant")).to_contain_text("an image (png, ")
    expect(run.locator(".message.assistant")).to_contain_text("4x3 pixels")
    thumb = run.locator(".message.user img.attachment-thumb")
    expect(thumb).to_have_attribute("alt", "cat.png")
    expect(thumb).to_have_js_property("naturalWidth", 4)  # loaded through the access-checked URL
    expect(run.locator(".message.user a.attachment")).to_have_count(2)  # in the order the uploads ended
    expect(run.locator(".message.user a.attachment", has_text=re.compile(r"report\.pdf$"))).to_have_count(1)
    expect(tab.page.locator("#attached .attached-file")).to_have_count(0)

    # After a reload the history shows them again, from the stored references.
    tab.page.reload()
    expect(tab.last_run().locator(".message.user img.attachment-thumb")).to_have_js_property(
        "naturalWidth", 4, timeout=RUN_TIMEOUT_MS
    )

    # Another browser (another anonymous session) cannot open the image.
    url = tab.last_run().locator("img.attachment-thumb").get_attribute("src")
    assert url and url.startswith("/api/attachments/")
    stranger = new_tab().open(server.url)
    response = stranger.page.request.get(server.url.rstrip("/") + url)
    assert response.status == 404
