"""The index page end to end: live updates, delete and rename from the list, and what a token shows.

Tests of when the page polls run it on Playwright's fake clock (`page.clock`): the page's timers fire only
as the test moves its time on, and the page records the time of each request it makes (`FETCH_LOG`), so that
intervals of a minute are checked to the millisecond without waiting for them, and "no request" means none
whatever the time, not none within some real window.
"""

from __future__ import annotations

import asyncio
import http.client
import itertools
import time
from pathlib import Path

import pytest
from playwright.async_api import Browser, Locator, Route, expect

from collab.auth import Permission, verify_token
from collab.server.app import CollabServer

from ..helpers import SECRET, StartServer, room_url, stored_text, synced, text, token, wait_for, with_token
from .harness import ADA, PHONE, Person, editor_url

pytestmark = pytest.mark.asyncio(loop_scope="session")

LIVE_MS = 8_000
"""How soon a change made elsewhere must show: the page polls every 3 s, so two polls and some."""

FETCH_LOG = """
window.fetched = []
const fetchAsIs = window.fetch
window.fetch = (input, init) => {
  window.fetched.push({ path: new URL(String(input), location.href).pathname, at: Date.now() })
  return fetchAsIs(input, init)
}
"""
"""Before the page's scripts: every fetch() is recorded, with the page's clock time, as it is made."""


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


async def on_fake_clock(browser: Browser, *, paused: bool) -> Person:
    """A person at a blank page that records its requests (`fetched`) on a fake clock, paused (time moves only
    by `clock.run_for`) or flowing; the test sets its routes, then goes to the page."""
    person = await Person.arrive(browser, "about:blank")
    await person.page.add_init_script(FETCH_LOG)
    await person.page.clock.install()
    if paused:
        await person.page.clock.pause_at(time.time() + 1)
    return person


async def fetched(person: Person, path: str) -> list[int]:
    """The page clock's times (ms) of every request the page made to `path` so far."""
    times: list[int] = await person.page.evaluate(
        "(path) => window.fetched.filter((request) => request.path === path).map((request) => request.at)", path
    )
    return times


def intervals(times: list[int]) -> list[int]:
    return [later - earlier for earlier, later in itertools.pairwise(times)]


async def listings_later(home: Person, count: int = 2) -> None:
    """Wait for `count` more listing requests: each is only made once the one before it is shown."""
    for _ in range(count):
        async with home.page.expect_request("**/api/docs", timeout=LIVE_MS):
            pass


def row(home: Person, name: str) -> Locator:
    return home.page.locator("#documents .doc-item", has=home.page.locator(".doc-name-text", has_text=name))


def names(home: Person) -> Locator:
    return home.page.locator("#documents .doc-name-text")


async def test_documents_created_and_deleted_elsewhere_come_and_go_without_reload(
    browser: Browser, server: CollabServer
) -> None:
    await write(server, "first", "one")
    home = await on_fake_clock(browser, paused=False)
    await home.page.goto(home_url(server.port))
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

    # A hidden page does not poll, however long it stays hidden; it catches up at once when it is visible again.
    await home.page.evaluate(
        "Object.defineProperty(document, 'visibilityState', { value: 'hidden', configurable: true });"
        "document.dispatchEvent(new Event('visibilitychange'))"
    )
    asked = len(await fetched(home, "/api/docs"))
    await write(server, "while away", "three")
    await home.page.clock.run_for("10:00")  # a poll due in these ten minutes would be made within run_for
    assert len(await fetched(home, "/api/docs")) == asked, "a hidden page polled"
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
    ada = await Person.join(browser, editor_url(server.port, "team/memo"), who=ADA)
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
    await listings_later(home)  # the open tab, refused, does not bring it back
    await expect(names(home)).to_have_text(["keep"])
    assert stored_text(db_path, "team/memo") is None
    assert "team/memo" not in server.rooms
    home.assert_no_errors()
    ada.assert_no_errors()


async def test_renaming_from_the_list_tells_the_open_tab_and_keeps_the_content(
    browser: Browser, server: CollabServer, db_path: Path
) -> None:
    await write(server, "other", "another")
    ada = await Person.join(browser, editor_url(server.port, "draft"), who=ADA)
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


