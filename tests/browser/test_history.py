"""The History panel end to end: moments grouped by day, an earlier version with its differences from the
current text, a restore seen live by a second person (and told to her), a restore undone by another; the
panel by keyboard, its list following the edits (while a version is shown, while someone types on), a
restore answered after another version was chosen; the diff of emoji, accents and blank lines; and what an
open page says when its document is deleted or renamed. Also the diff (web/src/textdiff.js), the grouping of
moments and the restore notice (web/src/history.js), run in Node on their own.

The history is made for real: the document's log rows are written by a store engine with the times they
would have had (three days ago, yesterday, and twice today), then a server is started on that database.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import re
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from playwright.async_api import Browser, Locator, Route, expect
from pycrdt import Doc, Text

from collab.store import WriteOp

from ..helpers import ROOT, StartServer, engine_on, server_text, stored_text, wait_for
from .harness import ADA, GRACE, PHONE, TIMEOUT_MS, Person, editor_url

pytestmark = pytest.mark.asyncio(loop_scope="session")

DAY = 86400.0
# Dates and times as the page writes them depend on the browser's locale and time zone: fixed here.
WHERE: dict[str, Any] = {"locale": "en-US", "timezone_id": "UTC"}


def edit_at(content: Text, position: int | None, delete: int, insert: str) -> None:
    at = len(str(content)) if position is None else position
    if delete:
        del content[at : at + delete]
    if insert:
        content.insert(at, insert)


def write_history(db_path: Path, name: str, now: float) -> list[tuple[float, str]]:
    """Write `name`'s log as four sittings of edits, a few seconds each; return (time, text after) per sitting."""
    doc: Doc = Doc()
    content = doc.get("content", type=Text)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    sittings: list[tuple[float, list[tuple[int | None, int, str]]]] = [
        (now - 3 * DAY, [(None, 0, "# Plan\n\n"), (None, 0, "Ship on Friday.\n")]),
        (now - DAY, [(None, 0, "Bring cake.\n")]),
        (now - 2400, [(16, 6, ""), (16, 0, "Monday")]),
        (now - 600, [(None, 0, "Invite Grace.\n")]),
    ]
    engine = engine_on(str(db_path))
    after = []
    try:
        for start, edits in sittings:
            for second, (position, delete, insert) in enumerate(edits):
                edit_at(content, position, delete, insert)
                if updates:
                    engine.commit([WriteOp("append", name, updates.pop(), start + second)])
            after.append((start, str(content)))
    finally:
        engine.close()
    return after


def day_heading(moment: float, now: float) -> str:
    """What the panel heads a moment's day with (en-US, UTC), as web/src/history.js dayLabel says it."""
    day, today = datetime.fromtimestamp(moment, UTC).date(), datetime.fromtimestamp(now, UTC).date()
    if day == today:
        return "Today"
    if day == today - timedelta(days=1):
        return "Yesterday"
    named = f"{day:%A}, {day:%B} {day.day}"
    return named if day.year == today.year else f"{named}, {day.year}"


