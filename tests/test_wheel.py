"""`pip install collab` (a wheel, not editable) serves the web editor from any directory: the bundle is package data.

A wheel is built from a copy of this checkout and installed into a fresh virtualenv (no system site-packages,
no checkout on its path); that virtualenv's `collab serve` runs in an empty directory, and `/`, `/d/x`, the
scripts and styles they load and the licenses come back as the files of the committed bundle.

Offline and on loopback only, like every test:

- The wheel is built without build isolation, by this environment's setuptools (the test extra's): an isolated
  build would download setuptools. The test is skipped, saying so, where this environment's setuptools does not
  meet pyproject.toml's `[build-system] requires`, the one case in which no wheel can be built offline.
- Its dependencies are not downloaded either (pycrdt and sqlite-utils are in no local index): the distributions
  the wheel's metadata requires, and the ones those require, are copied from this environment file by file, as
  their RECORD lists them, and `pip check` confirms they satisfy it. Only those are there, so a module that
  imports an undeclared package fails here as it would for a user.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from collab.http.static import WEB_DIR

from .helpers import ROOT, http_get

# What the build does not read: version control, environments, caches, and what tools write at the top level.
NOT_BUILT_FROM = shutil.ignore_patterns("node_modules", "__pycache__", "*.egg-info", ".*_cache", ".hypothesis")
NOT_BUILT_FROM_AT_THE_TOP = {".git", ".venv", ".cache", "artifacts", "data", "build", "dist"}


def not_built_from(directory: str, names: list[str]) -> set[str]:
    ignored = set(NOT_BUILT_FROM(directory, names))
    return ignored | (NOT_BUILT_FROM_AT_THE_TOP & set(names)) if Path(directory) == ROOT else ignored


def missing_build_requirements() -> list[str]:
    """The entries of `[build-system] requires` this environment does not satisfy."""
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    missing = []
    for line in requires:
        requirement = Requirement(line)
        try:
            version = importlib.metadata.version(requirement.name)
        except importlib.metadata.PackageNotFoundError:
            version = None
        if version is None or not requirement.specifier.contains(version, prereleases=True):
            missing.append(line)
    return missing


def wanted(requires: list[str] | None, extras: frozenset[str]) -> list[Requirement]:
    """The requirements among a distribution's Requires-Dist that apply here, for these extras of it."""
    requirements = [Requirement(line) for line in requires or []]
    return [
        requirement
        for requirement in requirements
        if requirement.marker is None or any(requirement.marker.evaluate({"extra": extra}) for extra in {"", *extras})
    ]


def dependency_closure(requires: list[str] | None) -> list[importlib.metadata.Distribution]:
    """This environment's distributions that `requires` needs, and those they need in turn, each once."""
    pending = [(requirement, frozenset(requirement.extras)) for requirement in wanted(requires, frozenset())]
    seen: set[tuple[str, frozenset[str]]] = set()
    found: dict[str, importlib.metadata.Distribution] = {}
    while pending:  # ends: each (distribution, extras) is expanded once, and there are finitely many
        requirement, extras = pending.pop()
        distribution = importlib.metadata.distribution(requirement.name)
        name = distribution.metadata["Name"].lower().replace("_", "-")
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        found[name] = distribution
        pending += [(needed, frozenset(needed.extras)) for needed in wanted(distribution.requires, extras)]
    return list(found.values())


def copy_distribution(distribution: importlib.metadata.Distribution, site_packages: Path) -> None:
    """The files of an installed distribution inside its site-packages (its RECORD), copied into another."""
    assert distribution.files, f"{distribution.metadata['Name']} has no RECORD to copy it by"
    for file in distribution.files:
        if file.parts[0] == ".." or "__pycache__" in file.parts:  # scripts in bin/; bytecode is made again
            continue
        target = site_packages / file
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(Path(str(distribution.locate_file(file))), target)


