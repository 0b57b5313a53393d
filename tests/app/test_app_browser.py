"""A real browser (Debian's Chromium through Playwright) uploads a face, drags the smile slider and sees the edit."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.editor_support import ROOT, full_size_faces, serve_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
SCREENSHOT = ROOT / "artifacts" / "editor_browser.png"
TIMEOUT_MS = 90_000

if not CHROMIUM.exists() and not os.environ.get("CI"):
    pytest.skip(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium); CI installs it and runs this "
                "test", allow_module_level=True)


@pytest.fixture(scope="module")
def app(celeba_dir: Path, tmp_path_factory):
    yield from serve_app(celeba_dir, tmp_path_factory, "browser_app_log")


@pytest.fixture(scope="module")
def page(app):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100})
        page.set_default_timeout(TIMEOUT_MS)
        page.goto(app.url)
        yield page
        browser.close()


def edited_src(page) -> str | None:
    img = page.locator("#edited img")
    return img.first.get_attribute("src") if img.count() else None


def test_upload_and_drag_the_smile_slider(page, celeba_dir):
    photo = full_size_faces(celeba_dir, 1)[0]
    page.locator("#photo input[type=file]").set_input_files(str(photo))
    page.wait_for_function("() => document.querySelector('#edited img')?.getAttribute('src')")
    page.wait_for_function("() => document.querySelector('#info')?.innerText.includes('bits/dim')")
    before = edited_src(page)

    track = page.locator("#slider-smiling input[type=range]")
    box = track.bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] / 2, y)
    page.mouse.down()
    for fraction in (0.6, 0.7, 0.8, 0.9):
        page.mouse.move(box["x"] + box["width"] * fraction, y)
    page.mouse.up()

    assert float(page.locator("#slider-smiling input[type=number]").input_value()) > 0.5
    page.wait_for_function("(before) => document.querySelector('#edited img')?.getAttribute('src') !== before",
                           arg=before)
    after = edited_src(page)
    assert after and after != before  # Gradio names served images by content hash: a new name is a new image
    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=str(SCREENSHOT), full_page=True)


def test_an_example_loads_with_one_click(page):
    before = page.locator("#info").inner_text()
    page.locator("img[src*='example_0']").first.click()
    page.wait_for_function("(before) => { const t = document.querySelector('#info')?.innerText;"
                           " return t && t.includes('bits/dim') && t !== before; }", arg=before)