async def test_history_shows_versions_by_day_and_restores_them(
    browser: Browser, start_server: StartServer, db_path: Path
) -> None:
    now = time.time()
    sittings = write_history(db_path, "team/plan", now)
    assert [text for _, text in sittings] == [
        "# Plan\n\nShip on Friday.\n",
        "# Plan\n\nShip on Friday.\nBring cake.\n",
        "# Plan\n\nShip on Monday.\nBring cake.\n",
        "# Plan\n\nShip on Monday.\nBring cake.\nInvite Grace.\n",
    ]
    current = sittings[-1][1]
    server = await start_server()
    url = editor_url(server.port, "team/plan")
    ada = await Person.join(browser, url, **WHERE, who=ADA)
    await ada.wait_text("(text, expected) => text === expected", current)
    grace = await Person.join(browser, url, **WHERE, who=GRACE)

    # The panel: newest first, grouped by day, each moment with its count of changes and size.
    await ada.page.locator("#history-button").click()
    panel = ada.page.locator("#history-panel")
    moments = panel.locator(".moment")
    await expect(moments).to_have_count(4)
    headings = list(dict.fromkeys(day_heading(start, now) for start, _ in reversed(sittings)))
    await expect(panel.locator(".history-day-title")).to_have_text(headings)
    changes = ["1 change", "2 changes", "1 change", "2 changes"]
    await expect(moments.locator(".moment-detail")).to_have_text([re.compile(rf"^{n} · \d+ B$") for n in changes])
    await expect(moments.first.locator(".moment-latest")).to_have_text("Latest")
    await expect(moments.nth(1)).to_have_text(re.compile(r"^[\d:\sAPM–]+2 changes · \d+ B$"))  # nothing else
    await ada.screenshot("history-panel.png")

    # Yesterday's version, read only, marked against the current text; the live editor waits underneath.
    await moments.nth(2).click()
    version = ada.page.locator("#version")
    await expect(version).to_be_visible()
    await expect(ada.page.locator("#editor")).to_be_hidden()
    shown = version.locator(".cm-content")
    await expect(shown).to_have_attribute("contenteditable", "false")
    await expect(version.locator(".version-text .cm-diff-insert")).to_have_text(["Friday"])  # only in this version
    await expect(version.locator(".version-text .cm-diff-delete")).to_have_text(["Monday", "Invite Grace."])  # only now
    # The version's lines, what only the current text has drawn where it would be: a word in its line, a
    # whole line as a line of its own (before the version's last, empty, line).
    await expect(version.locator(".cm-line")).to_have_text(["# Plan", "", "Ship on MondayFriday.", "Bring cake.", ""])
    await expect(version.locator(".cm-diff-deleted-lines .cm-diff-delete")).to_have_text(["Invite Grace."])
    await expect(version.locator(".version-text .cm-diff-insert")).to_have_js_property("tagName", "INS")
    await expect(ada.page.locator("#version-restore")).to_be_visible()
    await ada.screenshot("history-diff.png")

    # Grace goes on writing meanwhile: undisturbed, and Ada's comparison follows the live text.
    await grace.type_at("Control+End", "Book a room.")
    await ada.wait_text("(text) => text.endsWith('Book a room.')")
    await expect(version.locator(".cm-diff-deleted-lines .cm-diff-delete")).to_have_text(
        ["Invite Grace.", "Book a room."]
    )
    await expect(version.locator(".version-text .cm-diff-insert")).to_have_text(["Friday"])

    # Restore: both see yesterday's text at once, the server has it, and the list shows the restore.
    await ada.page.locator("#version-restore").click()
    await expect(version).to_be_hidden()
    await expect(ada.page.locator("#editor")).to_be_visible()
    yesterday = sittings[1][1]
    await ada.wait_text("(text, expected) => text === expected", yesterday)
    await grace.wait_text("(text, expected) => text === expected", yesterday)
    assert server_text(server, "team/plan") == yesterday
    await wait_for(lambda: stored_text(db_path, "team/plan") == yesterday)
    await expect(panel.locator("#history-note")).to_contain_text("Restored the version of yesterday")
    newest = moments.first
    await expect(newest.locator(".moment-restore")).to_have_text(re.compile(r"^Restored to yesterday \d"))
    await expect(newest.locator(".moment-people")).to_have_text("Ada, Grace")
    # The restore is a moment of its own, after Grace's: she wrote a moment before it.
    await expect(moments).to_have_count(6)
    # Grace is told who changed her text, and to what; Ada, who knows, is not.
    await expect(grace.page.locator(".restore-notice")).to_have_text(
        re.compile(r"^Ada restored the version of yesterday \d")
    )
    await expect(ada.page.locator(".restore-notice")).to_be_hidden()
    await ada.screenshot("history-restored.png")
    await grace.screenshot("history-restored-grace.png")

    # A restore is undone by restoring the moment before it: the text as Grace left it comes back.
    written = current + "Book a room."
    await moments.nth(1).click()
    await expect(version.locator(".version-text .cm-diff-insert")).to_have_text(
        ["Monday", "Invite Grace.", "Book a room."]
    )
    await ada.page.locator("#version-restore").click()
    await ada.wait_text("(text, expected) => text === expected", written)
    await grace.wait_text("(text, expected) => text === expected", written)
    await expect(newest.locator(".moment-restore")).to_have_text(re.compile(r"^Restored to \d"))
    await expect(moments).to_have_count(7)  # a moment of its own too, however soon after the other restore
    await expect(moments.nth(1).locator(".moment-restore")).to_have_text(re.compile(r"^Restored to yesterday \d"))
    await wait_for(lambda: stored_text(db_path, "team/plan") == written)

    # The latest moment is the current text: nothing to restore.
    await moments.first.click()
    await expect(ada.page.locator("#version-summary")).to_have_text("Same as the current text.")
    await expect(ada.page.locator("#version-restore")).to_be_hidden()

    # From one version straight to another, then back to the live document without restoring: nothing
    # changes, and the panel stays open (as Escape leaves it).
    await moments.nth(5).click()  # yesterday
    await expect(version.locator(".version-text .cm-diff-delete")).to_have_text(
        ["Monday", "Invite Grace.", "Book a room."]
    )
    await moments.nth(6).click()  # three days ago
    await expect(version.locator(".version-text .cm-diff-deleted-lines")).to_contain_text("Bring cake.")
    await expect(version.locator(".version-text .cm-diff-insert")).to_have_text(["Friday"])
    await expect(moments.nth(6)).to_have_attribute("aria-current", "true")
    await ada.page.locator("#version-back").click()
    await expect(version).to_be_hidden()
    await expect(panel).to_be_visible()
    await expect(moments.nth(6)).to_have_attribute("aria-current", "false")
    await expect(ada.page.locator("#editor .cm-content")).to_be_focused()
    assert await ada.text() == written
    ada.assert_no_errors()
    grace.assert_no_errors()


