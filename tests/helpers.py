"""What test files share, so that no test imports another test module.

URLs and synced clients (which never reconnect); keystrokes and the text they make; checks that a client still
works after an attack (`still_works`, `still_syncs`, `presence_still_works`); tokens; a TLS certificate
(`self_signed_certificate`); HTTP requests (`get`, `call`, `upgrade_status`; raw bytes: `exchange`); the CLI
(`collab_cli`, `run_collab`; `collab_in_process`) and a server (`ServerProcess`) in a subprocess; what a
database holds, on either engine (`stored_text`, `wait_stored`, `row_counts`), and rows changed by hand
(`insert_by_hand`, `spoil_checkpoints`); a document with every kind of root (`write_rich_document`,
`contents`); frames a room sends (`FramePeer`); the stock Node client. Fixtures (servers, stores) are in
conftest.py, and their types (`StartServer`) here: test modules import this module, never conftest.py.
"""

from __future__ import annotations

import asyncio
import http.client
import io
import ipaddress
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager, closing, redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path
from queue import Empty, Queue
from typing import Any, NamedTuple
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from pycrdt import Array, Doc, Map, Text, XmlElement, XmlFragment, XmlText

from collab.auth import Permission, mint_token
from collab.client import Client
from collab.config import Settings
from collab.server.app import CollabServer
from collab.store import Engine
from collab.store.engines import locate, open_reader
from collab.sync.protocol import Message, parse_frame
from collab.sync.yupdate import MAX_CLOCK

from . import craft

ROOT = Path(__file__).resolve().parent.parent
INTEROP = ROOT / "tests" / "interop"

needs_node = pytest.mark.skipif(
    shutil.which("node") is None or not (INTEROP / "node_modules" / "y-websocket").is_dir(),
    reason="needs node and the npm packages scripts/test installs",
)
"""For tests that drive the stock y-websocket client (`NodeClient`): skipped where Node or its packages are not."""

SECRET = "a-test-secret-of-enough-length"
"""The HMAC secret of servers started with access control (`secured` in conftest.py)."""


StartServer = Callable[..., Awaitable[CollabServer]]


@asynccontextmanager
async def servers_on(db: str | Path) -> AsyncIterator[StartServer]:
    """Start in-process servers on `db` (a `--db` value or a SQLite file; the `start_server` fixture);
    all are stopped at the end."""
    servers: list[CollabServer] = []

    async def start(**overrides: Any) -> CollabServer:
        options: dict[str, Any] = {"host": "127.0.0.1", "port": 0, "db": db, **overrides}
        server = CollabServer(Settings(**options))
        await server.start()
        servers.append(server)
        return server

    try:
        yield start
    finally:
        for server in servers:
            await server.stop()


def room_url(server: CollabServer | int, room: str) -> str:
    port = server if isinstance(server, int) else server.port
    return f"ws://127.0.0.1:{port}/{quote(room)}"


@asynccontextmanager
async def synced(url: str, doc: Doc | None = None) -> AsyncIterator[Client]:
    """A connected client whose first sync with the server is complete (a refusal raises `RefusedError`).

    It never reconnects: a test that restarts or stops a server must not see its clients come back and resend
    their documents unasked.
    """
    async with Client(url, doc, reconnect=False, sync_timeout=10) as client:
        yield client


def text(client: Client, name: str = "content") -> Text:
    root: Text = client.doc.get(name, type=Text)
    return root


def keystrokes(typed: str, client_id: int | None = None) -> list[bytes]:
    """The updates of typing `typed` into an empty document one character at a time, at the end."""
    doc: Doc = Doc(client_id=client_id)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    content = doc.get("content", type=Text)
    for char in typed:
        content += char
    return updates


def doc_of(updates: Iterable[bytes]) -> Doc:
    doc: Doc = Doc()
    for update in updates:
        doc.apply_update(update)
    return doc


def text_of(updates: Iterable[bytes]) -> str:
    """The text that applying `updates` in order gives."""
    return str(doc_of(updates).get("content", type=Text))


def token(scope: str, permission: Permission = Permission.WRITE, *, ttl: float = 600, **options: Any) -> str:
    """A token signed with `SECRET` (options: `subject`, `token_id`, `now`)."""
    return mint_token(SECRET.encode(), scope, permission, ttl, **options)


def with_token(url: str, value: str) -> str:
    return f"{url}?token={value}"


