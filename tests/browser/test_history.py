"""The History panel end to end: moments grouped by day, an earlier version with its differences from the
current text, a restore seen live by a second person, a restore undone by another; and what an open page
says when its document is deleted or renamed. Also the word diff (web/src/textdiff.js) and the grouping
of moments (web/src/history.js), run in Node on their own.

The history is made for real: the document's log rows are written by a store engine with the times they
would have had (three days ago, yesterday, and twice today), then a server is started on that database.
"""

from __future__ import annotations

import asyncio
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
from playwright.async_api import Browser, expect
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
    ada = await Person.arrive(browser, url, **WHERE)
    await ada.introduce(*ADA[:2])
    await ada.wait_status("connected")
    await ada.wait_text("(text, expected) => text === expected", current)
    grace = await Person.arrive(browser, url, **WHERE)
    await grace.introduce(*GRACE[:2])
    await grace.wait_status("connected")

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
    # The version's lines, what only the current text has drawn where it would be.
    await expect(version.locator(".cm-line")).to_have_text(
        ["# Plan", "", "Ship on MondayFriday.", "Bring cake.", "Invite Grace."]
    )
    await expect(ada.page.locator("#version-restore")).to_be_visible()
    await ada.screenshot("history-diff.png")

    # Grace goes on writing meanwhile: undisturbed, and Ada's comparison follows the live text.
    await grace.type_at("Control+End", "Book a room.")
    await ada.wait_text("(text) => text.endsWith('Book a room.')")
    await expect(version.locator(".version-text .cm-diff-delete").last).to_have_text("Invite Grace.\nBook a room.")
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
    await expect(moments).to_have_count(5)
    await ada.screenshot("history-restored.png")
    await grace.screenshot("history-restored-grace.png")

    # A restore is undone by restoring the moment before it: the text of ten minutes ago comes back.
    await moments.nth(1).click()
    await expect(version.locator(".version-text .cm-diff-insert")).to_have_text(["Monday", "Invite Grace."])
    await ada.page.locator("#version-restore").click()
    await ada.wait_text("(text, expected) => text === expected", current)
    await grace.wait_text("(text, expected) => text === expected", current)
    await expect(newest.locator(".moment-restore")).to_have_text(re.compile(r"^Restored to (yesterday )?\d"))
    await expect(moments).to_have_count(5)  # the same sitting, now ended by the second restore
    await wait_for(lambda: stored_text(db_path, "team/plan") == current)

    # From one version straight to another, then back to the live document without restoring: nothing changes.
    await moments.nth(3).click()
    await expect(version.locator(".version-text .cm-diff-delete")).to_have_text(["Monday", "Invite Grace."])
    await moments.nth(4).click()
    await expect(version.locator(".version-text .cm-diff-delete").last).to_contain_text("Bring cake.")
    await expect(version.locator(".version-text .cm-diff-insert")).to_have_text(["Friday"])
    await expect(moments.nth(4)).to_have_attribute("aria-current", "true")
    await ada.page.locator("#version-back").click()
    await expect(version).to_be_hidden()
    await expect(panel).to_be_hidden()
    assert await ada.text() == current
    ada.assert_no_errors()
    grace.assert_no_errors()


async def test_history_on_a_phone_is_a_sheet_under_the_version(
    browser: Browser, start_server: StartServer, db_path: Path
) -> None:
    sittings = write_history(db_path, "team/plan", time.time())
    server = await start_server()
    phone = await Person.arrive(
        browser,
        editor_url(server.port, "team/plan"),
        viewport=PHONE,
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
        **WHERE,
    )
    await phone.introduce(*GRACE[:2])
    await phone.wait_status("connected")
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
    ada = await Person.arrive(browser, editor_url(server.port, "old/plan"))
    await ada.introduce(*ADA[:2])
    await ada.wait_status("connected")
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

DIFF_CHECKS = """
import { pathToFileURL } from 'node:url'
const web = process.argv[1]
const { DELETE, INSERT, diffText } = await import(pathToFileURL(web + '/src/textdiff.js'))
const { dayLabel, groupMoments } = await import(pathToFileURL(web + '/src/history.js'))

const examples = Object.fromEntries([
  ['the quick brown fox', 'the slow brown fox'],
  ['the quick fox', 'a slow fox'],
  ['apples\\npears\\n', 'apples\\nplums\\npears\\n'],
  ['', 'new'],
  ['gone', ''],
  ['same', 'same'],
  ['Ship on Monday.\\nInvite Grace.\\n', 'Ship on Friday.\\n'],
].map(([a, b]) => [`${a} -> ${b}`, diffText(a, b)]))

// Both sides come back from any diff: equal and deleted text make the first, equal and inserted the second.
let seed = 7
const random = () => (seed = (seed * 1103515245 + 12345) % 2147483648) / 2147483648
const words = ['a', 'be', 'cat', ' ', '  ', '\\n', 'é', '!', 'dog', '日本', '😀']
const some = (n) => Array.from({ length: n }, () => words[Math.floor(random() * words.length)]).join('')
const side = (ops, skip) => ops.filter(([op]) => op !== skip).map(([, text]) => text).join('')
let wrong = 0
for (let i = 0; i < 3000; i++) {
  const a = some(Math.floor(random() * 40))
  const b = random() < 0.5 ? some(Math.floor(random() * 40)) : a.slice(0, 7) + some(3) + a.slice(12)
  const ops = diffText(a, b)
  if (side(ops, INSERT) !== a || side(ops, DELETE) !== b || ops.some(([, text]) => !text)) wrong++
  if (ops.some(([op], k) => k > 0 && ops[k - 1][0] === op)) wrong++
}

// A whole rewrite of a long text: bounded, and still a correct diff.
const long = some(100000)
const rewritten = some(100000)
let started = Date.now()
const ops = diffText(long, rewritten)
const rewriteMs = Date.now() - started
const rewriteOk = side(ops, INSERT) === long && side(ops, DELETE) === rewritten
started = Date.now()
const prose = Array.from({ length: 20000 }, (_, i) => `line ${i} of the text\n`).join('')
const small = diffText(prose, prose.replace('line 5000 of', 'line 5000 and more of'))
const smallMs = Date.now() - started

const now = new Date(2025, 5, 18, 9, 30)
const at = (days, hours) => new Date(2025, 5, 18 - days, hours).toISOString()
const groups = groupMoments([at(0, 9), at(0, 8), at(1, 23), at(1, 1), at(4, 12)].map((iso) => ({ at: iso })), now)
console.log(JSON.stringify({
  examples,
  wrong,
  rewriteMs,
  rewriteOk,
  smallMs,
  small: small.filter(([op]) => op !== 0),
  groups: groups.map(({ label, moments }) => [label, moments.length]),
  labels: [dayLabel(new Date(2025, 5, 18, 0, 1), now), dayLabel(new Date(2025, 5, 17, 23, 59), now)],
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
        timeout=60,
        check=True,
        env={"PATH": "/usr/bin:/bin", "TZ": "UTC"},
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
    assert checks["wrong"] == 0
    assert checks["rewriteOk"] and checks["rewriteMs"] < 5000, checks["rewriteMs"]
    assert checks["small"] == [[1, "and more "]]
    assert checks["smallMs"] < 2000, checks["smallMs"]
    assert checks["groups"] == [["Today", 2], ["Yesterday", 2], ["Saturday, June 14", 1]]
    assert checks["labels"] == ["Today", "Yesterday"]
