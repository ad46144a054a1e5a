"""A bot that watches a document and answers commands typed in it: a line `/time` gets the time on the next line.

    python docs/examples/bot.py ws://127.0.0.1:1234/notes/meeting
    python docs/examples/bot.py wss://collab.example.com/notes/meeting --token "$(collab token notes/meeting --write)"

It is a client like any editor: it reconnects by itself when the server restarts
(what was typed meanwhile arrives with the resync), shows up in the people list
as "time bot", and answers a `/time` line only once, however often it looks: a
`/time` line already followed by an answer is left alone. What it does goes to
stdout; a refused token ends it at once with one line on stderr and exit
status 1, and so does a read-only one, once the server says it kept no answer.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime

from pycrdt import Text
from websockets.exceptions import WebSocketException

from collab.client import Client, ClosedError, State

COMMAND = "/time"
ANSWER = "> the time is "


def answer_commands(content: Text) -> int:
    """Put an answer under every complete `/time` line that has none yet; how many were answered.

    Only a line ended by a newline counts, so that `/timer` being typed is not taken for `/time`. Positions in
    a pycrdt `Text` count UTF-8 bytes, not characters.
    """
    lines = str(content).split("\n")
    answered = 0
    offset = len(str(content).encode())
    # From the end, so that the offsets of the lines still to visit do not move. The last item has no newline
    # after it: it is a line still being typed.
    for index in range(len(lines) - 2, -1, -1):
        offset -= len(lines[index + 1].encode()) + 1  # now at the newline that ends line `index`
        if lines[index].strip() == COMMAND and not lines[index + 1].startswith(ANSWER):
            now = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            content.insert(offset + 1, f"{ANSWER}{now}\n")
            answered += 1
    return answered


class NotSaved(Exception):
    """The server keeps none of the bot's answers: its token is read-only."""


async def watch(url: str, token: str | None, cafile: str | None) -> None:
    def say(state: State) -> None:
        print(f"bot: {state.value}", flush=True)

    async with Client(url, token=token, cafile=cafile, on_state=say) as client:
        client.set_awareness({"user": {"name": "time bot", "color": "#888888"}})
        content = client.doc.get("content", type=Text)
        while True:
            with client.doc.transaction():  # all of one look's answers go out as one update
                answered = answer_commands(content)
            if answered:
                # Answered by the server only once it has handled our edit: a read-only token's edit is
                # dropped, and the server says so first (`permission_denied`).
                await client.resync(timeout=None)
                if client.permission_denied is not None:
                    raise NotSaved(f"the server did not keep the answer: {client.permission_denied}")
                print(f"bot: answered {answered} {COMMAND}", flush=True)
            await client.wait_for_change(timeout=None)  # while disconnected too: it reconnects by itself


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url", help="the document's WebSocket URL: ws://HOST:PORT/NAME or wss://...")
    parser.add_argument("--token", help="a write token for the document (collab token NAME --write)")
    parser.add_argument("--cafile", help="a CA certificate (PEM) to trust for wss://, instead of the system's")
    args = parser.parse_args()
    try:
        asyncio.run(watch(args.url, args.token, args.cafile))
    except KeyboardInterrupt:
        return 130
    # Refused, gave up, a read-only token; TLS not trusted, never reached; not a WebSocket URL, --cafile with
    # ws://; a ws:// URL to a TLS port, a server that does not speak WebSocket.
    except (ClosedError, NotSaved, OSError, TimeoutError, ValueError, WebSocketException) as error:
        print(f"bot: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