def self_signed_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and no other name, and its key (cert.pem, key.pem in `folder`):
    for `--certfile`/`--keyfile`, and as the one CA a client that should trust it is given.

    Made with `cryptography` (a test dependency), so that no openssl binary is needed; with the extensions
    Python's strict verification (`VERIFY_X509_STRICT`, the default from 3.13) asks of a CA.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    usage = x509.KeyUsage(
        digital_signature=True, content_commitment=False, key_encipherment=False, data_encipherment=False,
        key_agreement=False, key_cert_sign=True, crl_sign=True, encipher_only=False, decipher_only=False,
    )  # fmt: skip
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(usage, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert, key_file = folder / "cert.pem", folder / "key.pem"
    cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert, key_file


def with_password(url: str, password: str) -> str:
    """A libpq `url` with `password` set (the user `postgres` if it names none), for tests that check no output
    shows a password: a server with trust auth (the shared test server, a `PrivateCluster`) ignores it."""
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{parts.username or 'postgres'}:{password}@{host}"))


def one_line(stderr: str) -> str:
    """`stderr`, which must be one line (ending in a newline) and no traceback: how every CLI refusal reads."""
    assert "Traceback" not in stderr, stderr
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    return stderr


async def refused(url: str, **options: Any) -> Client:
    """A client the server closes before it syncs (a bad token, a full server...), once closed."""
    client = await Client(url, **options).connect()
    await client.wait_closed()
    return client


async def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.01) -> None:
    """Poll a condition that no event signals (a file on disk, a server's internals)."""
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(interval)


def server_text(server: CollabServer, room: str) -> str:
    """The text of `room` in an in-process server's memory; the room must be loaded."""
    document = server.rooms.get(room)
    assert document is not None, f"room {room!r} is not loaded"
    return str(document.doc.get("content", type=Text))


async def still_works(server: CollabServer, client: Client, room: str, marker: str) -> None:
    """`client` can still edit `room`: its edit `marker` reaches the in-process server's document.

    It opens no connection, unlike `still_syncs`: for tests at a connection limit, or that count peers.
    """
    assert client.close_code is None, (client.close_code, client.close_reason)
    text(client).insert(len(str(text(client))), marker)
    await client.resync()
    assert marker in server_text(server, room)


async def still_syncs(url: str, client: Client, marker: str) -> str:
    """`client` can still edit its room at `url`: its edit `marker` reaches a newcomer there.

    This checks more than `still_works` (the server took the edit *and* serves it to others) and works
    with a server in a subprocess, but opens a connection. Returns the text the newcomer got, which is
    the server's whole document, for checks that nothing of an attacker's is in it.
    """
    assert client.close_code is None, (client.close_code, client.close_reason)
    text(client).insert(len(str(text(client))), marker)
    async with synced(url) as newcomer:
        await newcomer.wait_until(lambda: marker in str(text(newcomer)))
        return str(text(newcomer))


def no_token(room: str) -> str:
    return ""


async def presence_still_works(
    server: CollabServer, room: str, client: Client, elsewhere: Client, query: Callable[[str], str] = no_token
) -> None:
    """`still_syncs` for presence as well: `client`'s awareness state and edit reach newcomers in `room`,
    `elsewhere` (a client in the room "elsewhere") still syncs, and neither was closed.

    For attacks on presence, which must break neither the document, nor presence, nor another room.
    `query(room)` is what a newcomer's URL ends with (a token: "?token=...").
    """
    state = {"user": "still here", "cursor": 7}
    client.set_awareness(state)
    async with synced(room_url(server, room) + query(room)) as newcomer:
        await newcomer.wait_until(lambda: newcomer.awareness.get(client.client_id) == state)
    await still_syncs(room_url(server, room) + query(room), client, "still here. ")
    await still_syncs(room_url(server, "elsewhere") + query("elsewhere"), elsewhere, "elsewhere too. ")
    assert client.close_code is None and elsewhere.close_code is None


def stored_text(db: str | Path, room: str, name: str = "content") -> str | None:
    """The text a document has in the database right now, read as an outsider would (None: no such doc).

    `db` is a `--db` value (the `database` fixture) or a SQLite file; read through the CLI's `Reader`.
    """
    with open_reader(db) as reader:
        if not reader.documents(room):
            return None
        doc = doc_of(record.data for record in reader.records(room))
    return str(doc.get(name, type=Text))


