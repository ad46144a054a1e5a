"""Fixtures of the browser tests: one Chromium for the session, a fresh context per person, servers on its loop.

Chromium is started once for the whole session (it takes about a second) and every test gets a fresh
context per person, closed when the test ends. Playwright's objects belong to the event loop they were
made on, so these tests, and the servers they start, run on pytest-asyncio's session loop: `start_server`
and `server` here replace tests/conftest.py's for this directory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest_asyncio
from playwright.async_api import Browser, async_playwright

from collab.server.app import CollabServer

from ..helpers import StartServer, servers_on
from .harness import CHROMIUM, CHROMIUM_ARGS


@pytest_asyncio.fixture(scope="session", loop_scope="session")
async def chromium() -> AsyncIterator[Browser]:
    assert CHROMIUM.exists(), "the browser tests need Debian's chromium: scripts/test installs it"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, timeout=60_000)
        yield browser
        await browser.close()


@pytest_asyncio.fixture(loop_scope="session")
async def browser(chromium: Browser) -> AsyncIterator[Browser]:
    """The session's Chromium; every context a test opened in it (one per person) is closed after the test."""
    yield chromium
    for context in chromium.contexts:
        await context.close()


@pytest_asyncio.fixture(loop_scope="session")
async def start_server(db_path: Path) -> AsyncIterator[StartServer]:
    """tests/conftest.py's `start_server`, on the session loop that Playwright's objects live on."""
    async with servers_on(db_path) as start:
        yield start


@pytest_asyncio.fixture(loop_scope="session")
async def server(start_server: StartServer) -> CollabServer:
    return await start_server()