async def test_history_on_a_phone_is_a_sheet_under_the_version(
    browser: Browser, start_server: StartServer, db_path: Path
) -> None:
    sittings = write_history(db_path, "team/plan", time.time())
    server = await start_server()
    phone = await Person.join(
        browser,
        editor_url(server.port, "team/plan"),
        viewport=PHONE,
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
        **WHERE,
        who=GRACE,
    )
    await phone.page.locator("#history-button").tap()
    sheet = phone.page.locator("#history-panel")
    await sheet.locator(".moment").nth(2).tap()
    await expect(phone.page.locator("#version .version-text .cm-diff-insert")).to_have_text(["Friday"])
    sheet_box, bar_box = await sheet.bounding_box(), await phone.page.locator(".version-bar").bounding_box()
    assert sheet_box is not None and bar_box is not None
    assert sheet_box["y"] + sheet_box["height"] == pytest.approx(PHONE["height"], abs=1), sheet_box  # at the bottom
    assert sheet_box["y"] >= PHONE["height"] * 0.4, sheet_box
    assert bar_box["y"] + bar_box["height"] <= sheet_box["y"], (bar_box, sheet_box)  # the version shows above it
    widths = await phone.page.evaluate("[document.documentElement.scrollWidth, innerWidth]")
    assert widths[0] <= widths[1], widths
    await phone.screenshot("history-phone.png")
    await phone.page.locator("#version-restore").tap()
    await phone.wait_text("(text, expected) => text === expected", sittings[1][1])
    phone.assert_no_errors()


ACTIVE = "() => { const a = document.activeElement; return [a.id, a.className, a.dataset.at ?? null] }"


async def open_history(person: Person, count: int) -> Locator:
    await person.page.locator("#history-button").click()
    moments = person.page.locator("#history-panel .moment")
    await expect(moments).to_have_count(count)
    return moments


async def test_history_by_keyboard_keeps_the_focus_while_the_list_follows_the_edits(
    browser: Browser, start_server: StartServer, db_path: Path
) -> None:
    write_history(db_path, "team/plan", time.time())
    server = await start_server()
    url = editor_url(server.port, "team/plan")
    ada = await Person.join(browser, url, **WHERE, who=ADA)
    grace = await Person.join(browser, url, **WHERE, who=GRACE)
    page = ada.page

    # The History button, then Tab into the list, to yesterday's moment.
    await page.locator("#history-button").focus()
    await page.keyboard.press("Enter")
    moments = page.locator("#history-panel .moment")
    await expect(moments).to_have_count(4)
    for _ in range(20):
        if (await page.evaluate(ACTIVE))[1] == "moment":
            break
        await page.keyboard.press("Tab")
    for _ in range(2):
        await page.keyboard.press("Tab")
    yesterday = await moments.nth(2).get_attribute("data-at")
    assert (await page.evaluate(ACTIVE))[2] == yesterday

    # Enter shows the version and takes the focus there; Escape goes back to the moment in the list.
    await page.keyboard.press("Enter")
    version = page.locator("#version")
    await expect(version.locator(".version-text .cm-diff-insert")).to_have_text(["Friday"])
    await expect(version).to_be_focused()
    await page.keyboard.press("Escape")
    await expect(version).to_be_hidden()
    await expect(page.locator("#history-panel")).to_be_visible()
    await expect(moments.nth(2)).to_be_focused()
    await moments.nth(2).evaluate("(button) => { button.dataset.marked = 'yes' }")

    # Grace writes: the list gains her moment, redrawn in place; Ada's focus has not moved.
    await grace.type_at("Control+End", "Hello.")
    await expect(moments).to_have_count(5)
    await expect(moments.first.locator(".moment-people")).to_have_text(re.compile("Grace"))
    assert await page.evaluate(ACTIVE) == ["", "moment", yesterday]
    await expect(moments.nth(3)).to_have_attribute("data-marked", "yes")  # the same element, not a copy

    # The keyboard again: the version, Tab to "Back to the live document": the live editor, the panel open.
    await page.keyboard.press("Enter")
    await expect(version.locator(".version-text .cm-diff-insert")).to_have_text(["Friday"])
    for _ in range(5):
        await page.keyboard.press("Tab")
        if (await page.evaluate(ACTIVE))[0] == "version-back":
            break
    await page.keyboard.press("Enter")
    await expect(version).to_be_hidden()
    await expect(page.locator("#history-panel")).to_be_visible()
    await expect(page.locator("#editor .cm-content")).to_be_focused()

    # Escape in the list, when no version is shown, closes the panel, the focus back on its button.
    await moments.first.focus()
    await page.keyboard.press("Escape")
    await expect(page.locator("#history-panel")).to_be_hidden()
    await expect(page.locator("#history-button")).to_be_focused()
    ada.assert_no_errors()
    grace.assert_no_errors()


