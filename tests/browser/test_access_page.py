"""What a page with too little access keeps and shows, offline copy included: a viewer's typing (offline, or
before the page knew it was a viewer) is never shown as saved, never kept, and never sent later by an editor's
page of the same browser; a refused page shows nothing of the copy an earlier token left; a viewer's editor
still takes a caret and selections.

Offline is Chromium's own (`context.set_offline`): the page comes from the service worker, requests and
WebSockets fail, `navigator.onLine` is false.
"""

from __future__ import annotations

import pytest
from playwright.async_api import Browser, BrowserContext, Page, expect

from collab.auth import Permission
from collab.server.app import CollabServer

from ..helpers import SECRET, StartServer, room_url, server_text, synced, text, token, wait_for, with_token
from .harness import ADA, GRACE, TIMEOUT_MS, Person, editor_url
from .test_offline import kept_updates, until_kept_for_offline

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLIPBOARD = ["clipboard-read", "clipboard-write"]
TYPED = "VIEWER TYPED"
# Whether a text ever appeared on the page: an init script, set up before the page's own script runs.
WATCH_FOR = """(secret) => {
  window.seen = false
  new MutationObserver(() => {
    if (document.documentElement.textContent.includes(secret)) window.seen = true
  }).observe(document, { subtree: true, childList: true, characterData: true })
}"""


async def write(server: CollabServer, name: str, content: str) -> None:
    async with synced(with_token(room_url(server, name), token(name))) as writer:
        text(writer).insert(0, content)
        await writer.resync()


async def new_page(person: Person) -> Person:
    """Another tab of the same browser profile (same IndexedDB, localStorage and service worker)."""
    return Person(person.context, await person.context.new_page())


async def opened(person: Person, url: str) -> Person:
    again = await new_page(person)
    await again.page.goto(url)
    return again


async def copy_open(page: Page) -> None:
    """Wait until the page has applied its offline copy (or decided not to): what it sends, it has sent."""
    await page.wait_for_function("() => window.collab?.copyOpening !== null", timeout=TIMEOUT_MS)
    await page.evaluate("window.collab.copyOpening")


async def nothing_uploaded_by_an_editor(person: Person, server: CollabServer, name: str, before: str) -> None:
    """An editor's page of this browser opens the document: it sends nothing but what it is made to type."""
    editor = await opened(person, with_token(editor_url(server.port, name), token(name)))
    await editor.wait_status("connected")
    await copy_open(editor.page)
    await editor.type_at("Control+End", " Edited.")
    await wait_for(lambda: server_text(server, name).endswith(" Edited."))
    assert server_text(server, name) == before + " Edited."
    await editor.page.close()


async def try_to_edit(page: Page) -> None:
    """Every way a keyboard changes text: typing, Enter, Backspace, Delete, composed input, paste, cut."""
    await page.locator(".cm-content").focus()
    await page.keyboard.press("Control+End")
    await page.keyboard.type(" " + TYPED)
    await page.keyboard.press("Enter")
    await page.keyboard.press("Backspace")
    await page.keyboard.press("Control+Home")
    await page.keyboard.press("Delete")
    await page.keyboard.insert_text(TYPED)  # as an input method commits a composition
    await page.evaluate("(typed) => navigator.clipboard.writeText(typed)", TYPED)
    await page.keyboard.press("Control+v")
    await page.keyboard.press("Control+a")
    await page.keyboard.press("Control+x")


