"""The demo editor of ``trio-ysync serve --demo``: its static files, the bundle built from its
sources, and real headless Chromium pages editing together.

The browser test drives Debian's ``chromium`` with Playwright (never a downloaded browser). It
saves a screenshot of two pages side by side; set ``TRIO_YSYNC_DEMO_SCREENSHOT`` to a path to keep
a copy (docs/_static/demo.png is one).
"""

from __future__ import annotations

import base64
import importlib.util
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
from ci import requires
from cliserver import cli_server
from wsclient import http_get

from trio_ysync.connection import HTTPRequest, HTTPResponse
from trio_ysync.demo import demo_files, demo_response
from trio_ysync.server import RoomServer

if TYPE_CHECKING:  # playwright is imported where it runs: it may be missing (a skip)
    from playwright.sync_api import Browser, Page

ROOT = Path(__file__).parent.parent
DEMO_SOURCES = ROOT / "examples" / "demo"
STATIC = ROOT / "src" / "trio_ysync" / "demo" / "static"
CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
# As root Chromium needs --no-sandbox; the others keep it from reaching out to the network.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def _build_missing() -> str | None:
    if shutil.which("node") is None:
        return "node is not on PATH (install Node.js 18 or later)"
    if not (DEMO_SOURCES / "node_modules" / "esbuild" / "package.json").is_file():
        return f"the demo's npm packages are missing: run `npm ci` in {DEMO_SOURCES}"
    return None


def _browser_missing() -> str | None:
    if not os.access(CHROMIUM, os.X_OK):
        return f"no Chromium at {CHROMIUM} (apt-get install chromium, or set CHROMIUM)"
    if importlib.util.find_spec("playwright") is None:
        return "the playwright package is missing (pip install -e '.[test]')"
    return None


requires_demo_build = requires(_build_missing(), "check of the shipped demo bundle")
requires_browser = requires(_browser_missing(), "browser test of the demo")


# -- static files ---------------------------------------------------------------------------


def answer(method: str, target: str) -> HTTPResponse:
    response = demo_response(HTTPRequest(method, target))
    assert response is not None, target
    return response


def test_the_demo_serves_only_its_shipped_files() -> None:
    page = answer("GET", "/demo/")
    assert page.status == 200
    assert page.content_type == "text/html; charset=utf-8"
    assert page.body == (STATIC / "index.html").read_bytes()
    assert answer("GET", "/demo") == page
    assert answer("GET", "/demo/?room=x") == page
    assert answer("GET", "/demo/demo.js").content_type == "text/javascript; charset=utf-8"
    assert answer("GET", "/demo/demo.css").content_type == "text/css; charset=utf-8"
    assert answer("GET", "/demo/demo.js").body == (STATIC / "demo.js").read_bytes()
    for target in (
        "/demo/../server.py",
        "/demo/%2e%2e/server.py",
        "/demo/static/demo.js",
        "/demo//etc/passwd",
        "/demo/__init__.py",
        "/demo/nothing.js",
    ):
        assert answer("GET", target).status == 404, target
    assert answer("POST", "/demo/").status == 405
    assert demo_response(HTTPRequest("GET", "/demos")) is None
    assert demo_response(HTTPRequest("GET", "/room")) is None
    assert sorted(demo_files()) == ["THIRD-PARTY-LICENSES.txt", "demo.css", "demo.js", "index.html"]


@pytest.mark.parametrize("demo", [True, False])
async def test_the_server_serves_the_demo_only_when_asked(
    nursery: trio.Nursery, demo: bool
) -> None:
    server = RoomServer(demo=demo)
    port = await nursery.start(server.serve, "127.0.0.1", 0)
    with trio.fail_after(10):
        status, body = await http_get(port, "/demo/")
        if demo:
            assert (status, body) == (200, (STATIC / "index.html").read_bytes())
        else:
            assert status == 426  # a plain HTTP request to a y-websocket server
        assert (await http_get(port, "/health"))[0] == 200
    server.shutdown()


