"""Sharing from the editor, and what a view-only link does: the Share dialog mints links through the server's
POST /api/share; a page opened with a read token shows "Read only" and takes no edit, whatever is typed."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from playwright.async_api import Browser, Route, expect

from collab.auth import SHARE_ID_PREFIX, Permission, verify_token
from collab.server.app import CollabServer

from ..helpers import SECRET, StartServer, room_url, server_text, synced, text, token, wait_for, with_token
from .harness import ADA, GRACE, Person, editor_url

pytestmark = pytest.mark.asyncio(loop_scope="session")

CLIPBOARD: dict[str, Any] = {"permissions": ["clipboard-read", "clipboard-write"]}
HOUR, DAY = 3600, 86400


async def write(server: CollabServer, name: str, content: str) -> None:
    async with synced(with_token(room_url(server, name), token(name))) as writer:
        text(writer).insert(0, content)
        await writer.resync()


def edits_among(frames: list[str | bytes]) -> list[bytes]:
    """The Yjs updates among WebSocket frames: y-websocket's sync message (0) of type update (2)."""
    return [frame for frame in frames if isinstance(frame, bytes) and frame[:2] == b"\x00\x02"]


async def test_a_view_only_link_takes_no_edit(browser: Browser, start_server: StartServer) -> None:
    server = await start_server(auth_secret=SECRET)
    await write(server, "team/plan", "Agenda")
    viewer = await Person.arrive(browser, "about:blank", **CLIPBOARD)
    sent: list[str | bytes] = []  # every frame the page sends the server
    viewer.page.on("websocket", lambda socket: socket.on("framesent", lambda frame: sent.append(frame)))
    await viewer.page.goto(with_token(editor_url(server.port, "team/plan"), token("team/plan", Permission.READ)))
    await viewer.introduce(*GRACE[:2])
    await viewer.wait_status("connected")
    await viewer.wait_text("(text) => text === 'Agenda'")
    await expect(viewer.page.locator("#readonly-badge")).to_be_visible()
    await expect(viewer.page.locator("#readonly-badge")).to_have_text("Read only")
    content = viewer.page.locator(".cm-content")
    await expect(content).to_have_attribute("aria-readonly", "true")  # it still takes a caret, to read and copy with

    # Typing, pasting, deleting: nothing changes, here or on the server. An edit the editor took would be in
    # the page's Y.Text at once (CodeMirror applies a key press synchronously) and sent as an update frame.
    await content.click()
    await viewer.page.keyboard.press("Control+End")
    await viewer.page.keyboard.type(" and more")
    await viewer.page.keyboard.press("Backspace")
    await viewer.page.evaluate("navigator.clipboard.writeText(' pasted')")
    await viewer.page.keyboard.press("Control+v")
    await viewer.page.keyboard.press("Control+a")
    await viewer.page.keyboard.press("Delete")
    assert await viewer.text() == "Agenda"
    assert edits_among(sent) == [], "the page sent an edit"
    async with synced(with_token(room_url(server, "team/plan"), token("team/plan"))) as reader:
        assert str(text(reader)) == "Agenda"
    assert server_text(server, "team/plan") == "Agenda"
    await expect(viewer.page.locator(".cm-line").first).to_have_text("Agenda")
    await viewer.page.evaluate("getSelection().removeAllRanges()")  # Control+a selected the page's words
    await viewer.screenshot("readonly.png")

    # Its history shows earlier versions, with nothing to restore them by.
    await viewer.page.locator("#history-button").click()
    await viewer.page.locator("#history-panel .moment").first.click()
    await expect(viewer.page.locator("#version .version-text .cm-content")).to_have_text("Agenda")
    await expect(viewer.page.locator("#version-restore")).to_be_hidden()
    await viewer.page.locator("#version-back").click()

    # Its Share dialog offers view links only: a read token cannot mint an edit link.
    await viewer.page.locator("#share").click()
    dialog = viewer.page.locator("dialog.share-dialog")
    await expect(dialog.get_by_role("radio", name="Edit", exact=True)).to_be_disabled()
    await expect(dialog.get_by_role("radio", name="View", exact=True)).to_be_checked()
    await dialog.get_by_role("button", name="Done").click()
    viewer.assert_no_errors()