async def wait_stored(db: str | Path, room: str, expected: str | None, timeout: float = 10.0) -> None:
    """Wait until `stored_text(db, room)` is `expected`, reading it in a thread every 50 ms.

    Not `wait_for`: each read opens a connection (27 ms on PostgreSQL), and polled on the event loop every
    10 ms it kept an in-process server from serving about 70% of the time.
    """
    stored: str | None = None
    try:
        async with asyncio.timeout(timeout):
            while (stored := await asyncio.to_thread(stored_text, db, room)) != expected:
                await asyncio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"{room!r} never stored {expected!r} in {timeout} s; last read: {stored!r}") from None


def _on_postgres(db: str | Path) -> bool:
    return isinstance(db, str) and db.lower().startswith(("postgresql:", "postgres:"))


NOT_AN_UPDATE = b"\xde\xad\xbe\xef"
"""Bytes that no Yjs update starts with, for damage done by hand."""


def insert_by_hand(db: str | Path, room: str, data: bytes = NOT_AN_UPDATE) -> int:
    """Append `data` to `room`'s log as a person with psql or sqlite3 would (creating the document if it is new,
    times 0), by default bytes that are no Yjs update; the row's id.

    Collab never wrote the row, so it walks it before pycrdt sees it (on PostgreSQL: the row's `checked` is the
    column's default, false); loading a document with a row that does not decode must fail naming the row
    (1011), never serve it empty.
    """
    new_document = "INSERT INTO documents (name, created_at, updated_at) VALUES (?, 0, 0) ON CONFLICT (name) DO NOTHING"
    new_row = (
        "INSERT INTO updates (doc_id, created_at, data) SELECT id, 0, ? FROM documents WHERE name = ? RETURNING id"
    )
    if _on_postgres(db):
        with psycopg.connect(str(db)) as server:
            server.execute(new_document.replace("?", "%s"), [room])
            row = server.execute(new_row.replace("?", "%s") + ", checked", [data, room]).fetchone()
        assert row is not None and row[1] is False, "the column's default says: never walked"
        return int(row[0])
    with closing(sqlite3.connect(db)) as file, file:
        file.execute(new_document, [room])
        [(row_id,)] = file.execute(new_row, [data, room]).fetchall()
    return int(row_id)


def spoil_checkpoints(db: str | Path, room: str, ids: Iterable[int]) -> None:
    """Overwrite the data of `room`'s checkpoints `ids` with bytes that are no Yjs update, as damage would."""
    query = "UPDATE checkpoints SET data = ? WHERE id = ? AND doc_id = (SELECT id FROM documents WHERE name = ?)"
    rows = [(NOT_AN_UPDATE, row_id, room) for row_id in ids]
    if _on_postgres(db):
        with psycopg.connect(str(db)) as server, server.cursor() as cursor:
            cursor.executemany(query.replace("?", "%s"), rows)
        return
    with closing(sqlite3.connect(db)) as file, file:
        file.executemany(query, rows)


def checkpoint_rows(db: str | Path, room: str) -> list[tuple[int, float, bool]]:
    """`room`'s history checkpoints as (id, created_at, base), oldest first."""
    query = "SELECT c.id, c.created_at, c.base FROM checkpoints c JOIN documents d ON d.id = c.doc_id WHERE d.name = "
    if _on_postgres(db):
        with psycopg.connect(str(db)) as server:
            found = server.execute(query + "%s ORDER BY c.id", [room]).fetchall()
    else:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as file:
            found = file.execute(query + "? ORDER BY c.id", [room]).fetchall()
    return [(int(row_id), float(at), bool(base)) for row_id, at, base in found]


def row_counts(db: str | Path, room: str) -> dict[str, int]:
    """How many snapshots, updates and checkpoints rows `room` has in the database (all 0: no such doc)."""
    tables = ("snapshots", "updates", "checkpoints")
    query = "SELECT count(*) FROM {} t JOIN documents d ON d.id = t.doc_id WHERE d.name = "  # our own table names
    if _on_postgres(db):
        with psycopg.connect(str(db)) as server:
            return {table: server.execute(query.format(table) + "%s", [room]).fetchall()[0][0] for table in tables}
    with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as file:
        return {table: file.execute(query.format(table) + "?", [room]).fetchall()[0][0] for table in tables}


