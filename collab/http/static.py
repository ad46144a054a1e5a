"""The browser editor's files, served on the WebSocket port from `collab/web` (built by `scripts/build-web`).

    GET /                           web/index.html               the document list
    GET /d/<name>                   web/editor.html              the editor; its script reads <name> from the URL
    GET /assets/<file>              web/assets/<file>            content-hashed bundles, cacheable forever
    GET /sw.js                      web/sw.js                    the service worker: the pages load offline
    GET /third-party-licenses.txt   web/third-party-licenses.txt

The bundle is package data (`web/**/*` in pyproject.toml): web/build.mjs writes it into the `collab` package
and it is found beside this module, so a checkout, an editable install and an installed wheel serve the same
files from any directory with no setting (tests/test_wheel.py installs a wheel in a fresh virtualenv). One
committed copy in one place: a bundle kept outside the package would need a build step to copy it in, or
setuptools data files, which land outside the package where nothing finds them reliably. A plain `Path`, not
`importlib.resources`: serving needs real files (stat for the cache, symlinks resolved to stay inside), and
collab never runs from a zip file.

Nothing else is served, and never a file outside the web directory: an asset is named by one path segment
(after percent-decoding: no `/`, `\\`, NUL, and no leading `.`, so no `..`), and the file it names must
resolve, symlinks followed, to a regular file inside the directory. Everything else is a plain 404.

Pages are `no-cache` (the browser revalidates them with their ETag, so a rebuilt bundle is picked up at the
next load); assets whose names carry esbuild's content hash are `immutable`. The service worker is `no-cache`
too, and at the root: its URL sets its scope (the whole site) and is its identity, which the browser checks
byte for byte at each visit, installing a new build's worker (it lists that build's files to keep). Text is
gzipped for clients that accept it. Files are read on first use and kept while their size and mtime stay the
same.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import re
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from urllib.parse import unquote

from websockets.datastructures import Headers
from websockets.http11 import Response

from .router import Handler, HttpRequest, Router, respond

__all__ = ["WEB_DIR", "StaticFiles", "install_web"]

logger = logging.getLogger("collab.web")

WEB_DIR = Path(__file__).resolve().parents[1] / "web"
"""Where `scripts/build-web` puts the bundle: `collab/web`, package data of the installed package."""

CONTENT_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
    ".json": "application/json",
    ".webmanifest": "application/manifest+json",
    ".map": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".ico": "image/x-icon",
    ".woff2": "font/woff2",
}
COMPRESSIBLE = {".html", ".js", ".css", ".txt", ".json", ".webmanifest", ".map", ".svg"}
MIN_GZIP_SIZE = 1024

# esbuild's entryNames "[name]-[hash]": eight characters of base32 before the extension.
HASHED_NAME = re.compile(r"-[A-Z2-7]{8}\.[a-z0-9]+$")
IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATE = "no-cache"

# The pages load only their own scripts and styles and talk only to their own server (WebSocket included).
# CodeMirror injects <style> elements, hence 'unsafe-inline' for styles; the favicon is a data: URL.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; connect-src 'self'{websocket}; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
HOST = re.compile(r"^[A-Za-z0-9.\-]+(:\d+)?$|^\[[0-9A-Fa-f:.]+\](:\d+)?$")


@dataclass(frozen=True, slots=True)
class _Loaded:
    stamp: tuple[int, int, int]  # inode, mtime (ns), size: when it changes, the file is read again
    data: bytes
    gzipped: bytes | None
    etag: str


class StaticFiles:
    """Regular files under one directory, read through a small cache; nothing outside it is ever opened."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._cache: dict[Path, _Loaded] = {}

    def find(self, relative: str) -> Path | None:
        """The file `relative` (a '/'-separated path of trusted parts) names inside the root, or None."""
        try:
            root = self.root.resolve(strict=True)
            path = (root / relative).resolve(strict=True)
        except (OSError, RuntimeError):  # missing, unreadable, or a symlink loop
            return None
        if not path.is_relative_to(root) or not path.is_file():
            return None
        return path

    def load(self, path: Path) -> _Loaded:
        info = path.stat()
        stamp = (info.st_ino, info.st_mtime_ns, info.st_size)
        loaded = self._cache.get(path)
        if loaded is None or loaded.stamp != stamp:
            data = path.read_bytes()
            gzipped = None
            if path.suffix in COMPRESSIBLE and len(data) >= MIN_GZIP_SIZE:
                gzipped = gzip.compress(data, compresslevel=6, mtime=0)
            loaded = _Loaded(stamp, data, gzipped, f'"{hashlib.sha256(data).hexdigest()[:32]}"')
            self._cache[path] = loaded
        return loaded

    def response(self, request: HttpRequest, relative: str, cache_control: str, headers: dict[str, str]) -> Response:
        """The file as a 200 (or 304 when the client's copy is current), or a 404 if there is no such file."""
        path = self.find(relative)
        if path is None:
            return not_found()
        try:
            loaded = self.load(path)
        except OSError as error:
            logger.warning("cannot read %s: %s", path, error)
            return not_found()
        use_gzip = loaded.gzipped is not None and accepts_gzip(request.headers.get("Accept-Encoding", ""))
        etag = loaded.etag[:-1] + '-gz"' if use_gzip else loaded.etag
        common = {"Cache-Control": cache_control, "ETag": etag, "X-Content-Type-Options": "nosniff", **headers}
        if path.suffix in COMPRESSIBLE:
            common["Vary"] = "Accept-Encoding"
        matches = if_none_match(request.headers.get("If-None-Match", ""))
        if etag in matches or "*" in matches:
            # Connection: close as on every answer (the transport closes after any response but a 101).
            return Response(HTTPStatus.NOT_MODIFIED, "Not Modified", Headers({**common, "Connection": "close"}), b"")
        content_type = CONTENT_TYPES.get(path.suffix, "application/octet-stream")
        if use_gzip:
            assert loaded.gzipped is not None
            return respond(HTTPStatus.OK, loaded.gzipped, content_type, {**common, "Content-Encoding": "gzip"})
        return respond(HTTPStatus.OK, loaded.data, content_type, common)


