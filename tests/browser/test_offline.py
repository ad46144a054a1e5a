"""The editor offline: edits survive closing the tab, the pages load with no server (and are kept without the
token they were opened with), a deleted document's local copy goes with it, a browser without IndexedDB still
edits, old synced copies make room for new ones, a closing tab asks "Leave site?" only for edits it alone holds,
the offline banner is drawn once however many retries, and the pages can be installed as an app.

The server is really gone (a subprocess killed, then started again on the same port and database, or an
in-process server stopped), so the page, the service worker and IndexedDB see what a person on a train sees:
nothing answers.
"""

from __future__ import annotations

import asyncio
import socket
import urllib.request
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.async_api import Browser, Dialog, Page, expect

from collab.server.app import CollabServer

from ..helpers import (
    SECRET,
    ServerProcess,
    StartServer,
    room_url,
    server_text,
    stored_text,
    synced,
    text,
    token,
    wait_for,
    with_token,
)
from .harness import ADA, TIMEOUT_MS, Person, editor_url

pytestmark = pytest.mark.asyncio(loop_scope="session")

# web/src/offline.js: one IndexedDB database per document, named by this prefix and the document's name; what
# is known of each in localStorage under ENTRY_PREFIX and the name; synced copies beyond MAX_COPIES evicted.
KEY_PREFIX = "collab-doc:"
ENTRY_PREFIX = "collab.copy:"
MAX_COPIES = 200

DATABASES = "async () => (await indexedDB.databases()).map(({ name }) => name)"
# How many updates the document's IndexedDB copy holds (0: there is none), once every write made so far has
# committed: a read-only transaction on a store starts only after the read-write ones created before it have
# finished, whatever connection made them. (Closing a tab before that may lose the last keystrokes.)
KEPT_UPDATES = f"""async (key) => {{
  if (!(await ({DATABASES})()).includes(key)) return 0
  return await new Promise((resolve, reject) => {{
    const request = indexedDB.open(key)
    request.onerror = () => reject(request.error)
    request.onsuccess = () => {{
      const db = request.result
      try {{
        const read = db.transaction('updates', 'readonly').objectStore('updates').count()
        read.onsuccess = () => {{ db.close(); resolve(read.result) }}
        read.onerror = () => {{ db.close(); reject(read.error) }}
      }} catch (error) {{
        db.close()
        reject(error)
      }}
    }}
  }})
}}"""


def delete(port: int, name: str) -> int:
    """DELETE /api/docs/<name>, as the index page or `collab delete` does; the status."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/docs/{quote(name, safe='')}", method="DELETE")
    with urllib.request.urlopen(request, timeout=10) as response:
        return int(response.status)


async def kept_updates(page: Page, name: str) -> int:
    async with asyncio.timeout(TIMEOUT_MS / 1000):
        return int(await page.evaluate(KEPT_UPDATES, KEY_PREFIX + name))


async def until_kept_for_offline(page: Page) -> None:
    """Wait until this page's service worker is active, with every file of the build kept, and controls it."""
    async with asyncio.timeout(TIMEOUT_MS / 1000):
        await page.evaluate("navigator.serviceWorker.ready.then(() => true)")
    await page.wait_for_function("navigator.serviceWorker.controller !== null", timeout=TIMEOUT_MS)


def assert_no_errors_but_the_server_away(person: Person) -> None:
    """No errors in the page but those of requests to the server while it was away (the editor's API calls)."""
    assert [error for error in person.errors if "net::ERR_CONNECTION_REFUSED" not in error] == []


