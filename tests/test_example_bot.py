"""docs/examples/bot.py, run as its README says, against a real server while a real client types."""

from __future__ import annotations

import asyncio
import re
import signal
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from collab.auth import Permission

from .helpers import ROOT, SECRET, StartServer, one_line, room_url, synced, text, token, with_token

BOT = ROOT / "docs" / "examples" / "bot.py"
ANSWER = re.compile(r"> the time is \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")


@asynccontextmanager
async def running_bot(url: str, value: str) -> AsyncIterator[asyncio.subprocess.Process]:
    """The bot in a subprocess; stopped with Ctrl-C (SIGINT) at the end, as a person at its terminal would."""
    bot = await asyncio.create_subprocess_exec(
        sys.executable, str(BOT), url, "--token", value, cwd=ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        yield bot
    finally:
        if bot.returncode is None:
            bot.send_signal(signal.SIGINT)
            try:
                async with asyncio.timeout(10):
                    await bot.wait()
            except TimeoutError:
                bot.kill()
                await bot.wait()


def answers(typed: str) -> int:
    return len(ANSWER.findall(typed))


async def lines_until(bot: asyncio.subprocess.Process, line: str, times: int, timeout: float = 30) -> list[str]:
    """What the bot prints, up to the `times`-th `line`: it reports an answer once the server has it, which may
    be a moment after a person sees the answer relayed."""
    assert bot.stdout is not None
    lines: list[str] = []
    async with asyncio.timeout(timeout):
        while lines.count(line) < times:
            read = await bot.stdout.readline()
            assert read, f"the bot's output ended: {lines}"
            lines.append(read.decode().rstrip("\n"))
    return lines


async def test_the_bot_answers_each_time_line_once_and_keeps_answering_after_a_restart(
    start_server: StartServer,
) -> None:
    server = await start_server(auth_secret=SECRET)
    url = room_url(server, "meeting")
    async with running_bot(url, token("meeting")) as bot:
        async with synced(with_token(url, token("meeting"))) as person:
            await person.wait_until(
                lambda: (
                    {"name": "time bot", "color": "#888888"} in [state.get("user") for state in person.others.values()]
                )
            )
            text(person).insert(0, "agenda\n/timer\n/time\n")
            await person.wait_until(lambda: answers(str(text(person))) == 1)
            lines = str(text(person)).split("\n")
            assert lines[:3] == ["agenda", "/timer", "/time"] and ANSWER.fullmatch(lines[3]) and lines[4:] == [""]
            text(person).insert(len(str(text(person)).encode()), "/time\n")  # a second one; the first stays answered
            await person.wait_until(lambda: answers(str(text(person))) == 2)
            await person.resync()
            assert answers(str(text(person))) == 2 and str(text(person)).count("/time\n") == 2
        port = server.port
        await server.stop()  # the bot is told 1001 and tries again until the server is back
        restarted = await start_server(auth_secret=SECRET, port=port)
        async with synced(with_token(room_url(restarted, "meeting"), token("meeting"))) as person:
            text(person).insert(len(str(text(person)).encode()), "after the restart\n/time\n")
            await person.wait_until(lambda: answers(str(text(person))) == 3, timeout=30)
        said = await lines_until(bot, "bot: answered 1 /time", 3)
        assert bot.returncode is None, "still running"
    assert bot.returncode == 130, "Ctrl-C ends it quietly"
    assert bot.stdout is not None
    said += (await bot.stdout.read()).decode().splitlines()
    assert said.count("bot: answered 1 /time") == 3 and "bot: reconnecting" in said


async def test_the_bot_with_a_wrong_token_says_so_in_one_line_at_once(start_server: StartServer) -> None:
    server = await start_server(auth_secret=SECRET)
    started = time.monotonic()
    bot = await asyncio.create_subprocess_exec(
        sys.executable, str(BOT), room_url(server, "meeting"), "--token", token("other"), cwd=ROOT,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        _, stderr = await bot.communicate()
    assert time.monotonic() - started < 15, "refused at once, not retried"
    assert bot.returncode == 1
    assert one_line(stderr.decode()) == (
        "bot: the server refused the connection (4403): token is for 'other', not 'meeting'\n"
    )


async def test_the_bot_with_a_read_only_token_says_nothing_was_kept(start_server: StartServer) -> None:
    """A read-only token connects and syncs; its edits are dropped. The bot printed "answered" all the same."""
    server = await start_server(auth_secret=SECRET)
    url = room_url(server, "meeting")
    bot = await asyncio.create_subprocess_exec(
        sys.executable, str(BOT), url, "--token", token("meeting", Permission.READ), cwd=ROOT,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with synced(with_token(url, token("meeting"))) as person:
        await person.wait_until(lambda: len(person.others) == 1)  # the bot is in
        text(person).insert(0, "/time\n")
        async with asyncio.timeout(30):
            stdout, stderr = await bot.communicate()
        assert answers(str(text(person))) == 0
    assert bot.returncode == 1
    assert one_line(stderr.decode()) == (
        "bot: the server did not keep the answer: read-only access: your edits are not saved or shared\n"
    )
    assert "answered" not in stdout.decode()


async def test_the_bot_refuses_what_cannot_work_in_one_line() -> None:
    cases = [
        (["http://127.0.0.1:1/meeting"], "bot: http://127.0.0.1:1/meeting is not a WebSocket URL"),
        (["ws://127.0.0.1:1/meeting", "--cafile", str(BOT)], "bot: ssl= and cafile= are for wss:// URLs"),
    ]
    for args, said in cases:
        bot = await asyncio.create_subprocess_exec(
            sys.executable, str(BOT), *args, cwd=ROOT, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(30):
            _, stderr = await bot.communicate()
        assert bot.returncode == 1, args
        assert one_line(stderr.decode()).startswith(said), stderr
