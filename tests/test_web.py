"""The web editor's files over real HTTP from a real server: pages, assets, caching, the service worker and the
web app manifest, and no way out of web/."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path
from urllib.parse import quote

import pytest

from collab.http.router import Router
from collab.http.static import WEB_DIR, install_web
from collab.server.app import CollabServer

from .helpers import get, room_url, synced, text


def asset_paths(html: bytes) -> list[str]:
    return re.findall(r'(?:src|href)="(/assets/[^"]+)"', html.decode())


async def test_home_page_lists_documents_with_its_script(server: CollabServer) -> None:
    status, headers, body = await get(server, "/")
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert body == (WEB_DIR / "index.html").read_bytes()
    assert [path.split("-")[0] for path in asset_paths(body)] == ["/assets/manifest", "/assets/style", "/assets/index"]


@pytest.mark.parametrize("path", ["/d/notes", "/d/team/plan%201", "/d/a%2F..%2Fb", "/d/%E2%9C%93?x=1"])
async def test_every_document_path_gets_the_editor_page(server: CollabServer, path: str) -> None:
    status, headers, body = await get(server, path)
    assert status == 200
    assert headers["content-type"] == "text/html; charset=utf-8"
    assert headers["cache-control"] == "no-cache"
    assert body == (WEB_DIR / "editor.html").read_bytes()
    # The page may talk to its own server only, the WebSocket included.
    policy = headers["content-security-policy"]
    assert f"connect-src 'self' ws://127.0.0.1:{server.port} wss://127.0.0.1:{server.port};" in policy
    assert "frame-ancestors 'none'" in policy


async def test_plain_get_is_the_page_and_an_upgrade_is_the_room(server: CollabServer) -> None:
    # A room whose name looks like an editor path is still a room over WebSocket.
    async with synced(room_url(server, "d/notes")) as client:
        text(client).insert(0, "in the room")
    assert "d/notes" in server.rooms
    status, _, body = await get(server, "/d/notes")
    assert status == 200 and body == (WEB_DIR / "editor.html").read_bytes()


async def test_assets_have_their_types_and_are_cached_forever(server: CollabServer) -> None:
    _, _, editor = await get(server, "/d/x")
    paths = asset_paths(editor)
    assert {Path(path).suffix for path in paths} == {".css", ".js", ".webmanifest"}
    for path in paths:
        status, headers, body = await get(server, path)
        assert status == 200
        assert (
            headers["content-type"]
            == {
                ".js": "text/javascript; charset=utf-8",
                ".css": "text/css; charset=utf-8",
                ".webmanifest": "application/manifest+json",
            }[Path(path).suffix]
        )
        assert headers["cache-control"] == "public, max-age=31536000, immutable"
        assert headers["x-content-type-options"] == "nosniff"
        assert body == (WEB_DIR / path.lstrip("/")).read_bytes()


async def test_text_is_gzipped_for_clients_that_accept_it(server: CollabServer) -> None:
    _, _, editor = await get(server, "/d/x")
    [script] = [path for path in asset_paths(editor) if path.endswith(".js")]
    status, headers, body = await get(server, script, accept_encoding="br, gzip;q=0.8")
    assert status == 200
    assert headers["content-encoding"] == "gzip"
    assert headers["vary"] == "Accept-Encoding"
    assert len(body) < len((WEB_DIR / script.lstrip("/")).read_bytes()) / 2
    assert gzip.decompress(body) == (WEB_DIR / script.lstrip("/")).read_bytes()
    # q=0 means "not gzip".
    _, headers, body = await get(server, script, accept_encoding="gzip;q=0")
    assert "content-encoding" not in headers
    assert body == (WEB_DIR / script.lstrip("/")).read_bytes()


async def test_a_current_copy_is_revalidated_with_304(server: CollabServer) -> None:
    _, headers, _ = await get(server, "/")
    status, again, body = await get(server, "/", if_none_match=headers["etag"])
    assert (status, body) == (304, b"")
    assert again["etag"] == headers["etag"]
    assert again["cache-control"] == "no-cache"
    assert again["connection"] == "close", "as every answer says: the server closes after it"
    status, _, body = await get(server, "/", if_none_match='"something-else"')
    assert status == 200 and body


async def test_the_service_worker_is_served_from_the_root_to_keep_every_file(server: CollabServer) -> None:
    status, headers, body = await get(server, "/sw.js")
    assert status == 200
    assert headers["content-type"] == "text/javascript; charset=utf-8"
    # Never cached as is: the browser must see a new build's worker at the next visit.
    assert headers["cache-control"] == "no-cache"
    assert "connect-src 'self'" in headers["content-security-policy"]
    assert body == (WEB_DIR / "sw.js").read_bytes()
    [kept] = re.findall(rb'\[("/"[^\]]*)\]', body)
    assets = sorted(f"/assets/{path.name}" for path in (WEB_DIR / "assets").iterdir())
    assert json.loads(b"[" + kept + b"]") == ["/", "/d/", *assets]
    # A worker that served a page's path would shadow it: only /sw.js itself.
    assert (await get(server, "/sw.js/../../secret.txt"))[0] == 404


@pytest.mark.parametrize("page", ["/", "/d/team/plan"])
async def test_pages_link_a_manifest_that_makes_them_installable(server: CollabServer, page: str) -> None:
    _, _, html = await get(server, page)
    [link] = re.findall(r'<link rel="manifest" href="(/assets/manifest-[A-Z2-7]{8}\.webmanifest)">', html.decode())
    status, headers, body = await get(server, link)
    assert status == 200 and headers["content-type"] == "application/manifest+json"
    manifest = json.loads(body)
    assert (manifest["name"], manifest["start_url"], manifest["scope"], manifest["display"]) == (
        "collab",
        "/",
        "/",
        "standalone",
    )
    [icon] = manifest["icons"]
    assert (icon["sizes"], icon["type"]) == ("any", "image/svg+xml")
    status, headers, svg = await get(server, icon["src"])
    assert status == 200 and headers["content-type"] == "image/svg+xml"
    assert headers["cache-control"] == "public, max-age=31536000, immutable"
    assert svg.startswith(b"<svg ")


async def test_license_notices_of_the_bundled_packages_are_served(server: CollabServer) -> None:
    status, headers, body = await get(server, "/third-party-licenses.txt")
    assert status == 200
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert b"yjs@" in body and b"@codemirror/view@" in body


# A web directory of our own, with a secret beside it and symlinks pointing out of it.


@pytest.fixture
def web_dir(tmp_path: Path) -> Path:
    (tmp_path / "secret.txt").write_text("TOP SECRET")
    dist = tmp_path / "web" / "dist"
    (dist / "assets").mkdir(parents=True)
    (dist / "index.html").write_text("<!doctype html><title>home</title>")
    (dist / "editor.html").write_text("<!doctype html><title>editor</title>")
    (dist / "assets" / "app-ABCDEFGH.js").write_text("console.log('app')")
    (dist / "assets" / "notes.txt").write_text("plain")
    (dist / "assets" / ".hidden").write_text("hidden")
    (dist / "assets" / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (dist / "assets" / "up").symlink_to(tmp_path)
    (dist / "assets" / "alias-ABCDEFGH.js").symlink_to(dist / "assets" / "app-ABCDEFGH.js")
    return dist


@pytest.fixture
def own_web(server: CollabServer, web_dir: Path) -> CollabServer:
    server.http = server.endpoint.router = Router()
    install_web(server.http, web_dir)
    return server


async def test_own_web_dir_serves_its_files(own_web: CollabServer) -> None:
    assert (await get(own_web, "/"))[2] == b"<!doctype html><title>home</title>"
    assert (await get(own_web, "/assets/app-ABCDEFGH.js"))[2] == b"console.log('app')"
    # A symlink that stays inside the web directory is fine.
    assert (await get(own_web, "/assets/alias-ABCDEFGH.js"))[2] == b"console.log('app')"
    status, headers, body = await get(own_web, "/assets/notes.txt")
    assert (status, body) == (200, b"plain")
    # Not content-hashed: revalidated instead of cached forever.
    assert headers["cache-control"] == "no-cache"


def escapes(secret: Path) -> list[str]:
    absolute = str(secret)
    return [
        "/assets/../../../secret.txt",
        "/assets/..%2f..%2f..%2fsecret.txt",
        "/assets/..%2F..%2F..%2Fsecret.txt",
        "/assets/%2e%2e/%2e%2e/%2e%2e/secret.txt",
        "/assets/%2e%2e%2f%2e%2e%2f%2e%2e%2fsecret.txt",
        "/assets/%252e%252e%252fsecret.txt",
        "/assets/..\\..\\..\\secret.txt",
        "/assets/..%5c..%5c..%5csecret.txt",
        "/assets/" + absolute,
        "/assets/" + quote(absolute, safe=""),
        "/assets/%2f" + quote(absolute.lstrip("/"), safe=""),
        "/" + absolute,
        "//" + absolute.lstrip("/"),
        "/assets/escape.txt",
        "/assets/up/secret.txt",
        "/assets/up%2fsecret.txt",
        "/assets/.hidden",
        "/assets/%2ehidden",
        "/assets/secret.txt%00.js",
        "/assets/%ff%fe",
        "/assets/",
        "/assets/.",
        "/assets/..",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/third-party-licenses.txt/../../secret.txt",
        "/d/../../secret.txt",
    ]


async def test_nothing_outside_the_web_dir_is_ever_served(own_web: CollabServer, web_dir: Path) -> None:
    secret = web_dir.parent.parent / "secret.txt"
    for path in escapes(secret):
        status, _, body = await get(own_web, path)
        assert b"SECRET" not in body and b"hidden" not in body, path
        if path.startswith("/d/"):
            assert (status, body) == (200, b"<!doctype html><title>editor</title>"), path
        else:
            assert status == 404, path


async def test_a_missing_bundle_is_explained(server: CollabServer, tmp_path: Path) -> None:
    server.http = server.endpoint.router = Router()
    install_web(server.http, tmp_path / "not-built")
    status, _, body = await get(server, "/")
    assert status == 503 and b"scripts/build-web" in body
    assert (await get(server, "/assets/app-ABCDEFGH.js"))[0] == 404
    assert (await get(server, "/sw.js"))[0] == 404
