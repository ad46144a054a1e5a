"""Many people in one document: the header shows those that fit and "+N" for the rest, on a laptop and a phone.

Every other person is a real client of the server (collab.client.Client) that says who it is in its
awareness `user`, exactly as a browser's y-codemirror binding does; the page under test is a real Chromium.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import pytest
from playwright.async_api import Browser, Page, expect

from collab.client import Client
from collab.server.app import CollabServer

from ..helpers import room_url, synced
from .harness import ADA, LAPTOP, PHONE, Person, editor_url

pytestmark = pytest.mark.asyncio(loop_scope="session")

NAMES = [
    "Alan Turing",
    "Barbara Liskov",
    "Claude Shannon",
    "Dorothy Vaughan",
    "Edsger Dijkstra",
    "Frances Allen",
    "Grace Hopper",
    "Hedy Lamarr",
    "Ivan Sutherland",
    "Joan Clarke",
    "Katherine Johnson",
    "Linus Torvalds",
    "Margaret Hamilton",
    "Niklaus Wirth",
]
COLOURS = ["#e11d48", "#059669", "#d97706", "#0284c7", "#9333ea", "#0d9488", "#ea580c"]

# What overflows, measured in the page: the page itself, the bar, the list, and any piece of the bar that
# reaches past the window or out of the list that clips it. `rows` is the bar's height in rows of 56 px.
LAYOUT_JS = """() => {
  const bar = document.querySelector('.topbar')
  const list = document.querySelector('#people')
  const box = (element) => element.getBoundingClientRect()
  const shown = (element) => element.getClientRects().length > 0
  const pieces = [...bar.querySelectorAll('.topbar > *, .topbar-tools > *, #people > .person')].filter(shown)
  return {
    page: document.documentElement.scrollWidth - innerWidth,
    bar: bar.scrollWidth - bar.clientWidth,
    list: list.scrollWidth - list.clientWidth,
    outside: pieces.filter((p) => box(p).left < -0.5 || box(p).right > innerWidth + 0.5)
      .map((p) => p.outerHTML.slice(0, 60)),
    clipped: [...list.querySelectorAll('.person')].filter(shown)
      .filter((p) => box(p).right > box(list).right + 0.5 || box(p).left < box(list).left - 0.5).length,
    chips: [...list.querySelectorAll('.person:not(.is-me)')].filter(shown).length,
    more: shown(document.querySelector('#people-more')) ? document.querySelector('#people-more').textContent : null,
    height: box(bar).height,
  }
}"""


@asynccontextmanager
async def people_in(server: CollabServer, room: str, names: list[str]) -> AsyncIterator[list[Client]]:
    """One connected client per name, each announcing itself (name and colour) in its awareness."""
    async with AsyncExitStack() as stack:
        clients = []
        for index, name in enumerate(names):
            client = await stack.enter_async_context(synced(room_url(server, room)))
            client.set_awareness({"user": {"name": name, "color": COLOURS[index % len(COLOURS)]}})
            clients.append(client)
        yield clients


async def layout(page: Page) -> dict[str, Any]:
    result: dict[str, Any] = await page.evaluate(LAYOUT_JS)
    return result


async def fits(page: Page, others: int) -> dict[str, Any]:
    """Wait until all `others` are in the list; check nothing overflows and the hidden ones are counted in "+N"."""
    await expect(page.locator("#people .person:not(.is-me)")).to_have_count(others)
    measured = await layout(page)
    assert measured["page"] <= 0 and measured["bar"] <= 0 and measured["list"] <= 0, measured
    assert measured["outside"] == [] and measured["clipped"] == 0, measured
    assert measured["chips"] >= 1, measured
    assert measured["more"] == f"+{others - measured['chips']}", measured
    return measured


async def test_fourteen_people_fit_a_laptop_and_the_rest_are_listed(browser: Browser, server: CollabServer) -> None:
    async with people_in(server, "team/all hands", NAMES[:3]), AsyncExitStack() as leaving:
        await leaving.enter_async_context(people_in(server, "team/all hands", NAMES[3:]))
        ada = await Person.join(browser, editor_url(server.port, "team/all hands"), viewport=LAPTOP, who=ADA)
        measured = await fits(ada.page, len(NAMES))
        assert measured["height"] <= 64, measured  # one row
        assert measured["chips"] >= 3, measured  # the room a laptop's header has is used, not all folded into +N
        await expect(ada.page.locator("#doc-name")).to_have_text("team/all hands")  # the name is not squeezed out
        await ada.screenshot("people-laptop.png")

        # "+N" lists everyone, me included.
        more = ada.page.locator("#people-more")
        await more.click()
        popover = ada.page.locator("#people-list")
        await expect(popover).to_be_visible()
        await expect(popover.locator(".people-list-title")).to_have_text(f"{len(NAMES) + 1} people here")
        await expect(popover.locator(".people-list-name")).to_have_text([ADA[0], *sorted(NAMES)])
        await expect(popover.locator(".people-list-item", has_text=ADA[0]).locator(".people-list-you")).to_have_text(
            "you"
        )
        box = await popover.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= LAPTOP["width"], box
        await ada.screenshot("people-list.png")
        await ada.page.keyboard.press("Escape")
        await expect(popover).to_be_hidden()

        # People leaving: the list follows, and with few enough left, everyone has a chip and "+N" goes.
        await leaving.aclose()
        await expect(ada.page.locator("#people .person:not(.is-me)")).to_have_count(3)
        await expect(more).to_be_hidden()
        assert (await layout(ada.page))["chips"] == 3
        ada.assert_no_errors()


async def test_seven_people_fit_a_phone(browser: Browser, server: CollabServer) -> None:
    others = NAMES[:7]
    async with people_in(server, "team/on the go", others):
        phone = await Person.join(
            browser,
            editor_url(server.port, "team/on the go"),
            viewport=PHONE,
            is_mobile=True,
            has_touch=True,
            device_scale_factor=2,
            who=ADA,
        )
        measured = await fits(phone.page, len(others))
        assert measured["height"] <= 112, measured  # two rows: the name, then the tools
        await phone.screenshot("people-phone.png")

        await phone.page.locator("#people-more").tap()
        popover = phone.page.locator("#people-list")
        await expect(popover.locator(".people-list-name")).to_have_text([ADA[0], *sorted(others)])
        box = await popover.bounding_box()
        assert box is not None and box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], box
        await phone.screenshot("people-phone-list.png")
        # A tap elsewhere closes it.
        await phone.page.locator(".cm-content").tap()
        await expect(popover).to_be_hidden()
        phone.assert_no_errors()


async def test_what_others_say_of_themselves_is_drawn_safely(browser: Browser, server: CollabServer) -> None:
    """Anyone's page says its name and colour in its awareness: a colour that is not #rrggbb is drawn grey
    (it goes into style attributes), and a name longer than 64 characters is cut."""
    at_the_end = {"tname": "content", "item": None, "type": None, "assoc": 0}  # a Yjs relative position
    async with synced(room_url(server, "team/safe")) as mallory, synced(room_url(server, "team/safe")) as ok:
        mallory.set_awareness(
            {
                "user": {"name": "M" * 500, "color": "red; background-image: url(/x)", "colorLight": "url(/y)"},
                "cursor": {"anchor": at_the_end, "head": at_the_end},
            }
        )
        ok.set_awareness({"user": {"name": "  Ok  ", "color": "#0D9488"}})
        ada = await Person.join(browser, editor_url(server.port, "team/safe"), who=ADA)
        chips = ada.page.locator("#people .person:not(.is-me)")
        await expect(chips).to_have_count(2)
        shown = await chips.evaluate_all(
            """(chips) => chips.map((chip) => [chip.querySelector('.person-name').textContent,
              chip.querySelector('.avatar').style.getPropertyValue('--person')])"""
        )
        assert sorted(shown) == [["M" * 64, "#8c959f"], ["Ok", "#0D9488"]]
        # Mallory's caret, drawn by y-codemirror from the same awareness state.
        caret = ada.page.locator(".cm-ySelectionCaret")
        await expect(caret).to_have_count(1)
        style = await caret.get_attribute("style")
        assert style is not None and "url" not in style and "#8c959f" in style, style
        await expect(ada.page.locator(".cm-ySelectionInfo")).to_have_text("M" * 64)
        ada.assert_no_errors()