async def test_the_list_follows_the_edits_while_browsing_and_while_someone_types_on(
    browser: Browser, start_server: StartServer, db_path: Path
) -> None:
    write_history(db_path, "team/plan", time.time())
    server = await start_server()
    url = editor_url(server.port, "team/plan")
    ada = await Person.join(browser, url, **WHERE, who=ADA)
    grace = await Person.join(browser, url, **WHERE, who=GRACE)
    moments = await open_history(ada, 4)

    # Ada looks at a version while Grace writes: the list shows Grace's new moment meanwhile.
    await moments.nth(1).click()
    version = ada.page.locator("#version")
    await expect(version).to_be_focused()
    await grace.type_at("Control+End", "x")
    await expect(moments).to_have_count(5)
    await expect(version).to_be_visible()
    await expect(moments.nth(2)).to_have_attribute("aria-current", "true")  # the one shown, one lower now
    await expect(moments.first.locator(".moment-detail")).to_have_text(re.compile(r"^1 change · "))

    # Back to the live document: the list is asked for again at once (nothing else is pending to ask it).
    async with ada.page.expect_request(lambda request: "/api/history/" in request.url, timeout=1500):
        await ada.page.keyboard.press("Escape")
    await expect(version).to_be_hidden()

    # Grace types on, a key a second: the list does not wait for her to stop.
    latest = moments.first.locator(".moment-detail")
    followed = False
    for _ in range(8):
        await grace.page.keyboard.type("y")
        await asyncio.sleep(1.0)  # her pace
        followed = not re.match(r"^1 change · ", await latest.inner_text())
        if followed:
            break
    assert followed, "the list waited for Grace to stop typing"
    ada.assert_no_errors()
    grace.assert_no_errors()


async def test_a_restore_answered_after_another_version_is_chosen_leaves_that_one_open(
    browser: Browser, start_server: StartServer, db_path: Path
) -> None:
    sittings = write_history(db_path, "team/plan", time.time())
    server = await start_server()
    ada = await Person.join(browser, editor_url(server.port, "team/plan"), **WHERE, who=ADA)
    moments = await open_history(ada, 4)

    # The restore's request is held until Ada has moved on to another version.
    held, release = asyncio.Event(), asyncio.Event()

    async def hold(route: Route) -> None:
        held.set()
        with contextlib.suppress(TimeoutError):  # the test failed meanwhile: let it go
            async with asyncio.timeout(TIMEOUT_MS / 1000):
                await release.wait()
        await route.continue_()

    await ada.page.route("**/restore?*", hold)
    restore = ada.page.locator("#version-restore")
    await moments.nth(2).click()  # yesterday
    await expect(ada.page.locator(".version-text .cm-diff-insert")).to_have_text(["Friday"])
    await restore.click()
    async with asyncio.timeout(TIMEOUT_MS / 1000):
        await held.wait()
    await expect(restore).to_be_disabled()
    three_days_ago = await moments.nth(3).get_attribute("data-at")
    await moments.nth(3).click()
    when = ada.page.locator("#version-when")
    await expect(when).to_have_text(re.compile(r"^\w+day, \w+ \d+, \d"))
    shown = await when.inner_text()
    await expect(ada.page.locator(".version-text .cm-diff-deleted-lines")).to_contain_text("Bring cake.")
    await expect(restore).to_be_disabled()  # one restore at a time
    release.set()

    # Yesterday's text is back; the version of three days ago stays open, and says it is that one.
    await ada.wait_text("(text, expected) => text === expected", sittings[1][1])
    await expect(ada.page.locator("#history-note")).to_contain_text("Restored the version of yesterday")
    await expect(moments).to_have_count(5)
    await expect(ada.page.locator("#version")).to_be_visible()
    assert await when.inner_text() == shown
    await expect(ada.page.locator(f'.moment[data-at="{three_days_ago}"]')).to_have_attribute("aria-current", "true")
    await expect(restore).to_be_enabled()
    ada.assert_no_errors()


