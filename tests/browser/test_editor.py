"""The web editor end to end: people typing together, undo, names, restarts, refusals, the list, the phone."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from playwright.async_api import Browser, expect
from pycrdt import Text

from collab.server.app import CollabServer

from ..helpers import (
    SECRET,
    ServerProcess,
    StartServer,
    room_url,
    stored_text,
    synced,
    text,
    token,
    wait_for,
    with_token,
)
from .harness import ADA, GRACE, PHONE, Person, editor_url

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_two_people_type_at_once_and_see_each_other(
    browser: Browser, server: CollabServer, db_path: Path
) -> None:
    url = editor_url(server.port, "team/launch plan")
    ada = await Person.join(browser, url, who=ADA)
    await ada.type_at("Control+End", "# Launch plan\n\nShip the editor on Friday.\n\nOpen questions:")
    grace = await Person.join(browser, url, who=GRACE)
    await grace.wait_text("(text) => text.endsWith('Open questions:')")

    # Both type at the same time, in different places.
    ada_line, grace_line = " who writes the release notes?", "\n- Grace: the cursors show names and colours."
    await ada.type_at("Control+Home", "")
    for key in ("ArrowDown", "ArrowDown", "End"):  # the end of "Ship the editor on Friday."
        await ada.page.keyboard.press(key)
    await grace.type_at("Control+End", "")
    await asyncio.gather(ada.page.keyboard.type(ada_line), grace.page.keyboard.type(grace_line))

    both = "(text, parts) => parts.every((part) => text.includes(part))"
    final = await ada.wait_text(both, [ada_line, grace_line])
    assert await grace.wait_text(both, [ada_line, grace_line]) == final
    assert final == f"# Launch plan\n\nShip the editor on Friday.{ada_line}\n\nOpen questions:{grace_line}"
    await wait_for(lambda: stored_text(db_path, "team/launch plan") == final)

    # Grace sees Ada's caret, labelled with her name, in her colour; both see who is here.
    label = grace.page.locator(".cm-ySelectionInfo", has_text=ADA[0])
    await expect(label).to_be_visible()
    await expect(grace.page.locator(".cm-ySelectionCaret", has=label)).to_have_css("border-left-color", ADA[2])
    await expect(ada.page.locator(".cm-ySelectionInfo", has_text=GRACE[0])).to_be_visible()
    await expect(grace.page.locator("#people .person:not(.is-me) .person-name")).to_have_text([ADA[0]])
    await expect(ada.page.locator("#people .person:not(.is-me) .person-name")).to_have_text([GRACE[0]])
    await expect(grace.page.locator("#me")).to_contain_text(GRACE[0])

    # Line numbers, and Markdown highlighting: the heading is drawn bold and larger than body text.
    await expect(grace.page.locator(".cm-lineNumbers .cm-gutterElement", has_text="6")).to_be_visible()
    heading = grace.page.locator(".cm-line").first.locator("span", has_text="Launch plan")
    await expect(heading).to_have_css("font-weight", "700")
    assert await heading.evaluate("(span) => parseFloat(getComputedStyle(span).fontSize) > 15 * 1.3")

    await grace.screenshot("two-users-editing.png")
    await ada.screenshot("two-users-editing-ada-view.png")
    ada.assert_no_errors()
    grace.assert_no_errors()


async def test_undo_takes_back_only_my_own_edits(browser: Browser, server: CollabServer, db_path: Path) -> None:
    url = editor_url(server.port, "undo")
    ada = await Person.arrive(browser, url)
    await ada.introduce(*ADA[:2])
    grace = await Person.arrive(browser, url)
    await grace.introduce(*GRACE[:2])
    await ada.wait_status("connected")
    await grace.wait_status("connected")

    await ada.type_at("Control+End", "mine")
    await grace.wait_text("(text) => text === 'mine'")
    await grace.type_at("Control+End", " theirs")
    await ada.wait_text("(text) => text === 'mine theirs'")

    # Ada undoes everything she can: Grace's words stay.
    for _ in range(10):
        if not await ada.page.evaluate("window.collab.undoManager.undoStack.length"):
            break
        await ada.page.keyboard.press("Control+z")
    assert await ada.wait_text("(text) => text === ' theirs'") == " theirs"
    await grace.wait_text("(text) => text === ' theirs'")
    # And redoes it.
    await ada.page.keyboard.press("Control+Shift+Z")
    await grace.wait_text("(text) => text === 'mine theirs'")
    await wait_for(lambda: stored_text(db_path, "undo") == "mine theirs")
    ada.assert_no_errors()
    grace.assert_no_errors()


async def test_name_is_asked_once_remembered_and_editable(browser: Browser, server: CollabServer) -> None:
    url = editor_url(server.port, "presence")
    ada = await Person.join(browser, url, who=ADA)
    # Remembered: another document in the same browser does not ask again.
    await ada.page.goto(editor_url(server.port, "presence"))
    await ada.wait_status("connected")
    await expect(ada.page.locator("#me")).to_contain_text(ADA[0])
    await expect(ada.page.locator("dialog")).to_have_count(0)

    grace = await Person.arrive(browser, url)
    await grace.introduce(*GRACE[:2])
    await expect(grace.page.locator("#people .person:not(.is-me) .person-name")).to_have_text([ADA[0]])

    # Ada changes her name and colour; Grace sees the change.
    await ada.page.locator("#me").click()
    dialog = ada.page.locator("dialog.identity-dialog")
    await expect(dialog.get_by_label("Name")).to_have_value(ADA[0])
    await dialog.get_by_label("Name").fill("Ada L.")
    await dialog.get_by_label("Rose").check()
    await dialog.get_by_role("button", name="Save").click()
    await expect(grace.page.locator("#people .person:not(.is-me) .person-name")).to_have_text(["Ada L."])
    stored = await ada.page.evaluate("JSON.parse(localStorage.getItem('collab.identity'))")
    assert stored == {"name": "Ada L.", "color": "#e11d48"}
    ada.assert_no_errors()
    grace.assert_no_errors()


async def test_reload_after_a_server_restart_shows_everything(
    browser: Browser, start_server: StartServer, db_path: Path
) -> None:
    first = await start_server()
    port = first.port
    ada = await Person.join(browser, editor_url(port, "kept"), who=ADA)
    written = "Line one.\nLine two, **bold**.\n\nLine four."
    await ada.type_at("Control+End", written)
    expected = await ada.wait_text("(text) => text.endsWith('Line four.')")
    await wait_for(lambda: stored_text(db_path, "kept") == expected)

    await first.stop()
    await ada.wait_status("offline")
    await start_server(port=port)
    await ada.page.reload()
    await ada.wait_status("connected")
    assert await ada.wait_text("(text, expected) => text === expected", expected) == expected
    await expect(ada.page.locator(".cm-line").first).to_have_text("Line one.")
    ada.assert_no_errors()


async def test_typing_goes_on_offline_and_syncs_when_the_server_returns(browser: Browser, tmp_path: Path) -> None:
    db = tmp_path / "collab.db"
    process = ServerProcess(db).start()
    try:
        ada = await Person.join(browser, editor_url(process.port, "travel"), who=ADA)
        await ada.type_at("Control+End", "Written online.")
        await wait_for(lambda: stored_text(db, "travel") == "Written online.")

        await asyncio.to_thread(process.kill)  # gone without a goodbye
        await ada.wait_status("offline")
        await expect(ada.page.locator("#banner")).to_contain_text("You’re offline")
        await ada.type_at("Control+End", " Written offline.")
        assert await ada.text() == "Written online. Written offline."
        assert stored_text(db, "travel") == "Written online."

        await asyncio.to_thread(process.start)  # same port, same database
        await ada.wait_status("connected")
        await expect(ada.page.locator("#banner")).to_be_hidden()
        await wait_for(lambda: stored_text(db, "travel") == "Written online. Written offline.", timeout=15)
        # Someone arriving now gets it all from the server.
        async with synced(room_url(process.port, "travel")) as reader:
            assert str(text(reader)) == "Written online. Written offline."
        ada.assert_no_errors()
    finally:
        if process.process is not None and process.process.poll() is None:
            await asyncio.to_thread(process.stop)


async def test_a_refused_document_says_so_and_stops_trying(browser: Browser, server: CollabServer) -> None:
    # Leading whitespace: the server closes with 4400 and the reason.
    ada = await Person.arrive(browser, f"http://127.0.0.1:{server.port}/d/%20padded")
    await ada.introduce(*ADA[:2])
    await ada.wait_status("refused")
    banner = ada.page.locator("#banner")
    await expect(banner).to_contain_text("This document can’t be opened")
    await expect(banner).to_contain_text("starts or ends with whitespace")
    await expect(banner).to_contain_text("4400")
    assert await ada.page.evaluate("window.collab.provider.shouldConnect") is False
    await expect(ada.page.locator(".cm-content")).to_have_attribute("contenteditable", "false")
    # A name that is not even valid percent-encoded UTF-8 is refused by the page itself.
    await ada.page.goto(f"http://127.0.0.1:{server.port}/d/%FF")
    await ada.wait_status("refused")
    await expect(ada.page.locator("#banner")).to_contain_text("This link is broken")
    ada.assert_no_errors()


async def test_document_list_opens_and_creates_documents(browser: Browser, server: CollabServer, db_path: Path) -> None:
    for name, body in [("alpha notes", "a" * 3000), ("team/beta", "b")]:
        async with synced(room_url(server, name)) as client:
            text(client).insert(0, body)
    await wait_for(lambda: stored_text(db_path, "team/beta") == "b")

    home = await Person.arrive(browser, f"http://127.0.0.1:{server.port}/")
    rows = home.page.locator("#documents .doc-row")
    await expect(rows).to_have_count(2)
    alpha = rows.filter(has_text="alpha notes")
    await expect(alpha.locator(".doc-size")).to_have_text(re.compile(r"^3\.\d KB$"))  # 3000 bytes and some
    await expect(alpha.locator(".doc-when")).to_have_text("just now")
    assert await alpha.get_attribute("href") == "/d/alpha%20notes"
    assert await rows.filter(has_text="team/beta").get_attribute("href") == "/d/team/beta"
    await home.screenshot("home.png")

    # The field filters the list; Enter on a new name creates and opens it.
    field = home.page.get_by_label("Document name")
    await field.fill("team/")
    await expect(rows.locator(".doc-name-text")).to_have_text(["team/beta"])
    await expect(home.page.locator("#open-button")).to_have_text("Create")
    await field.fill("   ")
    await field.press("Enter")
    await expect(home.page.locator("#open-error")).to_have_text("Type a name for the document.")
    await field.fill("team/new plan ✓")
    await field.press("Enter")
    await home.page.wait_for_url("**/d/team/new%20plan%20%E2%9C%93")
    await home.introduce(*GRACE[:2])
    await home.wait_status("connected")
    assert "team/new plan ✓" in server.rooms
    await expect(home.page).to_have_title("team/new plan ✓ · collab")
    home.assert_no_errors()


async def test_a_name_with_dot_segments_reaches_its_own_room(browser: Browser, server: CollabServer) -> None:
    # "a/../b" must not be folded into "b" by URL normalisation, neither in the page URL nor the WebSocket's.
    home = await Person.arrive(browser, f"http://127.0.0.1:{server.port}/")
    await home.page.get_by_label("Document name").fill("a/../b")
    await home.page.get_by_label("Document name").press("Enter")
    await home.page.wait_for_url("**/d/a%2F..%2Fb")
    await home.introduce(*ADA[:2])
    await home.wait_status("connected")
    await home.type_at("Control+End", "dots")
    await wait_for(lambda: "a/../b" in server.rooms)
    assert "b" not in server.rooms
    home.assert_no_errors()


async def test_the_editor_fits_a_phone(browser: Browser, server: CollabServer) -> None:
    url = editor_url(server.port, "team/on the go")
    ada = await Person.arrive(browser, url)
    await ada.introduce(*ADA[:2])
    await ada.type_at(
        "Control+End",
        "# On the go\n\nA long line of text that has to wrap on a narrow screen rather than scroll sideways.",
    )
    phone = await Person.join(
        browser, url, viewport=PHONE, is_mobile=True, has_touch=True, device_scale_factor=2, who=GRACE
    )
    await phone.wait_text("(text) => text.includes('sideways.')")
    await expect(phone.page.locator(".cm-ySelectionInfo", has_text=ADA[0])).to_be_visible()
    # Nothing wider than the screen: no sideways scrolling of the page or the editor.
    widths = await phone.page.evaluate(
        "[document.documentElement.scrollWidth, document.querySelector('.cm-scroller').scrollWidth, innerWidth]"
    )
    assert max(widths[:2]) <= widths[2], widths
    await phone.screenshot("editor-phone.png")
    phone.assert_no_errors()


async def test_pages_carry_the_access_token(browser: Browser, start_server: StartServer) -> None:
    server = await start_server(auth_secret=SECRET)
    team = token("team/")
    async with synced(with_token(room_url(server, "team/plan"), team)) as client:
        text(client).insert(0, "for the team")
        await client.resync()
    await server.store.flush()

    home = await Person.arrive(browser, f"http://127.0.0.1:{server.port}/?token={team}")
    rows = home.page.locator("#documents .doc-row")
    await expect(rows).to_have_count(1)
    await rows.first.click()
    await home.introduce(*ADA[:2])
    await home.wait_status("connected")
    await home.wait_text("(text) => text === 'for the team'")
    await home.type_at("Control+End", "!")
    room = server.rooms.get("team/plan")
    assert room is not None
    await wait_for(lambda: str(room.doc.get("content", type=Text)) == "for the team!")
    home.assert_no_errors()

    stranger = await Person.arrive(browser, f"http://127.0.0.1:{server.port}/d/team/plan")
    await stranger.introduce(*GRACE[:2])
    await stranger.wait_status("refused")
    await expect(stranger.page.locator("#banner")).to_contain_text("4401")
    await stranger.page.goto(f"http://127.0.0.1:{server.port}/")
    await expect(stranger.page.locator("#list-error")).to_contain_text("needs an access token")