def run(*command: str | Path, cwd: Path) -> str:
    result = subprocess.run([str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{' '.join(map(str, command))} exited {result.returncode}:\n{result.stderr}"
    return result.stdout


def wait_for_port(server: subprocess.Popen[str], log: Path, timeout: float = 20.0) -> int:
    """The port `collab serve` says it listens on, from its log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if match := re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read_text()):
            return int(match[1])
        assert server.poll() is None, f"collab serve exited {server.returncode}:\n{log.read_text()}"
        time.sleep(0.05)
    raise TimeoutError(f"collab serve never said where it listens:\n{log.read_text()}")


def bundle_files() -> dict[str, bytes]:
    """The committed bundle, by path inside the package."""
    return {
        f"collab/web/{path.relative_to(WEB_DIR).as_posix()}": path.read_bytes()
        for path in sorted(WEB_DIR.rglob("*"))
        if path.is_file()
    }


def test_an_installed_wheel_serves_the_web_editor_from_any_directory(tmp_path: Path) -> None:
    if missing := missing_build_requirements():
        pytest.skip(f"building the wheel offline needs {', '.join(missing)} here (an isolated build downloads it)")
    source, wheels, venv, elsewhere = (tmp_path / name for name in ("source", "wheels", "venv", "elsewhere"))
    shutil.copytree(ROOT, source, ignore=not_built_from, symlinks=True)
    pip = (sys.executable, "-m", "pip", "--disable-pip-version-check")
    run(*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "--wheel-dir", wheels, ".", cwd=source)
    [wheel] = wheels.glob("collab-*.whl")
    bundle = bundle_files()
    with zipfile.ZipFile(wheel) as archive:
        shipped = {name for name in archive.namelist() if name.startswith("collab/web/")}
    assert shipped == set(bundle), "the wheel does not ship the web bundle as it is committed in collab/web"

    elsewhere.mkdir()
    run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=elsewhere)
    python = venv / "bin" / "python"
    run(*pip, "--python", python, "install", "--no-deps", "--no-index", wheel, cwd=elsewhere)
    site_packages = Path(
        run(python, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))", cwd=elsewhere).strip()
    )
    [installed] = importlib.metadata.distributions(name="collab", path=[str(site_packages)])
    for distribution in dependency_closure(installed.requires):
        copy_distribution(distribution, site_packages)
    run(*pip, "--python", python, "check", cwd=elsewhere)
    served_from = run(python, "-c", "from collab.http.static import WEB_DIR; print(WEB_DIR)", cwd=elsewhere).strip()
    assert Path(served_from) == site_packages / "collab" / "web", "the installed collab is not the wheel's"

    log = tmp_path / "serve.log"
    environment = {key: value for key, value in os.environ.items() if not key.startswith(("COLLAB_", "PYTHON"))}
    with log.open("w") as stderr:
        server = subprocess.Popen(
            [venv / "bin" / "collab", "serve", "--port", "0", "--db", tmp_path / "x.db"],
            cwd=elsewhere,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
            text=True,
            env=environment,
        )
    try:
        port = wait_for_port(server, log)
        for path, page in (("/", "index.html"), ("/d/x", "editor.html")):
            status, headers, body = http_get(port, path)
            assert (status, headers["content-type"]) == (200, "text/html; charset=utf-8"), path
            assert body == bundle[f"collab/web/{page}"]
            assets = re.findall(r'(?:src|href)="/(assets/[^"]+)"', body.decode())
            assert any(asset.endswith(".js") for asset in assets), f"{path} loads no script: {body!r}"
            for asset in assets:
                status, _, content = http_get(port, f"/{asset}")
                assert (status, content) == (200, bundle[f"collab/web/{asset}"]), asset
        status, _, licenses = http_get(port, "/third-party-licenses.txt")
        assert (status, licenses) == (200, bundle["collab/web/third-party-licenses.txt"])
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode == 0, log.read_text()