def write_text(db_path: Path, name: str, content: str, at: float) -> None:
    """Write `name`'s log as one change at time `at` that writes `content`."""
    doc: Doc = Doc()
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    doc.get("content", type=Text).insert(0, content)
    engine = engine_on(str(db_path))
    try:
        engine.commit([WriteOp("append", name, updates.pop(), at)])
    finally:
        engine.close()


REPLACE_TEXT = """(content) => {
  const text = window.collab.text
  text.doc.transact(() => { text.delete(0, text.length); text.insert(0, content) })
}"""


async def test_the_diff_keeps_characters_whole_and_shows_blank_lines(
    browser: Browser, start_server: StartServer, db_path: Path
) -> None:
    then = "Team 👨‍👩‍👧 from 🇫🇷 says 👍 café\none\n\ntwo\nthree\n\n"
    now = "Team 👨‍👩‍👦 from 🇫🇮 says 👍🏽 cafe\u0301\none\ntwo\n\nthree"
    write_text(db_path, "notes", then, time.time() - 3600)
    server = await start_server()
    ada = await Person.join(browser, editor_url(server.port, "notes"), **WHERE, who=ADA)
    await ada.wait_text("(text, expected) => text === expected", then)
    await ada.page.evaluate(REPLACE_TEXT, now)
    await wait_for(lambda: stored_text(db_path, "notes") == now)
    moments = await open_history(ada, 2)
    await moments.nth(1).click()
    version = ada.page.locator("#version")

    # Each emoji, flag and accented letter marked whole, as what a person sees as one character.
    inserted = version.locator(".version-text ins.cm-diff-insert", has_text=re.compile(r"\S"))
    await expect(inserted).to_have_text(["👨‍👩‍👧", "🇫🇷", "👍 café"])
    inline = version.locator(".cm-content > .cm-line del.cm-diff-delete")
    await expect(inline).to_have_text(["👨‍👩‍👦", "🇫🇮", "👍🏽 cafe\u0301"])
    # The version's blank lines that the current text lacks (the second, and the two at the end) are
    # marked as new lines; the blank line only the current text has is shown, struck, where it would be.
    lines = version.locator(".cm-line")
    await expect(lines).to_have_count(7)
    marked = await lines.evaluate_all(
        "(lines) => lines.map((line) => line.classList.contains('cm-diff-inserted-line'))"
    )
    assert marked == [False, False, True, False, False, True, True], marked
    blank = version.locator(".cm-diff-deleted-lines .cm-diff-delete")
    await expect(blank).to_have_count(1)
    await expect(blank).to_have_class(re.compile("is-blank"))
    box = await blank.bounding_box()
    assert box is not None and box["height"] > 10, box  # it takes a line's room
    await ada.screenshot("history-graphemes.png")

    # Thousands of lines against it, no two alike enough to pair: the view says it marks them coarsely.
    many = "\n".join("the same line" if i % 2 else f"line {i % 3}" for i in range(3000))
    await ada.page.evaluate(REPLACE_TEXT, many)
    await expect(ada.page.locator("#version-summary")).to_contain_text("Too many changes to mark word by word")
    await expect(ada.page.locator("#version-restore")).to_be_visible()
    ada.assert_no_errors()


def send(port: int, method: str, path: str) -> tuple[int, Any]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


DATABASES = "async () => (await indexedDB.databases()).map((database) => database.name)"