async def test_a_refused_edit_is_taken_back_when_access_was_not_known(
    browser: Browser, start_server: StartServer
) -> None:
    """No answer from /api/access (as when the page was opened offline): the editor is editable, and the
    server's own auth message ("your edits are not saved") makes it read-only and takes the typing back."""
    server = await start_server(auth_secret=SECRET)
    await write(server, "team/notes", "Kept")
    url = with_token(editor_url(server.port, "team/notes"), token("team/notes", Permission.READ))
    viewer = await Person.arrive(browser, "about:blank")

    async def no_answer(route: Route) -> None:
        await route.abort("internetdisconnected")

    await viewer.page.route("**/api/access*", no_answer)
    await viewer.page.goto(url)
    await viewer.introduce(*GRACE[:2])
    await viewer.wait_status("connected")
    await viewer.wait_text("(text) => text === 'Kept'")
    await expect(viewer.page.locator("#readonly-badge")).to_be_hidden()
    await viewer.type_at("Control+End", " typed")
    await expect(viewer.page.locator("#readonly-badge")).to_be_visible()
    await expect(viewer.page.locator("#notice")).to_contain_text("What you typed was not saved")
    assert await viewer.wait_text("(text) => text === 'Kept'") == "Kept"
    await expect(viewer.page.locator(".cm-content")).to_have_attribute("aria-readonly", "true")
    await viewer.type_at("Control+End", " again")  # read-only now: what is typed is not even shown
    assert await viewer.text() == "Kept"
    assert server_text(server, "team/notes") == "Kept"
    assert all("api/access" in error or "ERR_INTERNET_DISCONNECTED" in error for error in viewer.errors), viewer.errors


def share_token(link: str) -> str:
    """The token in a share link, which must point at this document's page and carry nothing else."""
    parts = urlsplit(link)
    query = parse_qs(parts.query)
    assert list(query) == ["token"], link
    return query["token"][0]


async def test_a_share_link_has_the_chosen_permission_and_expiry(browser: Browser, start_server: StartServer) -> None:
    server = await start_server(auth_secret=SECRET)
    await write(server, "team/plan", "Draft")
    own = token("team/", ttl=30 * DAY)
    ada = await Person.join(browser, with_token(editor_url(server.port, "team/plan"), own), **CLIPBOARD, who=ADA)

    await ada.page.locator("#share").click()
    dialog = ada.page.locator("dialog.share-dialog")
    await expect(dialog).to_be_visible()
    await dialog.get_by_role("radio", name="Edit", exact=True).check()
    await dialog.get_by_label("The link stops working after").select_option(label="1 day")
    await dialog.get_by_role("button", name="Create link").click()
    field = dialog.get_by_label("Share link")
    await expect(field).to_be_visible()
    link = await field.input_value()
    assert link.startswith(f"http://127.0.0.1:{server.port}/d/team/plan?token="), link
    minted = share_token(link)
    assert minted != own, "the sharer's own token is never handed out"
    grant = verify_token(SECRET.encode(), minted)
    assert (grant.scope, grant.permission) == ("team/plan", Permission.WRITE)
    assert abs(grant.expires_at - (time.time() + DAY)) < 60, grant
    assert grant.token_id is not None and grant.token_id.startswith(SHARE_ID_PREFIX)
    await expect(dialog.locator(".share-summary")).to_contain_text("can edit")
    await dialog.get_by_role("button", name="Copy").click()
    await expect(dialog.get_by_role("button", name="Copied")).to_be_visible()
    assert await ada.page.evaluate("navigator.clipboard.readText()") == link
    await ada.screenshot("share-dialog.png")

    # Another choice makes another link: view only, for an hour.
    await dialog.get_by_role("radio", name="View", exact=True).check()
    await expect(field).to_have_count(0)  # the link made for the other choice is gone
    await dialog.get_by_label("The link stops working after").select_option(label="1 hour")
    await dialog.get_by_role("button", name="Create link").click()
    viewing = verify_token(SECRET.encode(), share_token(await field.input_value()))
    assert (viewing.scope, viewing.permission) == ("team/plan", Permission.READ)
    assert abs(viewing.expires_at - (time.time() + HOUR)) < 60, viewing
    await dialog.get_by_role("button", name="Done").click()
    await expect(dialog).to_have_count(0)

    # The edit link works for whoever gets it.
    grace = await Person.join(browser, link, who=GRACE)
    await expect(grace.page.locator("#readonly-badge")).to_be_hidden()
    await grace.type_at("Control+End", " by Grace")
    await wait_for(lambda: server_text(server, "team/plan") == "Draft by Grace")
    ada.assert_no_errors()
    grace.assert_no_errors()


async def test_without_access_control_the_plain_link_is_shared(browser: Browser, server: CollabServer) -> None:
    ada = await Person.join(browser, editor_url(server.port, "open/notes"), **CLIPBOARD, who=ADA)
    await ada.page.locator("#share").click()
    dialog = ada.page.locator("dialog.share-dialog")
    await expect(dialog).to_contain_text("no access control")
    await expect(dialog.get_by_role("radio", name="Edit", exact=True)).to_have_count(0)
    plain = f"http://127.0.0.1:{server.port}/d/open/notes"
    await expect(dialog.get_by_label("Share link")).to_have_value(plain)
    await dialog.get_by_role("button", name="Copy").click()
    await expect(dialog.get_by_role("button", name="Copied")).to_be_visible()
    assert await ada.page.evaluate("navigator.clipboard.readText()") == plain
    await ada.screenshot("share-dialog-open.png")
    ada.assert_no_errors()