async def test_after_a_delete_or_a_rename_the_focus_stays_in_the_list(browser: Browser, server: CollabServer) -> None:
    """With the keyboard: the focus goes to the row that takes the deleted one's place (the one before it at
    the end, the list's heading when none is left), and stays on a renamed row, however the list refreshes."""
    for name in ("a", "b", "c"):
        await write(server, name, name)
    home = await Person.arrive(browser, home_url(server.port))
    await expect(names(home)).to_have_text(["c", "b", "a"])  # newest first
    keys = home.page.keyboard

    async def delete(name: str) -> None:
        await home.page.get_by_role("button", name=f"Delete {name}", exact=True).focus()
        await keys.press("Enter")
        await expect(home.page.get_by_role("dialog")).to_contain_text(f"Delete “{name}”?")
        await keys.press("Tab")  # from Cancel to Delete
        await keys.press("Enter")
        await expect(home.page.locator("#list-notice")).to_have_text(f"Deleted “{name}”.")

    await delete("b")
    await expect(row(home, "a").locator(".doc-row")).to_be_focused()
    await delete("a")  # the last row: the one before it
    await expect(row(home, "c").locator(".doc-row")).to_be_focused()

    await home.page.get_by_role("button", name="Rename c", exact=True).focus()
    await keys.press("Enter")
    await expect(home.page.get_by_role("dialog").get_by_label("New name")).to_be_focused()
    await keys.type("renamed")  # over the old name, which is selected
    await keys.press("Enter")
    await expect(home.page.locator("#list-notice")).to_have_text("Renamed “c” to “renamed”.")
    renamed = home.page.get_by_role("button", name="Rename renamed", exact=True)
    await expect(renamed).to_be_focused()
    await listings_later(home)  # the list, refreshed from the server, keeps the row and the focus in it
    await expect(names(home)).to_have_text(["renamed"])
    await expect(renamed).to_be_focused()

    await delete("renamed")  # none left: the heading
    await expect(home.page.locator("#list-title")).to_be_focused()
    await expect(home.page.locator("#empty")).to_be_visible()
    home.assert_no_errors()


COPY_UPDATES = """async (key) => {
  if (!(await indexedDB.databases()).some((database) => database.name === key)) return null
  return await new Promise((resolve) => {
    const request = indexedDB.open(key)
    request.onsuccess = () => {
      const database = request.result
      const count = database.transaction('updates').objectStore('updates').count()
      count.onsuccess = () => {
        database.close()
        resolve(count.result)
      }
    }
    request.onerror = () => resolve(null)
  })
}"""
"""How many updates this browser's offline copy of a document holds (y-indexeddb's store), null for no copy."""


async def wait_for_copy(person: Person, name: str, *, kept: bool) -> None:
    """Until this browser's offline copy of `name` holds updates (`kept`), or until there is none."""
    async with asyncio.timeout(10):
        while True:
            held: int | None = await person.page.evaluate(COPY_UPDATES, f"collab-doc:{name}")
            if (held is not None and held > 0) if kept else held is None:
                return
            await asyncio.sleep(0.05)


async def test_a_document_deleted_or_renamed_from_the_list_leaves_no_offline_copy_to_come_back_from(
    browser: Browser, server: CollabServer, db_path: Path
) -> None:
    ada = await Person.join(browser, editor_url(server.port, "memo"), who=ADA)
    await ada.type_at("Control+End", "secret old text")
    await wait_for(lambda: stored_text(db_path, "memo") == "secret old text")
    await ada.page.goto(editor_url(server.port, "draft"))
    await ada.wait_status("connected")
    await ada.type_at("Control+End", "the draft")
    await wait_for(lambda: stored_text(db_path, "draft") == "the draft")
    for name in ("memo", "draft"):
        await wait_for_copy(ada, name, kept=True)

    home = Person(ada.context, await ada.context.new_page())  # the same browser, so the same copies
    await ada.page.close()
    await home.page.goto(home_url(server.port))
    await row(home, "memo").get_by_role("button", name="Delete memo").click()
    await home.page.get_by_role("dialog").get_by_role("button", name="Delete").click()
    await expect(home.page.locator("#list-notice")).to_have_text("Deleted “memo”.")
    await row(home, "draft").get_by_role("button", name="Rename draft").click()
    await home.page.get_by_role("dialog").get_by_label("New name").fill("final")
    await home.page.get_by_role("dialog").get_by_role("button", name="Rename").click()
    await expect(home.page.locator("#list-notice")).to_have_text("Renamed “draft” to “final”.")
    for name in ("memo", "draft"):
        await wait_for_copy(home, name, kept=False)

    # Opened again, both names are empty documents, here and on the server; the text lives on as "final".
    for name in ("memo", "draft"):
        await home.page.goto(editor_url(server.port, name))
        await home.wait_status("connected")
        assert await home.text() == ""
        assert stored_text(db_path, name) is None
    assert stored_text(db_path, "final") == "the draft"
    home.assert_no_errors()
    ada.assert_no_errors()


async def test_a_refused_link_stops_the_polling_and_says_it_will_not_heal(
    browser: Browser, start_server: StartServer
) -> None:
    server = await start_server(auth_secret=SECRET)
    await write(server, "team/a", "a", token("team/a"))
    short = token("team/", ttl=3)
    home = await on_fake_clock(browser, paused=True)
    await home.page.goto(home_url(server.port, short))
    await expect(names(home)).to_have_text(["team/a"])
    await expect(home.page.locator("#documents .doc-actions")).to_have_count(1)

    expires_at = verify_token(SECRET.encode(), short).expires_at
    await wait_for(lambda: time.time() > expires_at + 0.1, timeout=10)  # expired, by the server's clock
    await home.page.clock.run_for(3000)
    error = home.page.locator("#list-error")
    await expect(error).to_contain_text("refused this page’s access link: token expired")
    await expect(error).to_contain_text("does not start working again, so this page stopped asking")
    await expect(names(home)).to_have_text(["team/a"])  # what was last known stays, with nothing to do on it
    await expect(home.page.locator("#documents .doc-actions")).to_have_count(0)
    await home.screenshot("index-refused.png")

    asked = await fetched(home, "/api/docs")
    await home.page.clock.run_for("01:00:00")
    await home.page.evaluate("document.dispatchEvent(new Event('visibilitychange'))")  # "visible again"
    await home.page.clock.run_for("01:00:00")
    assert await fetched(home, "/api/docs") == asked, "the page kept asking with a token that cannot work"
    assert len(asked) == 2
    assert all("401" in error for error in home.errors) and len(home.errors) == 1, home.errors