async def test_an_open_page_says_its_document_was_deleted_or_renamed(
    browser: Browser, start_server: StartServer, db_path: Path
) -> None:
    server = await start_server()
    ada = await Person.join(browser, editor_url(server.port, "old/plan"), who=ADA)
    await ada.type_at("Control+End", "Soon gone.")
    await wait_for(lambda: stored_text(db_path, "old/plan") == "Soon gone.")
    await ada.page.wait_for_function(f"async () => (await ({DATABASES})()).includes('collab-doc:old/plan')")

    assert await asyncio.to_thread(send, server.port, "DELETE", "/api/docs/" + quote("old/plan", safe="")) == (
        200,
        {"deleted": "old/plan"},
    )
    banner = ada.page.locator("#banner")
    await expect(banner).to_contain_text("This document was deleted")
    await expect(banner).to_contain_text("“document deleted”")
    await expect(banner.get_by_role("link", name="See all documents")).to_have_attribute("href", "/")
    await expect(ada.page.locator("#status")).to_have_attribute("data-state", "refused")
    await expect(ada.page.locator("#status")).to_have_text("Deleted")
    await expect(ada.page.locator(".cm-content")).to_have_attribute("contenteditable", "false")
    await expect(ada.page.locator("#history-button")).to_be_disabled()
    await expect(ada.page.locator("#share")).to_be_disabled()
    # The offline copy goes too: reopening the page later does not bring the document back.
    await ada.page.wait_for_function(
        f"async () => !(await ({DATABASES})()).includes('collab-doc:old/plan')", timeout=TIMEOUT_MS
    )
    await ada.screenshot("deleted.png")

    await ada.page.goto(editor_url(server.port, "drafts/plan"))
    await ada.wait_status("connected")
    await ada.type_at("Control+End", "Moving soon.")
    await wait_for(lambda: stored_text(db_path, "drafts/plan") == "Moving soon.")
    path = "/api/docs/" + quote("drafts/plan", safe="") + "/rename?to=" + quote("notes/plan", safe="")
    assert await asyncio.to_thread(send, server.port, "POST", path) == (
        200,
        {"renamed": "drafts/plan", "to": "notes/plan"},
    )
    await expect(banner).to_contain_text("This document was renamed to “notes/plan”")
    await expect(ada.page.locator("#status")).to_have_text("Renamed")
    link = banner.get_by_role("link", name="Open “notes/plan”")
    await expect(link).to_have_attribute("href", "/d/notes/plan")
    await ada.screenshot("renamed.png")
    await link.click()
    await ada.page.wait_for_url("**/d/notes/plan")
    await ada.wait_status("connected")
    assert await ada.wait_text("(text) => text === 'Moving soon.'") == "Moving soon."
    ada.assert_no_errors()


# The parts of the panel that need no browser, in Node: the word diff, and moments grouped by day.