async def test_edits_made_offline_survive_closing_the_tab(browser: Browser, tmp_path: Path) -> None:
    db = tmp_path / "collab.db"
    name = "travel/on the train"
    process = ServerProcess(db).start()
    try:
        ada = await Person.join(browser, editor_url(process.port, name), who=ADA)
        await ada.type_at("Control+End", "Written online.")
        await wait_for(lambda: stored_text(db, name) == "Written online.")
        await until_kept_for_offline(ada.page)

        await asyncio.to_thread(process.kill)  # the network is gone: nothing answers on that port
        await ada.wait_status("offline")
        await ada.type_at("Control+End", " Written offline.")
        assert await ada.text() == "Written online. Written offline."
        assert await kept_updates(ada.page, name) > 0
        await ada.screenshot("offline-typed.png")
        ada.assert_no_errors()
        await ada.page.close()

        # A new tab, still with no server: the page comes from the service worker, the text from IndexedDB.
        again = Person(ada.context, await ada.context.new_page())
        response = await again.page.goto(editor_url(process.port, name))
        assert response is not None and response.from_service_worker
        await again.wait_status("offline")
        assert await again.wait_text("(text) => text.length > 0") == "Written online. Written offline."
        await expect(again.page.locator(".cm-content")).to_have_text("Written online. Written offline.")
        await expect(again.page.locator("#doc-name")).to_have_text(name)
        await again.screenshot("offline-reopened.png")
        assert stored_text(db, name) == "Written online."

        # The home page was kept too, and served when the network does not answer at all (as on a train in a
        # tunnel): something listens on the port, and says nothing.
        with socket.create_server(("127.0.0.1", process.port)):
            home = await ada.context.new_page()
            response = await home.goto(f"http://127.0.0.1:{process.port}/")
            assert response is not None and response.from_service_worker
            await expect(home.locator("#open-name")).to_be_visible()
            await home.close()

        await asyncio.to_thread(process.start)  # same port, same database
        await again.wait_status("connected")
        await wait_for(lambda: stored_text(db, name) == "Written online. Written offline.", timeout=15)
        async with synced(room_url(process.port, name)) as reader:
            assert str(text(reader)) == "Written online. Written offline."
        await again.screenshot("offline-synced.png")
        assert_no_errors_but_the_server_away(again)
    finally:
        if process.process is not None and process.process.poll() is None:
            await asyncio.to_thread(process.stop)


async def test_a_deleted_document_leaves_no_copy_to_bring_it_back(browser: Browser, start_server: StartServer) -> None:
    server = await start_server()
    name = "drafts/to delete"
    ada = await Person.join(browser, editor_url(server.port, name), who=ADA)
    await ada.type_at("Control+End", "Soon gone.")
    await wait_for(lambda: name in server.rooms and server_text(server, name) == "Soon gone.")
    assert await kept_updates(ada.page, name) > 0
    assert KEY_PREFIX + name in await ada.page.evaluate(DATABASES)

    assert await asyncio.to_thread(delete, server.port, name) == 200
    await ada.wait_status("refused")
    await ada.page.wait_for_function(
        f"async (key) => !(await ({DATABASES})()).includes(key)", arg=KEY_PREFIX + name, timeout=TIMEOUT_MS
    )

    # Opened again, the name is a new, empty document: nothing of the old one comes back from this browser.
    await ada.page.goto(editor_url(server.port, name))
    await ada.wait_status("connected")
    # Had a copy been kept, it would have been applied before this read of the new copy completes.
    await kept_updates(ada.page, name)
    assert await ada.text() == ""
    async with synced(room_url(server.port, name)) as reader:
        assert str(text(reader)) == ""
    ada.assert_no_errors()


# Ways a browser keeps IndexedDB from a page, each as an init script that runs before the page's own.
NO_INDEXEDDB = {
    # A sandbox that forbids storage: touching indexedDB throws.
    "forbidden": """Object.defineProperty(window, 'indexedDB', {
      get () { throw new DOMException('no', 'SecurityError') }
    })""",
    # Private windows of older browsers: open() throws at once.
    "refused": "IDBFactory.prototype.open = function () { throw new DOMException('no', 'InvalidStateError') }",
    # Or its request fails a moment later.
    "failing": """IDBFactory.prototype.open = function () {
      const request = new EventTarget()
      setTimeout(() => request.onerror?.(new Event('error')), 10)
      return request
    }""",
    # Blocked behind another tab's upgrade: the request never answers.
    "stuck": "IDBFactory.prototype.open = function () { return new EventTarget() }",
}


@pytest.mark.parametrize("how", NO_INDEXEDDB)
async def test_without_indexeddb_the_editor_still_edits(browser: Browser, start_server: StartServer, how: str) -> None:
    server = await start_server()
    name = f"private window {how}"
    context = await browser.new_context()
    await context.add_init_script(NO_INDEXEDDB[how])
    context.set_default_timeout(TIMEOUT_MS)
    ada = Person(context, await context.new_page())
    await ada.page.goto(editor_url(server.port, name))
    await ada.introduce(*ADA[:2])
    await ada.wait_status("connected")
    await ada.type_at("Control+End", "Kept by the server only.")
    async with synced(room_url(server.port, name)) as reader:
        await wait_for(lambda: str(text(reader)) == "Kept by the server only.")
    ada.assert_no_errors()


