"""One real-browser test: headless Chromium (Debian's package) drives the demo like a user would.

Screenshots of every tab go to $SCREENSHOT_DIR (default: the test's temporary folder). Without a
Chromium on the machine the test is skipped, unless REQUIRE_BROWSER=1 (as in .ci/run) makes it fail.
"""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--no-first-run", "--disable-sync", "--disable-quic"]

if CHROMIUM is None and os.environ.get("REQUIRE_BROWSER") == "1":
    raise RuntimeError("REQUIRE_BROWSER=1 but no chromium on PATH: apt-get install chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (apt-get install chromium)")


def test_a_user_searches_and_visits_every_tab(demo_url, tmp_path):
    app_url, _ = demo_url
    from playwright.sync_api import expect, sync_playwright

    shots = Path(os.environ.get("SCREENSHOT_DIR", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS)  # a fresh profile
        page = browser.new_page(viewport={"width": 1280, "height": 1000})
        page.goto(app_url)
        page.get_by_label("Describe the image").fill("a large red circle to the left of a small blue star")
        page.get_by_role("button", name="Search", exact=True).click()
        results = page.locator("img[src*='gradio_api/file']")
        expect(results.first).to_be_visible(timeout=30_000)
        expect(page.get_by_text("results in")).to_be_visible()
        assert results.count() >= 5
        page.screenshot(path=str(shots / "tab-text.png"), full_page=True)

        page.locator("button.thumbnail-item:visible").first.click()  # a result image searches from itself
        expect(page.get_by_text("Captions found")).to_be_visible(timeout=30_000)
        expect(page.get_by_text("ground-truth image is at rank 1")).to_be_visible(timeout=30_000)

        page.get_by_role("tab", name="Image → Text / Image").click()
        page.locator("button.thumbnail-item:visible").nth(1).click()  # pick a gallery image
        page.wait_for_timeout(3000)
        page.screenshot(path=str(shots / "tab-image.png"), full_page=True)
        expect(page.get_by_text("Captions found")).to_be_visible()
        expect(page.get_by_text("ground-truth image is at rank")).to_be_visible(timeout=30_000)

        page.get_by_role("tab", name="SGE vs CGE").click()
        page.get_by_label("Text query").fill("a small green square in the middle")
        page.get_by_role("button", name="Compare").click()
        expect(page.get_by_text("Agreement")).to_be_visible(timeout=30_000)
        page.screenshot(path=str(shots / "tab-compare.png"), full_page=True)

        page.get_by_role("tab", name="Attention").click()
        page.screenshot(path=str(shots / "tab-attention.png"), full_page=True)
        page.get_by_role("tab", name="About").click()
        expect(page.get_by_text("Loaded models")).to_be_visible(timeout=30_000)
        page.screenshot(path=str(shots / "tab-about.png"), full_page=True)

        page.get_by_role("tab", name="Text → Image").click()
        page.get_by_label("Describe the image").fill("   ")
        page.get_by_role("button", name="Search", exact=True).click()
        expect(page.get_by_text("type a description").first).to_be_visible(timeout=30_000)
        browser.close()
