"""What the browser tests share: Debian's headless Chromium driven by Playwright, and a person at a browser.

Each person is an independent browser context (own storage, own BroadcastChannel scope), so whatever they
share goes through the server. Waits are on conditions (Playwright's waits, `wait_for`), each bounded.
Screenshots go to artifacts/ for a person to look at; they are not committed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import quote

from playwright.async_api import Browser, BrowserContext, ConsoleMessage, Page, expect

from ..helpers import ROOT

CHROMIUM = Path("/usr/bin/chromium")
# The flags Debian's Chromium needs here: root without a sandbox, no GPU, and none of the background
# connections to Google's hosts that a closed network refuses.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = ROOT / "artifacts"
LAPTOP = {"width": 1280, "height": 800}
PHONE = {"width": 390, "height": 844}
TIMEOUT_MS = 15_000
expect.set_options(timeout=TIMEOUT_MS)

ADA = ("Ada", "Indigo", "rgb(79, 70, 229)")
GRACE = ("Grace", "Emerald", "rgb(5, 150, 105)")


class Person:
    """One person at one browser: their own context, a page, and what went wrong in it."""

    def __init__(self, context: BrowserContext, page: Page) -> None:
        self.context = context
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda error: self.errors.append(f"uncaught: {error}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        # A refused WebSocket is logged as an error while the server is away; a CSP violation never should be.
        if message.type == "error" and "WebSocket connection" not in message.text:
            self.errors.append(f"console: {message.text}")

    @classmethod
    async def arrive(cls, browser: Browser, url: str, viewport: dict[str, int] = LAPTOP, **options: Any) -> Person:
        context = await browser.new_context(viewport=viewport, **options)  # type: ignore[arg-type]
        context.set_default_timeout(TIMEOUT_MS)
        person = cls(context, await context.new_page())
        await person.page.goto(url)
        return person

    @classmethod
    async def join(
        cls, browser: Browser, url: str, viewport: dict[str, int] = LAPTOP, *, who: tuple[str, ...], **options: Any
    ) -> Person:
        """`arrive`, answer the name question as `who` (ADA, GRACE: name and colour first), and wait until connected."""
        person = await cls.arrive(browser, url, viewport, **options)
        await person.introduce(*who[:2])
        await person.wait_status("connected")
        return person

    async def introduce(self, name: str, colour: str) -> None:
        """Answer the name-and-colour question that a first visit asks."""
        dialog = self.page.locator("dialog.identity-dialog")
        await expect(dialog).to_be_visible()
        await dialog.get_by_label("Name").fill(name)
        await dialog.get_by_label(colour).check()
        await dialog.get_by_role("button", name="Start editing").click()
        await expect(dialog).to_have_count(0)

    async def wait_status(self, state: str) -> None:
        await expect(self.page.locator("#status")).to_have_attribute("data-state", state)

    async def text(self) -> str:
        """The document as this page's Y.Text holds it; the editor must show the same."""
        shared, shown = await self.page.evaluate(
            "[window.collab.text.toString(), window.collab.view.state.doc.toString()]"
        )
        assert shared == shown
        return str(shared)

    async def wait_text(self, predicate_js: str, arg: Any = None) -> str:
        """Wait until `predicate_js` (a JS function of the text and `arg`) holds for the shared text."""
        await self.page.wait_for_function(
            f"([arg]) => ({predicate_js})(window.collab.text.toString(), arg)", arg=[arg], timeout=TIMEOUT_MS
        )
        return await self.text()

    async def type_at(self, where: str, keys: str) -> None:
        """Move the cursor (a key such as Control+End) and type, one key event per character."""
        await self.page.locator(".cm-content").focus()
        await self.page.keyboard.press(where)
        await self.page.keyboard.type(keys)

    async def screenshot(self, name: str) -> None:
        ARTIFACTS.mkdir(exist_ok=True)
        await self.page.screenshot(path=str(ARTIFACTS / name))

    def assert_no_errors(self) -> None:
        assert not self.errors, self.errors


def editor_url(port: int, name: str) -> str:
    return f"http://127.0.0.1:{port}/d/{quote(name)}"
