"""The committed bundle in collab/web is what web/src builds to: not stale, not edited by hand.

Two checks, each catching what the other cannot:

- `SOURCES.sha256`, written by web/build.mjs, is the digest of every input of the build (build.mjs,
  package.json, package-lock.json, everything under src/). Recomputing it here needs no Node.js, and it
  fails the moment a source or a pinned version changes without a rebuild.
- Rebuilding into a temporary directory with the pinned packages (web/node_modules, installed by
  scripts/test from the lock file) must give collab/web byte for byte. esbuild is deterministic for the same
  inputs and version, so this fails when collab/web was edited by hand, built from other sources, or by another
  version of the build, none of which the digest sees.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

from .helpers import ROOT

WEB = ROOT / "web"
DIST = ROOT / "collab" / "web"
REBUILD = "run scripts/build-web and commit collab/web"


def inputs_digest() -> str:
    """The digest web/build.mjs records: sha256 of sorted "<path> <sha256 of file>\\n" lines, paths from web/."""
    files = [WEB / "build.mjs", WEB / "package.json", WEB / "package-lock.json"]
    files += [path for path in (WEB / "src").rglob("*") if path.is_file()]
    lines = sorted(
        f"{path.relative_to(WEB).as_posix()} {hashlib.sha256(path.read_bytes()).hexdigest()}\n" for path in files
    )
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def tree(root: Path) -> dict[str, bytes]:
    return {path.relative_to(root).as_posix(): path.read_bytes() for path in sorted(root.rglob("*")) if path.is_file()}


def test_committed_bundle_was_built_from_the_current_sources() -> None:
    recorded = (DIST / "SOURCES.sha256").read_text().strip()
    assert recorded == inputs_digest(), f"collab/web is stale against web/src or the lock file: {REBUILD}"


def test_rebuilding_gives_the_committed_bytes(tmp_path: Path) -> None:
    node = shutil.which("node")
    assert node, "Node.js is needed to rebuild the web bundle"
    assert (WEB / "node_modules" / ".collab-installed").is_file(), (
        "web/node_modules is missing: scripts/test (or scripts/build-web) installs it from the lock file"
    )
    out = tmp_path / "web"
    subprocess.run([node, str(WEB / "build.mjs"), "--outdir", str(out)], check=True, capture_output=True, timeout=120)
    built, committed = tree(out), tree(DIST)
    assert sorted(built) == sorted(committed), f"collab/web has other files than a fresh build: {REBUILD}"
    changed = [name for name in built if built[name] != committed[name]]
    assert not changed, f"collab/web differs from a fresh build in {changed}: {REBUILD}"