def install_web(router: Router, web_dir: Path = WEB_DIR) -> StaticFiles:
    """Register the editor's pages and assets on `router`, served from `web_dir` (a built `collab/web`)."""
    files = StaticFiles(web_dir)
    if not (web_dir / "index.html").is_file():
        logger.warning("no web editor at %s: run scripts/build-web to build it", web_dir)

    def page(file: str) -> Handler:
        async def handler(request: HttpRequest) -> Response:
            if files.find(file) is None:
                return respond(HTTPStatus.SERVICE_UNAVAILABLE, "The web editor is not built: run scripts/build-web.\n")
            return files.response(request, file, REVALIDATE, page_headers(request))

        return handler

    async def asset(request: HttpRequest) -> Response:
        name = asset_name(request.path.removeprefix("/assets/"))
        if name is None:
            return not_found()
        return files.response(request, f"assets/{name}", IMMUTABLE if HASHED_NAME.search(name) else REVALIDATE, {})

    async def service_worker(request: HttpRequest) -> Response:
        # The worker's own policy bounds what it may fetch, as a page's does.
        return files.response(request, "sw.js", REVALIDATE, page_headers(request))

    async def licenses(request: HttpRequest) -> Response:
        return files.response(request, "third-party-licenses.txt", REVALIDATE, {})

    router.route("/", page("index.html"))
    router.route("/d/", page("editor.html"))
    router.route("/assets/", asset)
    router.route("/sw.js", service_worker)
    router.route("/third-party-licenses.txt", licenses)
    return files


def asset_name(raw: str) -> str | None:
    """The file name a raw (percent-encoded) path segment names, or None if it is not one plain name."""
    try:
        name = unquote(raw, errors="strict")
    except UnicodeDecodeError:
        return None
    if not name or name.startswith(".") or any(char in name for char in "/\\\0"):
        return None
    return name


def page_headers(request: HttpRequest) -> dict[str, str]:
    host = request.headers.get("Host", "")
    websocket = f" ws://{host} wss://{host}" if HOST.match(host) else ""
    return {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY.format(websocket=websocket),
        "Referrer-Policy": "same-origin",
    }


def accepts_gzip(accept_encoding: str) -> bool:
    """Whether an Accept-Encoding header admits gzip (RFC 9110 section 12.5.3; q=0 means "not this one")."""
    for item in accept_encoding.split(","):
        coding, _, params = item.partition(";")
        if coding.strip().lower() in ("gzip", "x-gzip", "*"):
            quality = params.strip().lower().removeprefix("q=")
            try:
                return not params or float(quality) > 0
            except ValueError:
                return False
    return False


def if_none_match(header: str) -> set[str]:
    """The entity tags an If-None-Match header lists, weak ones compared as strong (RFC 9110 section 13.1.2)."""
    return {tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()}


def not_found() -> Response:
    return respond(HTTPStatus.NOT_FOUND, "not found\n")