@pytest.mark.parametrize("path", ["/", "/d/notes"])
async def test_the_pages_can_be_installed_as_an_app(browser: Browser, server: CollabServer, path: str) -> None:
    visitor = await Person.arrive(browser, f"http://127.0.0.1:{server.port}{path}")
    await until_kept_for_offline(visitor.page)
    cdp = await visitor.context.new_cdp_session(visitor.page)
    manifest = await cdp.send("Page.getAppManifest")
    assert manifest["errors"] == [] and manifest["url"].endswith(".webmanifest")
    assert manifest["manifest"]["display"] == "kStandalone"
    # Chromium's own verdict. A test context is off the record, which alone keeps an app from being installed.
    errors = (await cdp.send("Page.getInstallabilityErrors"))["installabilityErrors"]
    assert [error["errorId"] for error in errors] == ["in-incognito"]
    visitor.assert_no_errors()


# Every entry of Cache Storage: the cache, the request's URL, the response's URL (what a reader sees of each).
CACHED = """async () => {
  const entries = []
  for (const name of await caches.keys()) {
    const cache = await caches.open(name)
    for (const request of await cache.keys()) entries.push([name, request.url, (await cache.match(request)).url])
  }
  return entries
}"""


async def cached_page(page: Page, path: str) -> str:
    """The response URL of the page kept under `path`, once the network's answer replaced the install's copy
    (whose response URL is the path itself)."""
    install_copy = f"{page.url.split('/')[0]}//{page.url.split('/')[2]}{path}"
    async with asyncio.timeout(TIMEOUT_MS / 1000):
        while True:
            kept = [response for _, request, response in await page.evaluate(CACHED) if request == install_copy]
            if kept and kept[0] != install_copy:
                return str(kept[0])
            await asyncio.sleep(0.05)


async def test_the_pages_are_kept_without_the_token(browser: Browser, start_server: StartServer) -> None:
    server = await start_server(auth_secret=SECRET)
    ada = await Person.arrive(browser, with_token(editor_url(server.port, "secret/plan"), token("secret/plan")))
    await until_kept_for_offline(ada.page)
    await ada.page.reload()  # served by the worker now, which keeps the network's answer
    await cached_page(ada.page, "/d/")
    await ada.page.goto(with_token(f"http://127.0.0.1:{server.port}/", token("secret/")))
    await cached_page(ada.page, "/")
    entries = await ada.page.evaluate(CACHED)
    assert entries and all("token=" not in f"{request} {response}" for _, request, response in entries), entries
    await ada.context.set_offline(True)
    response = await ada.page.goto(f"http://127.0.0.1:{server.port}/d/other%20doc")
    assert response is not None and response.from_service_worker
    assert ada.page.url == f"http://127.0.0.1:{server.port}/d/other%20doc"
    await expect(ada.page.locator("#doc-name")).to_have_text("other doc")


async def test_the_offline_banner_is_drawn_once_however_many_retries(browser: Browser, server: CollabServer) -> None:
    ada = await Person.join(browser, editor_url(server.port, "retries"), who=ADA)
    await ada.page.evaluate("""() => {
      window.drawn = 0
      new MutationObserver((changes) => { window.drawn += changes.length })
        .observe(document.querySelector('#banner'), { childList: true, subtree: true, attributes: true })
      window.attempts = 0
      window.collab.provider.on('connection-close', () => { window.attempts++ })
    }""")
    await server.stop()
    await ada.wait_status("offline")
    drawn = await ada.page.evaluate("window.drawn")
    assert drawn > 0
    # y-websocket retries with backoff (at most 2.5 s apart): three more tries change nothing on the page.
    await ada.page.wait_for_function(
        "(since) => window.attempts >= since + 3", arg=await ada.page.evaluate("window.attempts"), timeout=TIMEOUT_MS
    )
    assert await ada.page.evaluate("window.drawn") == drawn
    await expect(ada.page.locator("#banner")).to_contain_text("You’re offline")


# Counts the page's requests for persistent storage (navigator.storage.persist), before the page's script runs.
COUNT_PERSIST = """(() => {
  window.persistAsked = 0
  const persist = StorageManager.prototype.persist
  StorageManager.prototype.persist = function () { window.persistAsked++; return persist.call(this) }
})()"""