async def test_a_viewer_offline_takes_no_edit_and_sends_none_later(browser: Browser, start_server: StartServer) -> None:
    server = await start_server(auth_secret=SECRET)
    await write(server, "team/plan", "Agenda")
    url = with_token(editor_url(server.port, "team/plan"), token("team/plan", Permission.READ))
    viewer = await Person.join(browser, url, permissions=CLIPBOARD, who=GRACE)
    await expect(viewer.page.locator("#readonly-badge")).to_be_visible()
    await until_kept_for_offline(viewer.page)

    # Offline, the page remembers that this link only views: read only still, the text from the copy.
    await viewer.context.set_offline(True)
    await viewer.page.reload()
    await viewer.wait_status("offline")
    assert await viewer.wait_text("(text) => text === 'Agenda'") == "Agenda"
    await expect(viewer.page.locator("#readonly-badge")).to_be_visible()
    await expect(viewer.page.locator("#banner")).to_contain_text("can only view the document")
    await try_to_edit(viewer.page)
    assert await viewer.text() == "Agenda"
    await expect(viewer.page.locator(".cm-content")).to_have_text("Agenda")
    await viewer.screenshot("readonly-offline.png")
    await viewer.page.close()

    await viewer.context.set_offline(False)
    again = await opened(viewer, url)
    await again.wait_status("connected")
    await copy_open(again.page)
    assert await again.text() == "Agenda"
    await expect(again.page.locator(".cm-content")).not_to_contain_text(TYPED)
    assert server_text(server, "team/plan") == "Agenda"
    await again.page.close()
    await nothing_uploaded_by_an_editor(viewer, server, "team/plan", "Agenda")


async def only_installed(browser: Browser, server: CollabServer) -> Person:
    """A browser that has the pages for offline use (from another document) and knows nothing of team/plan."""
    person = await Person.join(browser, with_token(editor_url(server.port, "elsewhere"), token("elsewhere")), who=GRACE)
    await until_kept_for_offline(person.page)
    return person


async def typed_offline_with_a_read_link(person: Person, url: str) -> Person:
    """A read link opened offline for the first time: no one can say it only views, so the page edits."""
    await person.context.set_offline(True)
    viewer = await opened(person, url)
    await viewer.wait_status("offline")
    await expect(viewer.page.locator("#readonly-badge")).to_be_hidden()
    await viewer.type_at("Control+End", TYPED)
    assert await viewer.text() == TYPED
    assert await kept_updates(viewer.page, "team/plan") > 0
    return viewer


async def test_typing_offline_with_a_read_link_is_not_kept(browser: Browser, start_server: StartServer) -> None:
    server = await start_server(auth_secret=SECRET)
    await write(server, "team/plan", "Agenda")
    url = with_token(editor_url(server.port, "team/plan"), token("team/plan", Permission.READ))
    person = await only_installed(browser, server)
    viewer = await typed_offline_with_a_read_link(person, url)
    await viewer.page.close()

    # Online again, the server says the link only views: the copy goes, and the page shows what the server has.
    await person.context.set_offline(False)
    again = await opened(person, url)
    await again.wait_status("connected")
    await copy_open(again.page)
    assert await again.wait_text("(text) => text === 'Agenda'") == "Agenda"
    await expect(again.page.locator(".cm-content")).to_have_text("Agenda")
    await expect(again.page.locator("#readonly-badge")).to_be_visible()
    assert server_text(server, "team/plan") == "Agenda"
    await again.page.close()
    await nothing_uploaded_by_an_editor(person, server, "team/plan", "Agenda")


async def test_typing_offline_is_taken_back_once_the_page_learns_it_only_views(
    browser: Browser, start_server: StartServer
) -> None:
    server = await start_server(auth_secret=SECRET)
    await write(server, "team/plan", "Agenda")
    url = with_token(editor_url(server.port, "team/plan"), token("team/plan", Permission.READ))
    person = await only_installed(browser, server)
    viewer = await typed_offline_with_a_read_link(person, url)

    # The tab stays open: once connected, it learns it only views, forgets the copy and loads again, once.
    await person.context.set_offline(False)
    await expect(viewer.page.locator("#notice")).to_contain_text("What you typed was not saved")
    await viewer.wait_status("connected")
    assert await viewer.wait_text("(text) => text === 'Agenda'") == "Agenda"
    await expect(viewer.page.locator(".cm-content")).to_have_text("Agenda")
    await expect(viewer.page.locator("#readonly-badge")).to_be_visible()
    await viewer.screenshot("readonly-taken-back.png")
    assert server_text(server, "team/plan") == "Agenda"
    await nothing_uploaded_by_an_editor(person, server, "team/plan", "Agenda")