def ed25519_token(private: ed25519.Ed25519PrivateKey, claims: dict[str, Any]) -> str:
    """What an app server's JWT library signs with its private key (EdDSA)."""

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    signing_input = b64(b'{"alg":"EdDSA","typ":"JWT"}') + "." + b64(json.dumps(claims).encode())
    return signing_input + "." + b64(private.sign(signing_input.encode()))


async def test_a_server_that_cannot_mint_says_so(browser: Browser, start_server: StartServer, tmp_path: Path) -> None:
    private = ed25519.Ed25519PrivateKey.generate()
    public_path = tmp_path / "app.pub.pem"
    public_path.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    server = await start_server(auth_public_key=public_path)
    now = int(time.time())
    signed = ed25519_token(private, {"doc": "notes", "perm": "write", "exp": now + 600, "iat": now})
    ada = await Person.join(browser, with_token(editor_url(server.port, "notes"), signed), who=ADA)
    await ada.page.locator("#share").click()
    dialog = ada.page.locator("dialog.share-dialog")
    await expect(dialog.locator(".share-problem")).to_contain_text("can’t create share links")
    await expect(dialog.get_by_role("button", name="Create link")).to_have_count(0)
    ada.assert_no_errors()


async def open_share_dialog(browser: Browser, start_server: StartServer) -> Person:
    """Ada on team/plan with a write token for team/, its Share dialog open; the server mints links."""
    server = await start_server(auth_secret=SECRET)
    await write(server, "team/plan", "Draft")
    ada = await Person.join(browser, with_token(editor_url(server.port, "team/plan"), token("team/")), who=ADA)
    await ada.page.locator("#share").click()
    await expect(ada.page.locator("dialog.share-dialog")).to_be_visible()
    return ada


async def test_enter_on_a_choice_does_not_close_the_share_dialog(browser: Browser, start_server: StartServer) -> None:
    ada = await open_share_dialog(browser, start_server)
    dialog = ada.page.locator("dialog.share-dialog")
    edit = dialog.get_by_role("radio", name="Edit", exact=True)
    await edit.focus()
    await ada.page.keyboard.press("Space")
    await ada.page.keyboard.press("Enter")  # a form would close the dialog during this key press
    assert await ada.page.evaluate("document.querySelector('dialog.share-dialog')?.open === true")
    await expect(edit).to_be_checked()
    await expect(edit).to_be_focused()

    await dialog.get_by_role("button", name="Done").focus()
    await ada.page.keyboard.press("Enter")
    await expect(dialog).to_have_count(0)
    await expect(ada.page.locator("#share")).to_be_focused()
    ada.assert_no_errors()


async def test_a_link_asked_for_before_the_choice_changed_is_not_shown(
    browser: Browser, start_server: StartServer
) -> None:
    ada = await open_share_dialog(browser, start_server)
    dialog = ada.page.locator("dialog.share-dialog")
    held: list[Route] = []

    async def hold(route: Route) -> None:
        if held:
            await route.continue_()
        else:
            held.append(route)  # the first one is answered when the test lets it go

    await ada.page.route("**/api/share*", hold)
    await dialog.get_by_role("radio", name="Edit", exact=True).check()
    await dialog.get_by_role("button", name="Create link").click()
    await expect(dialog.locator(".share-result")).to_have_text("Creating the link…")
    await wait_for(lambda: len(held) == 1)
    await dialog.get_by_role("radio", name="View", exact=True).check()  # while the edit link is being made
    await expect(dialog.locator(".share-result")).to_be_empty()

    async with ada.page.expect_response("**/api/share*") as answered:
        await held[0].continue_()
    await (await answered.value).finished()
    # A request of the page's own made after that answer arrived comes back after the page handled it.
    await ada.page.evaluate("fetch('/third-party-licenses.txt', { cache: 'no-store' }).then((answer) => answer.text())")
    assert await dialog.get_by_label("Share link").count() == 0, "the edit link was shown under View"
    await expect(dialog.locator(".share-result")).to_be_empty()

    await expect(dialog.get_by_role("button", name="Create link")).to_be_enabled()
    await dialog.get_by_role("button", name="Create link").click()
    link = await dialog.get_by_label("Share link").input_value()
    assert verify_token(SECRET.encode(), share_token(link)).permission == Permission.READ
    await expect(dialog.locator(".share-summary")).to_contain_text("can view, not edit")
    ada.assert_no_errors()