class Reply(NamedTuple):
    status: int
    headers: dict[str, str]
    """Header names lower-cased."""
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def http_get(port: int, path: str, headers: dict[str, str] | None = None, method: str = "GET") -> Reply:
    """GET (or `method`) `path` sent exactly as given (http.client does not normalise it), with no body; any
    status; body not decoded.

    It blocks: async tests use `get` or `call`, which run it in a thread so that an in-process server can answer.
    """
    return http_request(port, method, path, headers=headers)


def http_request(
    port: int, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
) -> Reply:
    """`method` on `path` (sent exactly as given), with `body` if any (http.client sends its Content-Length), with
    http.client: a real client, that knows a HEAD answer has no body. It blocks, as `http_get` does."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, {key.lower(): value for key, value in response.getheaders()}, response.read())
    finally:
        connection.close()


async def get(server: CollabServer | int, path: str, *, bearer: str | None = None, **headers: str) -> Reply:
    """`http_get` in a thread; `accept_encoding="gzip"` sends Accept-Encoding, `bearer` an Authorization."""
    port = server if isinstance(server, int) else server.port
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    if bearer is not None:
        sent["Authorization"] = f"Bearer {bearer}"
    return await asyncio.to_thread(http_get, port, path, sent)


async def call(
    server: CollabServer | int,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    bearer: str | None = None,
    **headers: str,
) -> Reply:
    """`method` on `path` with `body` (none by default), in a thread, `bearer` as the Authorization (the API's
    DELETE and POSTs, the write API); other headers as `get` takes them (`content_type="text/plain"`)."""
    port = server if isinstance(server, int) else server.port
    sent = {name.replace("_", "-"): value for name, value in headers.items()}
    if bearer is not None:
        sent["Authorization"] = f"Bearer {bearer}"
    return await asyncio.to_thread(http_request, port, method, path, body, sent)


async def exchange(port: int, data: bytes, *, then: bytes = b"", timeout: float = 10.0) -> bytes:
    """Send raw bytes on a fresh connection, left open (as a client waiting for its answer leaves it), and read
    until the server closes it; `then`: sent once the head of a first answer arrived (after `100 Continue`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        async with asyncio.timeout(timeout):
            if then:
                first = await reader.readuntil(b"\r\n\r\n")
                writer.write(then)
                await writer.drain()
                return first + await reader.read()
            return await reader.read()
    finally:
        writer.close()


def request_head(method: str, path: str, *lines: str, version: str = "HTTP/1.1") -> bytes:
    """The bytes of a request head, for `exchange`: the request line, Host, then `lines` (headers)."""
    return (
        f"{method} {path} {version}\r\nHost: 127.0.0.1\r\n" + "".join(f"{line}\r\n" for line in lines) + "\r\n"
    ).encode()


def status_of(response: bytes) -> int:
    """The status of a raw response (`exchange`)."""
    assert response.startswith(b"HTTP/1.1 "), response[:200]
    return int(response.split(b" ", 2)[1])


async def upgrade_status(port: int, origin: str | None, host: str = "127.0.0.1", path: str = "/notes") -> int:
    """The status of a raw WebSocket upgrade (or GET, for /api paths) with this Origin and Host."""
    headers = f"Host: {host}\r\n" + ("" if origin is None else f"Origin: {origin}\r\n")
    if not path.startswith("/api"):
        headers += "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        headers += "Sec-WebSocket-Version: 13\r\n"
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(f"GET {path} HTTP/1.1\r\n{headers}\r\n".encode())
    async with asyncio.timeout(10):
        head = await reader.readuntil(b"\r\n\r\n")
    writer.close()
    return int(head.split(b" ", 2)[1])


def collab_cli(*args: str, env: dict[str, str] | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`python -m collab ARGS` with `env` added to this one's less its COLLAB_ settings (so that a
    developer's shell cannot change what a test sees); raise unless it exits 0 when `check`.

    It blocks: async tests use `run_collab`, which runs it in a thread so that an in-process server
    keeps serving meanwhile.
    """
    result = subprocess.run(
        [sys.executable, "-m", "collab", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
        env={**{key: value for key, value in os.environ.items() if not key.startswith("COLLAB_")}, **(env or {})},
    )
    if check and result.returncode != 0:
        raise AssertionError(f"collab {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


async def run_collab(
    *args: str, env: dict[str, str] | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(collab_cli, *args, env=env, check=check)


def collab_in_process(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`collab ARGS` run by `collab.cli.main.main` in this process, answering as `collab_cli` does, without the
    0.7-1 s a new interpreter takes to start; async tests call it through `asyncio.to_thread`.

    Only where nothing can crash the process (a row that would overflow pycrdt's stack: use `collab_cli`) and
    no terminal is wanted (stderr is no tty here). This process's COLLAB_ settings are set aside meanwhile.
    """
    from collab.cli.main import main

    set_aside = {key: os.environ.pop(key) for key in [key for key in os.environ if key.startswith("COLLAB_")]}
    raw = io.BytesIO()
    stdout, stderr = io.TextIOWrapper(raw, encoding="utf-8"), io.StringIO()
    try:
        with redirect_stdout(stdout), redirect_stderr(stderr):
            try:
                code = main(list(args))
            except SystemExit as exit:  # argparse refusing the command line
                code = exit.code if isinstance(exit.code, int) else int(exit.code is not None)
    finally:
        os.environ.update(set_aside)
    stdout.flush()
    result = subprocess.CompletedProcess(["collab", *args], code, raw.getvalue().decode(), stderr.getvalue())
    if check and result.returncode != 0:
        raise AssertionError(f"collab {' '.join(args)} exited {result.returncode}: {result.stderr}")
    return result


async def run_in_process(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`collab_in_process` in a thread, so that an in-process server keeps serving meanwhile."""
    return await asyncio.to_thread(collab_in_process, *args, check=check)


class FramePeer:
    """A room's peer that keeps what the room sends it, parsed on demand (no socket, no event loop)."""

    def __init__(self, id: str) -> None:
        self.id = id
        self.grant = None
        self.frames: list[bytes] = []
        self.closed: tuple[int, str] | None = None

    def send(self, frame: bytes) -> None:
        self.frames.append(frame)

    def close(self, code: int, reason: str) -> None:
        self.closed = (code, reason)

    def messages(self) -> list[Message]:
        return [message for frame in self.frames for message in parse_frame(frame)]

    def take(self) -> list[Message]:
        messages = self.messages()
        self.frames.clear()
        return messages


class ServerProcess:
    """`python -m collab serve` in a subprocess, for restarts, SIGTERM and kill -9."""

    def __init__(self, db: str | Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.db = db
        """A `--db` value or a SQLite file."""
        self.args = args
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen[str] | None = None
        self.port = 0
        self.output: list[str] = []
        self._lines: Queue[str | None] = Queue()

    def start(self, timeout: float = 20.0) -> ServerProcess:
        self.output, self._lines = [], Queue()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "collab", "serve", "--port", str(self.port), "--db", str(self.db), *self.args],
            stderr=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
            cwd=ROOT,
            env=self.env,
        )
        threading.Thread(target=self._pump, args=(self.process, self._lines), daemon=True).start()
        match = self.wait_for_line(r"listening on http://127\.0\.0\.1:(\d+)", timeout)
        self.port = int(match[1])
        return self

    def _pump(self, process: subprocess.Popen[str], lines: Queue[str | None]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    def wait_for_line(self, pattern: str, timeout: float = 20.0) -> re.Match[str]:
        """Block until the server logs a line matching `pattern`."""
        regex = re.compile(pattern)
        for logged in self.output:
            if match := regex.search(logged):
                return match
        while True:
            try:
                line = self._lines.get(timeout=timeout)
            except Empty:
                raise TimeoutError(f"server never logged {pattern!r}; output:\n{''.join(self.output)}") from None
            if line is None:
                raise RuntimeError(f"server exited; output:\n{''.join(self.output)}")
            self.output.append(line)
            if match := regex.search(line):
                return match

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        assert self.process is not None
        self.process.send_signal(sig)
        code = self.process.wait(timeout)
        # Collect what it logged on the way out.
        while (line := self._lines.get(timeout=timeout)) is not None:
            self.output.append(line)
        return code

    def kill(self) -> None:
        self.stop(signal.SIGKILL)

    def url(self, room: str) -> str:
        return room_url(self.port, room)


class NodeClient:
    """The stock y-websocket provider under Node, driven by tests/interop/driver.mjs."""

    def __init__(self, server_url: str, room: str) -> None:
        self.server_url = server_url
        self.room = room
        self.events: list[dict[str, Any]] = []
        self._process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self._ids = 0

    async def __aenter__(self) -> NodeClient:
        self._process = await asyncio.create_subprocess_exec(
            "node",
            str(INTEROP / "driver.mjs"),
            self.server_url,
            self.room,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            cwd=INTEROP,
        )
        self._reader = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._process is not None
        if self._process.returncode is None:
            self.send("exit")
            try:
                async with asyncio.timeout(10):
                    await self._process.wait()
            except TimeoutError:
                self._process.kill()
                await self._process.wait()
        if self._reader is not None:
            await self._reader

    async def _read(self) -> None:
        assert self._process is not None and self._process.stdout is not None
        async for line in self._process.stdout:
            self.events.append(json.loads(line))
            self._changed.set()
        self._changed.set()

    def send(self, cmd: str, **args: Any) -> None:
        assert self._process is not None and self._process.stdin is not None
        self._process.stdin.write((json.dumps({"cmd": cmd, **args}) + "\n").encode())

    async def wait_event(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
        """The first event (past or future) matching `predicate`."""
        async with asyncio.timeout(timeout):
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                exited = self._process is not None and self._process.returncode is not None
                if exited and self._reader is not None and self._reader.done():
                    raise RuntimeError(f"node client exited; events: {self.events}")
                self._changed.clear()
                await self._changed.wait()

    async def synced(self) -> None:
        await self.wait_event(lambda event: event["event"] == "synced")

    async def snapshot(self) -> dict[str, Any]:
        self._ids += 1
        marker = self._ids
        count = len(self.events)
        self.send("snapshot", id=marker)
        await self.wait_event(lambda event: event.get("id") == marker)
        return next(event for event in self.events[count:] if event["event"] == "snapshot")

    async def wait_snapshot(self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0) -> dict[str, Any]:
        """Poll snapshots until one matches (the Node side has no event for 'text changed')."""
        async with asyncio.timeout(timeout):
            while True:
                snap = await self.snapshot()
                if predicate(snap):
                    return snap
                await asyncio.sleep(0.02)


def a_real_panic() -> BaseException:
    """pyo3's PanicException, as pycrdt raises it: two updates that together wrap a 32-bit clock.

    No input reaches pycrdt unchecked any more (that is the point of collab's walk), so tests that need a
    panic inject this one, real, where they need it.
    """
    doc: Doc = Doc()
    doc.apply_update(craft.text_update(7, 0, "XYZ"))
    try:
        doc.apply_update(craft.text_update(7, MAX_CLOCK, "ab"))
    except BaseException as panic:
        assert not isinstance(panic, Exception)
        return panic
    raise AssertionError("pycrdt no longer panics on this; find another panic")


def contents(doc: Doc) -> dict[str, Any]:
    """What `write_rich_document` writes, as read back from `doc`: every root, as plain values."""
    return {
        "content": str(doc.get("content", type=Text)),
        "meta": doc.get("meta", type=Map).to_py(),
        "items": doc.get("items", type=Array).to_py(),
        "prosemirror": str(doc.get("prosemirror", type=XmlFragment)),
    }


async def write_rich_document(url: str) -> dict[str, Any]:
    """A text, a map with a map in it, an array and an XML fragment (as ProseMirror keeps a document), written by
    a client and accepted by the server; their `contents`."""
    async with synced(url) as writer:
        with writer.doc.transaction():
            text(writer).insert(0, "# Plan\n\nShip it. Grüße 👋\n")
            writer.doc.get("meta", type=Map)["owner"] = "ada"
            writer.doc.get("meta", type=Map)["nested"] = Map({"depth": 2})
            writer.doc.get("items", type=Array).extend(["one", 2, True])
            fragment = writer.doc.get("prosemirror", type=XmlFragment)
            paragraph = fragment.children.append(XmlElement("paragraph", {"align": "left"}))
            paragraph.children.append(XmlText("hello"))
        expected = contents(writer.doc)
        await writer.resync()  # the server has it all
    return expected


def write_backup(path: Path, typed: str) -> Path:
    """A `.ydoc` backup at `path` whose "content" text is `typed`, as `collab export --format ydoc` writes one."""
    doc: Doc = Doc()
    doc.get("content", type=Text).insert(0, typed)
    path.write_bytes(doc.get_update())
    return path


def engine_on(database: str) -> Engine:
    """An opened engine of its own on `database` (as another process would have). SQLite syncs with `normal`
    here: an fsync per keystroke made the store contract's compaction test take 18 s instead of 2, and what
    these tests check is what engines write and delete, not power loss."""
    engine = locate(database).engine(Settings(db=database, sqlite_synchronous="normal"))
    engine.open()
    return engine