async def refused_page(context: BrowserContext, url: str) -> Person:
    person = Person(context, await context.new_page())
    await person.page.goto(url)
    await person.page.wait_for_function("() => window.collab?.access.level === 'none'", timeout=TIMEOUT_MS)
    return person


async def assert_never_shown(person: Person, secret: str) -> None:
    assert await person.page.evaluate("window.seen") is False
    assert secret not in await person.page.content()


async def test_a_refused_page_shows_nothing_of_the_copy(browser: Browser, start_server: StartServer) -> None:
    server = await start_server(auth_secret=SECRET)
    secret = "CONFIDENTIAL numbers"
    ada = await Person.join(browser, with_token(editor_url(server.port, "hr/salaries"), token("hr/salaries")), who=ADA)
    await ada.type_at("Control+End", secret)
    await wait_for(lambda: server_text(server, "hr/salaries") == secret)
    assert await kept_updates(ada.page, "hr/salaries") > 0
    await until_kept_for_offline(ada.page)
    await ada.page.close()
    await ada.context.add_init_script(f"({WATCH_FOR})({secret!r})")

    # No token, then a token for other documents: refused, and the copy of this browser is not shown.
    for label, url in [
        ("no-token", editor_url(server.port, "hr/salaries")),
        ("other-prefix", with_token(editor_url(server.port, "hr/salaries"), token("public/"))),
    ]:
        refused = await refused_page(ada.context, url)
        await refused.wait_status("refused")
        await expect(refused.page.locator("#banner")).to_contain_text("can’t be opened")
        await assert_never_shown(refused, secret)
        await refused.screenshot(f"refused-{label}.png")
        await refused.page.close()

    # Offline, the page remembers the refusal: still nothing shown.
    await ada.context.set_offline(True)
    refused = await refused_page(ada.context, editor_url(server.port, "hr/salaries"))
    await refused.wait_status("offline")
    await expect(refused.page.locator("#banner")).to_contain_text("refused the last time")
    await assert_never_shown(refused, secret)
    await refused.screenshot("refused-offline.png")


async def test_a_viewer_moves_a_caret_and_selects_but_changes_nothing(
    browser: Browser, start_server: StartServer
) -> None:
    server = await start_server(auth_secret=SECRET)
    await write(server, "team/plan", "Agenda\nNotes")
    url = with_token(editor_url(server.port, "team/plan"), token("team/plan", Permission.READ))
    viewer = await Person.join(browser, url, permissions=CLIPBOARD, who=GRACE)
    await viewer.wait_text("(text) => text === 'Agenda\\nNotes'")
    content = viewer.page.locator(".cm-content")
    await expect(content).to_have_attribute("aria-readonly", "true")

    # Keyboard focus, a caret that moves, a selection that grows: reading and copying work.
    await viewer.page.locator("#doc-name").click()
    for _ in range(20):
        if await content.evaluate("(element) => element === document.activeElement"):
            break
        await viewer.page.keyboard.press("Tab")
    await expect(content).to_be_focused()
    await viewer.page.keyboard.press("Control+Home")
    await viewer.page.keyboard.press("ArrowDown")
    await viewer.page.keyboard.press("Shift+End")
    selection = await viewer.page.evaluate(
        "(() => { const { from, to } = window.collab.view.state.selection.main;"
        " return window.collab.view.state.sliceDoc(from, to) })()"
    )
    assert selection == "Notes"
    await viewer.page.keyboard.press("Control+c")
    assert await viewer.page.evaluate("navigator.clipboard.readText()") == "Notes"

    await try_to_edit(viewer.page)
    assert await viewer.text() == "Agenda\nNotes"
    await expect(content).to_have_text("AgendaNotes")  # two lines
    await expect(content).not_to_contain_text(TYPED)
    assert server_text(server, "team/plan") == "Agenda\nNotes"
    await viewer.screenshot("readonly-selected.png")
    viewer.assert_no_errors()