@requires_demo_build
async def test_the_shipped_bundle_is_built_from_its_sources(tmp_path: Path) -> None:
    """``nox -s demo`` rebuilds the same bytes from examples/demo and its lockfile."""
    with trio.fail_after(120):
        await trio.run_process(["node", str(DEMO_SOURCES / "build.mjs"), str(tmp_path)])
    built = {path.name: path.read_bytes() for path in tmp_path.iterdir()}
    shipped = {path.name: path.read_bytes() for path in STATIC.iterdir()}
    assert sorted(built) == sorted(shipped)
    for name, content in built.items():
        assert content == shipped[name], f"{name} differs from its sources: run `nox -s demo`"


# -- in a real browser -------------------------------------------------------------------------


def _edit_together(base_url: str, screenshot: Path) -> None:
    """Two pages type into one room and converge, see each other's cursor and name; a third
    page joining later shows the text."""
    from playwright.sync_api import expect, sync_playwright

    room = "browser-test"

    def open_page(browser: Browser, name: str) -> Page:
        page = browser.new_page(viewport={"width": 640, "height": 420})
        page.goto(f"{base_url}/demo/?name={name}#{room}")
        expect(page.locator("#status")).to_have_attribute("data-status", "connected")
        expect(page.locator("#status")).to_have_text("connected")  # synced as well
        return page

    def editor_text(page: Page) -> str:
        return str(page.evaluate("() => window.demo.view.state.doc.toString()"))

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            alice, bob = open_page(browser, "Alice"), open_page(browser, "Bob")
            alice.locator(".cm-content").click()
            alice.keyboard.type("Hello from Alice.\n")
            bob.locator(".cm-content").click()
            bob.keyboard.press("Control+End")
            bob.keyboard.type("Bob was here.")
            for page in (alice, bob):
                expect(page.locator(".cm-content")).to_contain_text("Bob was here.")
                expect(page.locator(".cm-content")).to_contain_text("Hello from Alice.")
            assert editor_text(alice) == editor_text(bob) == "Hello from Alice.\nBob was here."
            # Remote cursors carry the other's name; the people list shows both.
            expect(alice.locator(".cm-ySelectionInfo", has_text="Bob")).to_have_count(1)
            expect(bob.locator(".cm-ySelectionInfo", has_text="Alice")).to_have_count(1)
            expect(alice.locator("#people li")).to_have_text(["Alice (you)", "Bob"])

            late = open_page(browser, "Carol")
            expect(late.locator(".cm-content")).to_contain_text("Bob was here.")
            assert editor_text(late) == editor_text(alice)
            expect(bob.locator("#people li")).to_have_count(3)

            alice.screenshot(path=str(screenshot.with_name("alice.png")))
            bob.screenshot(path=str(screenshot.with_name("bob.png")))
            _side_by_side(browser, screenshot)
        finally:
            browser.close()


def _side_by_side(browser: Browser, screenshot: Path) -> None:
    """One picture of both pages, made by the browser itself (no imaging library needed)."""
    page = browser.new_page(viewport={"width": 1300, "height": 440})
    images = "".join(
        f'<img src="data:image/png;base64,{encoded}" style="border:1px solid #999;margin:4px">'
        for encoded in (
            base64.b64encode(screenshot.with_name(name).read_bytes()).decode()
            for name in ("alice.png", "bob.png")
        )
    )
    page.set_content(f'<body style="margin:0;background:#eee">{images}</body>')
    page.wait_for_function("() => [...document.images].every(i => i.complete && i.naturalWidth)")
    page.screenshot(path=str(screenshot))


@requires_browser
async def test_two_browsers_edit_together_in_the_demo(tmp_path: Path) -> None:
    screenshot = tmp_path / "demo.png"
    async with cli_server("--demo", "--store", "memory") as server:
        base_url = f"http://127.0.0.1:{server.port}"
        with trio.fail_after(120):
            await trio.to_thread.run_sync(_edit_together, base_url, screenshot)
    assert screenshot.read_bytes().startswith(b"\x89PNG")
    if keep := os.environ.get("TRIO_YSYNC_DEMO_SCREENSHOT"):
        shutil.copyfile(screenshot, keep)