DIFF_CHECKS = r"""
import { pathToFileURL } from 'node:url'
const web = process.argv[1]
const textdiff = pathToFileURL(web + '/src/textdiff.js')
const { DELETE, EQUAL, INSERT, GRAPHEMES, diffText, placeDifferences } = await import(textdiff)
const { dayLabel, groupMoments, restoreNotice } = await import(pathToFileURL(web + '/src/history.js'))
// The same module where Intl.Segmenter is missing (Firefox before 125): graphemes by GRAPHEMES instead.
const Segmenter = Intl.Segmenter
delete Intl.Segmenter
const withoutSegmenter = await import(textdiff + '?without-segmenter')
Intl.Segmenter = Segmenter

const diffs = (pairs, diff = diffText) => Object.fromEntries(pairs.map(([a, b]) => [`${a} -> ${b}`, diff(a, b).ops]))
const examples = diffs([
  ['the quick brown fox', 'the slow brown fox'],
  ['the quick fox', 'a slow fox'],
  ['apples\npears\n', 'apples\nplums\npears\n'],
  ['', 'new'],
  ['gone', ''],
  ['same', 'same'],
  ['Ship on Monday.\nInvite Grace.\n', 'Ship on Friday.\n'],
])
// What a person sees as one character, changed: never cut in two; and lines compared without their breaks.
const whole = [
  ['👨‍👩‍👧', '👨‍👩‍👦'],
  ['🇫🇷', '🇫🇮'],
  ['👍', '👍🏽'],
  ['cafe\u0301', 'cafe'],
  ['x\n', 'x'],
  ['end\n', 'one\ntwo\nend'],
  ['Ship Monday.\n', 'Ship Friday.\n\n'],
]
const graphemeSamples = ['👨‍👩‍👧 🇫🇷🇫🇮 👍🏽 cafe\u0301 1️⃣ ❤️ 🧑🏽‍🚀 🏴󠁧󠁢󠁥󠁮󠁧󠁿 e\u0301\u0302x', 'a\u200db 日本 ok']
const segmenter = new Segmenter('en', { granularity: 'grapheme' })
const segmented = (text) => Array.from(segmenter.segment(text), (part) => part.segment)

// Both sides come back from any diff: equal and deleted text make the first, equal and inserted the second;
// and every operation starts and ends between graphemes of the side(s) it belongs to.
let seed = 7
const random = () => (seed = (seed * 16807) % 2147483647) / 2147483647
const words = ['a', 'be', 'cat', ' ', '  ', '\n', 'é', 'e\u0301', '!', 'dog', '日本', '😀', '👨‍👩‍👧', '🇫🇷', '👍🏽', '1️⃣']
const some = (n) => Array.from({ length: n }, () => words[Math.floor(random() * words.length)]).join('')
const side = (ops, skip) => ops.filter(([op]) => op !== skip).map(([, text]) => text).join('')
const ends = (text) => Array.from(segmenter.segment(text), ({ index, segment }) => index + segment.length)
const boundaries = (text) => new Set([0, ...ends(text)])
let wrong = 0
let split = 0
for (let i = 0; i < 2000; i++) {
  const a = some(Math.floor(random() * 40))
  const b = random() < 0.5 ? some(Math.floor(random() * 40)) : a.slice(0, 7) + some(3) + a.slice(12)
  const { ops } = diffText(a, b)
  if (side(ops, INSERT) !== a || side(ops, DELETE) !== b || ops.some(([, text]) => !text)) wrong++
  if (ops.some(([op], k) => k > 0 && ops[k - 1][0] === op)) wrong++
  const atA = boundaries(a)
  const atB = boundaries(b)
  let inA = 0
  let inB = 0
  for (const [op, text] of ops) {
    if (op !== INSERT) inA += text.length
    if (op !== DELETE) inB += text.length
    if (!atA.has(inA) || !atB.has(inB)) split++
  }
}

// Where the differences show on the version: blank lines inserted, a blank line deleted.
const placed = placeDifferences(diffText('one\ntwo\n\nthree', 'one\n\ntwo\nthree\n\n').ops)
const placedAtEnd = placeDifferences(diffText('x\ny', 'x').ops)

// A whole rewrite of a long text: bounded, and still a correct diff.
const long = some(100000)
const rewritten = some(100000)
let started = Date.now()
const rewrite = diffText(long, rewritten)
const rewriteMs = Date.now() - started
const rewriteOk = side(rewrite.ops, INSERT) === long && side(rewrite.ops, DELETE) === rewritten
started = Date.now()
const prose = Array.from({ length: 20000 }, (_, i) => `line ${i} of the text\n`).join('')
const small = diffText(prose, prose.replace('line 5000 of', 'line 5000 and more of')).ops
const smallMs = Date.now() - started
// 20000 lines, one in ten changed here and there: marked line by line, not given up on.
const vocabulary = ['alpha', 'beta', 'gamma', 'delta', 'eps', 'zeta', 'eta', 'theta', 'iota', 'kappa']
const line = () => Array.from({ length: 8 }, () => vocabulary[Math.floor(random() * vocabulary.length)]).join(' ')
const lines = Array.from({ length: 20000 }, line)
const changedLines = lines.map((text) => (random() < 0.1 ? line() : text))
started = Date.now()
const scattered = diffText(lines.join('\n'), changedLines.join('\n'))
const scatteredMs = Date.now() - started
const scatteredOk = side(scattered.ops, INSERT) === lines.join('\n') &&
  side(scattered.ops, DELETE) === changedLines.join('\n')
// Thousands of lines, none unique, few alike: past the bounds, said so.
const repeated = Array.from({ length: 6000 }, (_, i) => ['a b', 'c d', 'e f'][i % 3]).join('\n')
const shuffled = Array.from({ length: 6000 }, (_, i) => ['a b', 'c d', 'e f'][(i * i) % 3]).join('\n')
started = Date.now()
const coarse = diffText(repeated, shuffled)
const coarseMs = Date.now() - started

const now = new Date(2025, 5, 18, 9, 30)
const at = (days, hours) => new Date(2025, 5, 18 - days, hours).toISOString()
const groups = groupMoments([at(0, 9), at(0, 8), at(1, 23), at(1, 1), at(4, 12)].map((iso) => ({ at: iso })), now)
console.log(JSON.stringify({
  examples,
  whole: diffs(whole),
  wholeWithoutSegmenter: diffs(whole, withoutSegmenter.diffText),
  graphemes: graphemeSamples.map(segmented),
  graphemesByPattern: graphemeSamples.map((text) => text.match(GRAPHEMES)),
  wrong,
  split,
  placed,
  placedAtEnd,
  rewriteMs,
  rewriteOk,
  smallMs,
  small: small.filter(([op]) => op !== EQUAL),
  scatteredMs,
  scatteredOk,
  scatteredCoarse: scattered.coarse,
  scatteredLongest: Math.max(...scattered.ops.filter(([op]) => op === INSERT).map(([, text]) => text.length)),
  coarse: coarse.coarse,
  coarseMs,
  groups: groups.map(({ label, moments }) => [label, moments.length]),
  labels: [dayLabel(new Date(2025, 5, 18, 0, 1), now), dayLabel(new Date(2025, 5, 17, 23, 59), now)],
  notices: [
    restoreNotice({ user: { name: 'Ada' }, restored: { at: at(0, 7), by: 'Ada' } }, now),
    restoreNotice({ restored: { at: 'not a time', by: 'Ada' } }, now),
    restoreNotice({ restored: { at: at(0, 7), by: { name: 'Ada' } } }, now),
    restoreNotice({ user: { name: 'Ada' } }, now),
  ],
}))
"""