async def test_a_failing_listing_is_asked_for_later_and_later_then_every_3_s_again(
    browser: Browser, server: CollabServer
) -> None:
    await write(server, "first", "one")
    failures = 0

    async def failing(route: Route) -> None:
        """Seven failures, a 503 and no answer at all in turn; then the server's own answers."""
        nonlocal failures
        if failures == 7:
            await route.continue_()
            return
        failures += 1
        if failures % 2:
            await route.fulfill(status=503, json={"error": "the store is unavailable"})
        else:
            await route.abort("connectionrefused")

    home = await on_fake_clock(browser, paused=True)
    await home.page.route("**/api/docs", failing)
    await home.page.goto(home_url(server.port))
    error = home.page.locator("#list-error")
    delays = [3, 6, 12, 24, 48, 60, 60]
    for attempt, delay in enumerate(delays, start=1):
        why = "the server answered 503: the store is unavailable" if attempt % 2 else "the server could not be reached"
        # Shown once the failure is handled, and the next try set for `delay` from the time it was made.
        await expect(error).to_have_text(f"Couldn’t load the document list ({why}). Trying again in {delay} s…")
        if delay == 60:
            await home.screenshot("index-retrying.png")
        await home.page.clock.run_for(delay * 1000)
    await expect(names(home)).to_have_text(["first"])
    await expect(error).to_be_hidden()
    await home.page.clock.run_for(3000)  # a success starts the polls over
    assert intervals(await fetched(home, "/api/docs")) == [delay * 1000 for delay in delays] + [3000]
    # Each failed load, as Chromium logs it, and nothing else.
    assert len(home.errors) == 7 and all("503" in e or "ERR_CONNECTION_REFUSED" in e for e in home.errors), home.errors


async def test_unknown_access_is_asked_for_later_and_later_not_at_every_poll(
    browser: Browser, server: CollabServer
) -> None:
    """Until GET /api/access answers, the list shows no actions; it is asked again 3 s, 6 s, 12 s... later."""
    await write(server, "doc0", "x")
    access_down = True

    async def access(route: Route) -> None:
        await (route.abort("connectionrefused") if access_down else route.continue_())

    home = await on_fake_clock(browser, paused=True)
    await home.page.route("**/api/access", access)
    await home.page.goto(home_url(server.port))
    await expect(names(home)).to_have_text(["doc0"])
    for poll in range(1, 16):  # a poll every 3 s, each one document more, for 45 s
        if poll == 15:
            access_down = False
        await write(server, f"doc{poll}", "x")
        await home.page.clock.run_for(3000)
        await expect(home.page.locator("#doc-count")).to_have_text(str(poll + 1))
    await expect(home.page.locator("#documents .doc-actions")).to_have_count(16)
    asked = await fetched(home, "/api/access")
    assert intervals(asked) == [3000, 6000, 12000, 24000], asked
    assert len(await fetched(home, "/api/docs")) == 16

    await write(server, "doc16", "x")
    await home.page.clock.run_for(3000)
    await expect(home.page.locator("#doc-count")).to_have_text("17")
    assert await fetched(home, "/api/access") == asked, "known once: not asked again"
    # Each refused request, as Chromium logs it, and nothing else.
    assert len(home.errors) == 4 and all("ERR_CONNECTION_REFUSED" in e for e in home.errors), home.errors


async def test_a_name_as_long_as_the_server_takes_can_be_typed_in_any_script(
    browser: Browser, server: CollabServer, db_path: Path
) -> None:
    """The server counts characters (code points), not UTF-16 units: 255 emoji (510 units) are a valid name."""
    longest = "📝" * 255
    home = await Person.arrive(browser, home_url(server.port))
    field = home.page.get_by_label("Document name")
    await field.fill(longest + "📝")
    await field.press("Enter")
    await expect(home.page.locator("#open-error")).to_have_text("A name is at most 255 characters.")
    await field.fill("")  # it filters the list too

    await write(server, "short", "x")
    await row(home, "short").get_by_role("button", name="Rename short").click()
    dialog = home.page.get_by_role("dialog")
    await dialog.get_by_label("New name").fill(longest)
    await expect(dialog.get_by_label("New name")).to_have_value(longest)
    await dialog.get_by_role("button", name="Rename").click()
    await expect(dialog).to_have_count(0)
    await wait_for(lambda: stored_text(db_path, longest) == "x")
    await expect(names(home)).to_have_text([longest])

    await field.fill(longest)
    await expect(field).to_have_value(longest)
    await field.press("Enter")
    await home.page.wait_for_url(editor_url(server.port, longest))
    home.assert_no_errors()
