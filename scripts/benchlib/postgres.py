"""The PostgreSQL server the `collab-pg` rows run on, and one fresh database per scenario on it.

The server is `COLLAB_BENCH_PG` (a libpq URL of a server where the harness may CREATE and DROP DATABASE, such
as `postgresql://postgres:secret@db:5432/postgres`), else the local `postgresql://postgres@127.0.0.1:5432/postgres`.
`find_server()` asks it once per run; when it does not answer, the PostgreSQL rows are skipped, saying where
it looked, and the rest of the run goes on (a user's machine may have no PostgreSQL). Each scenario's database
is `collab_bench_<hex>`, created before the server starts and dropped after it stops; only such names are
dropped, so the harness never touches another database on a shared server.
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit, urlunsplit

if TYPE_CHECKING:
    import psycopg

__all__ = ["DEFAULT_URL", "PostgresServer", "find_server"]

DEFAULT_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
CONNECT_TIMEOUT_S = 3
"""A server that is up answers in milliseconds and a closed port refuses at once; this bounds a dropped packet."""
DATABASE_PREFIX = "collab_bench_"


@dataclass(frozen=True)
class PostgresServer:
    """A PostgreSQL server reached at `admin_url`, with what `describe()` prints about it."""

    admin_url: str
    version: str
    synchronous_commit: str

    def create_database(self) -> str:
        """A new, empty database `collab_bench_<hex>`: its URL, for `collab serve --db`."""
        from psycopg import sql

        name = f"{DATABASE_PREFIX}{uuid.uuid4().hex}"
        with _connect(self.admin_url) as connection:
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return urlunsplit(urlsplit(self.admin_url)._replace(path=f"/{name}"))

    def drop_database(self, url: str) -> None:
        """Drop the database `create_database` made at `url`, ending any session still on it."""
        from psycopg import sql

        name = unquote(urlsplit(url).path.removeprefix("/"))
        if not name.startswith(DATABASE_PREFIX):
            raise ValueError(f"refusing to drop {name!r}: not a database the benchmark made")
        with _connect(self.admin_url) as connection:
            connection.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    def describe(self) -> str:
        return f"{self.version} at {where(self.admin_url)}, synchronous_commit={self.synchronous_commit}"


def find_server() -> PostgresServer | str:
    """The server to run the PostgreSQL rows on, or why there is none (the reason the skipped rows give)."""
    url = os.environ.get("COLLAB_BENCH_PG") or DEFAULT_URL
    if not url.startswith(("postgresql://", "postgres://")):
        return f"COLLAB_BENCH_PG is not a postgresql:// URL ({where(url)})"
    try:
        import psycopg
    except ImportError:
        return "psycopg is not installed (pip install 'collab[postgres]'; scripts/bench does)"
    try:
        with _connect(url) as connection:
            row = connection.execute("SELECT current_setting('server_version'), current_setting('synchronous_commit')")
            version, synchronous_commit = row.fetchone() or ("?", "?")
    except psycopg.Error as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return f"no PostgreSQL at {where(url)} ({first_line}); set COLLAB_BENCH_PG to use another"
    return PostgresServer(url, f"PostgreSQL {version}", synchronous_commit)


def where(url: str) -> str:
    """host:port of `url`, never its password."""
    parts = urlsplit(url)
    try:
        port = parts.port or 5432
    except ValueError:
        return "an unreadable URL"
    return f"{parts.hostname or 'localhost'}:{port}"


def _connect(url: str) -> psycopg.Connection[tuple[Any, ...]]:
    import psycopg  # here, not above: the rest of the harness runs without it

    return psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S)