async def test_the_word_diff_and_the_days() -> None:
    node = shutil.which("node")
    assert node, "the web checks need Node.js: scripts/test installs it"
    web = ROOT / "web"
    result = await asyncio.to_thread(
        subprocess.run,
        [node, "--input-type=module", "-e", DIFF_CHECKS, str(web)],
        cwd=web,
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
        env={"PATH": "/usr/bin:/bin", "TZ": "UTC", "LANG": "en_US.UTF-8"},
    )
    checks = json.loads(result.stdout)
    assert checks["examples"] == {
        "the quick brown fox -> the slow brown fox": [[0, "the "], [-1, "quick"], [1, "slow"], [0, " brown fox"]],
        "the quick fox -> a slow fox": [[-1, "the quick"], [1, "a slow"], [0, " fox"]],
        "apples\npears\n -> apples\nplums\npears\n": [[0, "apples\n"], [1, "plums\n"], [0, "pears\n"]],
        " -> new": [[1, "new"]],
        "gone -> ": [[-1, "gone"]],
        "same -> same": [[0, "same"]],
        "Ship on Monday.\nInvite Grace.\n -> Ship on Friday.\n": [
            [0, "Ship on "],
            [-1, "Monday"],
            [1, "Friday"],
            [0, ".\n"],
            [-1, "Invite Grace.\n"],
        ],
    }
    whole = {
        "👨‍👩‍👧 -> 👨‍👩‍👦": [[-1, "👨‍👩‍👧"], [1, "👨‍👩‍👦"]],
        "🇫🇷 -> 🇫🇮": [[-1, "🇫🇷"], [1, "🇫🇮"]],
        "👍 -> 👍🏽": [[-1, "👍"], [1, "👍🏽"]],
        "cafe\u0301 -> cafe": [[-1, "cafe\u0301"], [1, "cafe"]],
        "x\n -> x": [[0, "x"], [-1, "\n"]],  # the word stays unmarked: only the line break goes
        "end\n -> one\ntwo\nend": [[1, "one\ntwo\n"], [0, "end"], [-1, "\n"]],
        "Ship Monday.\n -> Ship Friday.\n\n": [[0, "Ship "], [-1, "Monday"], [1, "Friday"], [0, ".\n"], [1, "\n"]],
    }
    assert checks["whole"] == whole
    assert checks["wholeWithoutSegmenter"] == whole
    assert checks["graphemesByPattern"] == checks["graphemes"]
    assert checks["wrong"] == 0
    assert checks["split"] == 0
    # "one\n\ntwo\nthree\n\n": its lines 2, 5 and 6 (all blank) are new; the blank line after "two" is gone.
    assert checks["placed"] == {
        "insertions": [[4, 5], [14, 16]],
        "insertedLines": [4, 15, 16],
        "deletions": [{"at": 9, "text": "\n", "lines": [""], "side": -1}],
    }
    assert checks["placedAtEnd"] == {
        "insertions": [],
        "insertedLines": [],
        "deletions": [{"at": 1, "text": "\ny", "lines": ["y"], "side": 1}],  # after the last line
    }
    assert checks["rewriteOk"] and checks["rewriteMs"] < 5000, checks["rewriteMs"]
    assert checks["small"] == [[1, "and more "]]
    assert checks["smallMs"] < 2000, checks["smallMs"]
    assert checks["scatteredOk"] and not checks["scatteredCoarse"]
    assert checks["scatteredLongest"] < 1000, checks["scatteredLongest"]  # a few lines at most, not the text
    assert checks["scatteredMs"] < 5000, checks["scatteredMs"]
    assert checks["coarse"] and checks["coarseMs"] < 5000, checks["coarseMs"]
    assert checks["groups"] == [["Today", 2], ["Yesterday", 2], ["Saturday, June 14", 1]]
    assert checks["labels"] == ["Today", "Yesterday"]
    first, *malformed = checks["notices"]
    assert re.fullmatch(r"Ada restored the version of 7:00\sAM", first), first
    assert malformed == [None, None, None]
