"""The index page end to end: live updates, delete and rename from the list, and what a token shows."""

from __future__ import annotations

import asyncio
import http.client
from pathlib import Path

import pytest
from playwright.async_api import Browser, Locator, Route, expect

from collab.auth import Permission
from collab.server.app import CollabServer

from ..helpers import SECRET, StartServer, room_url, stored_text, synced, text, token, wait_for, with_token
from .harness import ADA, PHONE, Person, editor_url

pytestmark = pytest.mark.asyncio(loop_scope="session")

LIVE_MS = 8_000
"""How soon a change made elsewhere must show: the page polls every 3 s, so two polls and some."""


def home_url(port: int, page_token: str | None = None) -> str:
    return f"http://127.0.0.1:{port}/" + ("" if page_token is None else f"?token={page_token}")


async def write(server: CollabServer, name: str, body: str, page_token: str | None = None) -> None:
    """Create document `name` holding `body`, as another client elsewhere would, and wait until it is stored."""
    url = room_url(server, name) if page_token is None else with_token(room_url(server, name), page_token)
    async with synced(url) as client:
        text(client).insert(0, body)
        await client.resync()
    await server.store.flush()


def delete_elsewhere(port: int, encoded: str, bearer: str | None = None) -> int:
    """DELETE /api/docs/<encoded> as another client would; the status."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(
            "DELETE", f"/api/docs/{encoded}", headers={"Authorization": f"Bearer {bearer}"} if bearer else {}
        )
        return connection.getresponse().status
    finally:
        connection.close()


def row(home: Person, name: str) -> Locator:
    return home.page.locator("#documents .doc-item", has=home.page.locator(".doc-name-text", has_text=name))


def names(home: Person) -> Locator:
    return home.page.locator("#documents .doc-name-text")


async def test_documents_created_and_deleted_elsewhere_come_and_go_without_reload(
    browser: Browser, server: CollabServer
) -> None:
    await write(server, "first", "one")
    home = await Person.arrive(browser, home_url(server.port))
    await expect(names(home)).to_have_text(["first"])
    await home.page.evaluate("window.stillTheSamePage = true")
    field = home.page.get_by_label("Document name")
    await field.focus()

    await write(server, "team/second", "two")
    await expect(names(home)).to_have_text(["team/second", "first"], timeout=LIVE_MS)
    assert await asyncio.to_thread(delete_elsewhere, server.port, "first") == 200
    await expect(names(home)).to_have_text(["team/second"], timeout=LIVE_MS)
    await expect(home.page.locator("#doc-count")).to_have_text("1")
    assert await home.page.evaluate("window.stillTheSamePage") is True, "no reload"
    await expect(field).to_be_focused()

    # A hidden page does not poll; it catches up at once when it is visible again.
    await home.page.evaluate(
        "Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    await write(server, "while away", "three")
    await asyncio.sleep(4)  # longer than a poll: nothing may come meanwhile
    await expect(names(home)).to_have_text(["team/second"])
    await home.page.evaluate(
        "Object.defineProperty(document, 'visibilityState', { value: 'visible', configurable: true });"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    await expect(names(home)).to_have_text(["while away", "team/second"], timeout=1_500)
    home.assert_no_errors()


async def test_a_slow_server_gets_one_listing_request_at_a_time(browser: Browser, server: CollabServer) -> None:
    """Polls and visibility changes never pile requests up on a server that is slow to answer."""
    await write(server, "first", "one")
    home = await Person.arrive(browser, home_url(server.port))
    await expect(names(home)).to_have_text(["first"])
    answering, most, asked = 0, 0, 0

    async def slowly(route: Route) -> None:
        nonlocal answering, most, asked
        answering, asked = answering + 1, asked + 1
        most = max(most, answering)
        await asyncio.sleep(4)  # longer than a poll
        answering -= 1
        await route.continue_()

    await home.page.route("**/api/docs", slowly)
    await write(server, "second", "two")
    for _ in range(6):
        await home.page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # "visible again"
        await asyncio.sleep(0.5)
    await expect(names(home)).to_have_text(["second", "first"], timeout=LIVE_MS)
    await wait_for(lambda: asked >= 2, timeout=15)
    assert most == 1, f"{most} listing requests at once"
    home.assert_no_errors()


async def test_deleting_from_the_list_closes_an_open_tab_and_removes_the_document(
    browser: Browser, server: CollabServer, db_path: Path
) -> None:
    await write(server, "keep", "kept")
    ada = await Person.arrive(browser, editor_url(server.port, "team/memo"))
    await ada.introduce(*ADA[:2])
    await ada.wait_status("connected")
    await ada.type_at("Control+End", "soon gone")
    await wait_for(lambda: stored_text(db_path, "team/memo") == "soon gone")

    home = await Person.arrive(browser, home_url(server.port))
    memo = row(home, "team/memo")
    await expect(names(home)).to_have_count(2)
    await memo.hover()
    await expect(memo.get_by_role("button", name="Delete team/memo")).to_be_visible()
    await home.screenshot("index-actions.png")

    # Cancel first: nothing happens.
    await memo.get_by_role("button", name="Delete team/memo").click()
    dialog = home.page.get_by_role("dialog")
    await expect(dialog).to_contain_text("Delete “team/memo”?")
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(dialog).to_have_count(0)
    assert stored_text(db_path, "team/memo") == "soon gone"

    await memo.get_by_role("button", name="Delete team/memo").click()
    await expect(dialog).to_contain_text("cannot be undone")
    await home.screenshot("index-delete-confirm.png")
    await dialog.get_by_role("button", name="Delete").click()
    await expect(dialog).to_have_count(0)
    await expect(names(home)).to_have_text(["keep"])
    await expect(home.page.locator("#list-notice")).to_have_text("Deleted “team/memo”.")

    await ada.wait_status("refused")
    await expect(ada.page.locator("#banner")).to_contain_text("deleted")
    assert stored_text(db_path, "team/memo") is None
    await asyncio.sleep(3.5)  # a poll later, it is still gone: the open tab did not bring it back
    await expect(names(home)).to_have_text(["keep"])
    assert "team/memo" not in server.rooms
    home.assert_no_errors()
    ada.assert_no_errors()


async def test_renaming_from_the_list_tells_the_open_tab_and_keeps_the_content(
    browser: Browser, server: CollabServer, db_path: Path
) -> None:
    await write(server, "other", "another")
    ada = await Person.arrive(browser, editor_url(server.port, "draft"))
    await ada.introduce(*ADA[:2])
    await ada.wait_status("connected")
    await ada.type_at("Control+End", "the first draft")
    await wait_for(lambda: stored_text(db_path, "draft") == "the first draft")

    home = await Person.arrive(browser, home_url(server.port))
    await expect(names(home)).to_have_count(2)
    await row(home, "draft").get_by_role("button", name="Rename draft").click()
    dialog = home.page.get_by_role("dialog")
    field = dialog.get_by_label("New name")
    await expect(field).to_have_value("draft")
    for bad, problem in [("   ", "Type a name for the document."), ("other", "exists already"), ("draft", "already")]:
        await field.fill(bad)
        await field.press("Enter")
        await expect(dialog.get_by_role("alert")).to_contain_text(problem)
    assert stored_text(db_path, "draft") == "the first draft", "nothing was sent"

    # The list refreshes behind the open dialog without disturbing it.
    await field.fill("final/v")
    await write(server, "arrived meanwhile", "x")
    await expect(names(home)).to_contain_text(["arrived meanwhile"], timeout=LIVE_MS)
    await expect(dialog).to_be_visible()
    await expect(field).to_have_value("final/v")
    await expect(field).to_be_focused()
    await field.press("End")
    await field.type("1")
    await home.screenshot("index-rename.png")
    await field.press("Enter")
    await expect(dialog).to_have_count(0)
    await expect(names(home)).to_have_text(["arrived meanwhile", "final/v1", "other"])  # by last change
    await expect(home.page.locator("#list-notice")).to_have_text("Renamed “draft” to “final/v1”.")

    await ada.wait_status("refused")
    await expect(ada.page.locator("#banner")).to_contain_text("renamed")
    assert stored_text(db_path, "draft") is None and stored_text(db_path, "final/v1") == "the first draft"
    await row(home, "final/v1").locator(".doc-row").click()
    await home.page.wait_for_url("**/d/final/v1")
    await home.introduce(*ADA[:2])
    await home.wait_status("connected")
    assert await home.wait_text("(text) => text === 'the first draft'") == "the first draft"
    home.assert_no_errors()
    ada.assert_no_errors()


async def test_a_read_token_sees_only_what_it_covers_and_no_actions(
    browser: Browser, start_server: StartServer
) -> None:
    server = await start_server(auth_secret=SECRET)
    for name in ("team/a", "team/b", "private"):
        await write(server, name, name, token(name))

    reader = await Person.arrive(browser, home_url(server.port, token("team/", Permission.READ)))
    await expect(names(reader)).to_have_text(["team/b", "team/a"])
    await expect(reader.page.locator("#list-title")).to_have_text("Documents in team/")
    await expect(reader.page.locator("#documents .doc-actions")).to_have_count(0)
    await expect(reader.page.get_by_role("button", name="Delete team/a")).to_have_count(0)
    await row(reader, "team/a").hover()
    await reader.screenshot("index-readonly.png")
    assert await reader.page.evaluate("document.documentElement.scrollWidth <= innerWidth")

    # A token that covers nothing that exists says so.
    nothing = await Person.arrive(browser, home_url(server.port, token("empty/")))
    await expect(nothing.page.locator("#empty")).to_have_text(
        "No documents under “empty/” yet. Type a name starting with empty/ above to create one."
    )
    await expect(names(nothing)).to_have_count(0)
    single = await Person.arrive(browser, home_url(server.port, token("notes", Permission.READ)))
    await expect(single.page.locator("#empty")).to_have_text(
        "Your link opens “notes” only, and nobody has written it yet."
    )
    for person in (reader, nothing, single):
        person.assert_no_errors()
    expired = await Person.arrive(browser, home_url(server.port, token("team/", ttl=-5)))
    await expect(expired.page.locator("#list-error")).to_contain_text("refused this page’s access link: token expired")
    await expect(names(expired)).to_have_count(0)


async def test_a_write_prefix_token_deletes_and_renames_under_its_prefix_only(
    browser: Browser, start_server: StartServer, db_path: Path
) -> None:
    server = await start_server(auth_secret=SECRET)
    for name in ("team/a", "team/b", "private"):
        await write(server, name, name, token(name))
    home = await Person.arrive(browser, home_url(server.port, token("team/")), viewport=PHONE, is_mobile=True)
    await expect(names(home)).to_have_text(["team/b", "team/a"])
    await expect(home.page.locator("#documents .doc-actions")).to_have_count(2)
    widths = await home.page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert widths[0] <= widths[1], widths
    await home.screenshot("index-phone.png")

    await row(home, "team/a").get_by_role("button", name="Delete team/a").click()
    await home.page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(names(home)).to_have_text(["team/b"])
    await wait_for(lambda: stored_text(db_path, "team/a") is None)
    assert stored_text(db_path, "private") == "private"

    await row(home, "team/b").get_by_role("button", name="Rename team/b").click()
    dialog = home.page.get_by_role("dialog")
    field = dialog.get_by_label("New name")
    await field.fill("elsewhere")
    await field.press("Enter")
    await expect(dialog.get_by_role("alert")).to_have_text("Your link can only name documents under “team/”.")
    # Deleted by someone else while the dialog is open: the server's answer is shown, and the list catches up.
    assert await asyncio.to_thread(delete_elsewhere, server.port, "team%2Fb", token("team/b")) == 200
    await field.fill("team/c")
    await field.press("Enter")
    await expect(dialog.get_by_role("alert")).to_have_text(
        "“team/b” no longer exists: it was deleted or renamed elsewhere."
    )
    await expect(names(home)).to_have_count(0, timeout=LIVE_MS)
    await dialog.get_by_role("button", name="Cancel").click()
    await expect(home.page.locator("#empty")).to_contain_text("No documents under “team/” yet.")
    # The one console error is the refused rename's 404, which Chromium logs as a failed load.
    assert all("404" in error for error in home.errors) and len(home.errors) == 1, home.errors