async def close_asks(page: Page) -> bool:
    """Close the page as a person would, and say whether the browser asked "Leave site?" first."""
    asked: list[str] = []

    async def answer(dialog: Dialog) -> None:
        asked.append(dialog.type)
        await dialog.accept()

    page.on("dialog", answer)
    closed = asyncio.Event()
    page.on("close", lambda _: closed.set())
    await page.close(run_before_unload=True)
    async with asyncio.timeout(TIMEOUT_MS / 1000):
        await closed.wait()
    return asked == ["beforeunload"]


async def test_a_closing_tab_asks_only_for_edits_it_alone_holds(browser: Browser, start_server: StartServer) -> None:
    server = await start_server()
    name = "asks before closing"
    context = await browser.new_context()
    context.set_default_timeout(TIMEOUT_MS)
    await context.add_init_script(COUNT_PERSIST)
    ada = Person(context, await context.new_page())
    await ada.page.goto(editor_url(server.port, name))
    await ada.introduce(*ADA[:2])
    await ada.wait_status("connected")
    await ada.type_at("Control+End", "Online.")
    await wait_for(lambda: server_text(server, name) == "Online.")
    await until_kept_for_offline(ada.page)
    # And in a browser without IndexedDB.
    private = await browser.new_context()
    await private.add_init_script(NO_INDEXEDDB["forbidden"])
    alone = Person(private, await private.new_page())
    await alone.page.goto(editor_url(server.port, name))
    await alone.introduce(*ADA[:2])
    await alone.wait_status("connected")
    await server.stop()
    await ada.wait_status("offline")
    await alone.wait_status("offline")

    # Typed offline, and kept in IndexedDB: nothing is lost by closing, so nothing is asked. The browser is
    # asked to keep this site's storage, now that it holds edits only it has.
    await ada.type_at("Control+End", " Offline.")
    await ada.page.wait_for_function(
        "async () => window.persistAsked === 1 || await navigator.storage.persisted()", timeout=TIMEOUT_MS
    )
    assert await kept_updates(ada.page, name) > 0
    assert not await close_asks(ada.page)

    # Opened again offline: what the copy brings back is no edit of this tab's.
    again = Person(context, await context.new_page())
    await again.page.goto(editor_url(server.port, name))
    assert await again.wait_text("(text) => text.length > 0") == "Online. Offline."
    await again.page.locator(".cm-content").click()  # a person was here: the browser may ask
    assert not await close_asks(again.page)

    # Without IndexedDB, an edit typed offline exists only in the tab: the browser asks.
    await alone.type_at("Control+End", " Only here.")
    assert await close_asks(alone.page)


async def test_old_copies_make_room_but_never_one_with_unsent_edits(browser: Browser, server: CollabServer) -> None:
    ada = await Person.join(browser, editor_url(server.port, "first"), who=ADA)
    await ada.type_at("Control+End", "Synced long ago.")
    await wait_for(lambda: server_text(server, "first") == "Synced long ago.")
    assert await kept_updates(ada.page, "first") > 0
    # What the browser knows: "first" opened longest ago, then a copy holding edits never sent, then as many
    # other synced copies as fit with the next document opened.
    await ada.page.evaluate(
        """async ([prefix, max]) => {
          const entry = (opened, unsent) => JSON.stringify({ opened, unsent, tokens: [] })
          localStorage.setItem(prefix + 'first', entry(1, null))
          localStorage.setItem(prefix + 'holds edits', entry(2, 'edit'))
          for (let i = 0; i < max - 1; i++) localStorage.setItem(prefix + 'filler ' + i, entry(1000 + i, null))
          await new Promise((resolve) => { indexedDB.open('collab-doc:holds edits').onsuccess = (event) => {
            event.target.result.close(); resolve() } })
        }""",
        [ENTRY_PREFIX, MAX_COPIES],
    )
    await ada.page.goto(editor_url(server.port, "latest"))
    await ada.wait_status("connected")
    await ada.page.wait_for_function(
        f"async () => !(await ({DATABASES})()).includes('{KEY_PREFIX}first')", timeout=TIMEOUT_MS
    )
    databases = await ada.page.evaluate(DATABASES)
    assert KEY_PREFIX + "holds edits" in databases and KEY_PREFIX + "latest" in databases
    known = await ada.page.evaluate(
        "(prefix) => Object.keys(localStorage).filter((key) => key.startsWith(prefix))", ENTRY_PREFIX
    )
    assert ENTRY_PREFIX + "first" not in known and ENTRY_PREFIX + "holds edits" in known
    assert len(known) == MAX_COPIES + 1  # the 200 opened last, and the one with unsent edits
    ada.assert_no_errors()
