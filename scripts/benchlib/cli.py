"""`scripts/bench`: run the suite against collab and the reference; one JSON line per result, then a table."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Coroutine, Sequence
from importlib.metadata import version
from pathlib import Path
from typing import TypeVar

from .context import Context
from .postgres import find_server
from .relay import RedisServer, find_redis
from .report import render
from .results import Result
from .scenarios import SCENARIOS
from .servers import (
    CLUSTER_SCENARIOS,
    POSTGRES_SCENARIOS,
    REFERENCE_DIR,
    ROOT,
    ExternalTarget,
    ManagedTarget,
    Target,
    collab_pg_target,
    collab_target,
    has_cluster,
    has_postgres,
    reference_target,
)
from .sizes import DEFAULT, TINY, apply_overrides

__all__ = ["main"]

T = TypeVar("T")

EPILOG = """\
scenarios: fanout, saturate, latejoin, conns, persist, flood, and the cluster scenarios spread, crossproc,
relayoverhead, coldjoin (all by default, in that order)

latejoin and persist also run on PostgreSQL (column collab-pg), each in a new database on the server
COLLAB_BENCH_PG names (a libpq URL where the harness may CREATE DATABASE; default
postgresql://postgres@127.0.0.1:5432/postgres); when none answers, those rows say so, skipped.

The cluster scenarios (issue 12) compare collab with collab: one process against several sharing rooms
through the Redis COLLAB_BENCH_REDIS names (default redis://127.0.0.1:6379/0), with a key prefix of their
own (bench_<run>:<scenario>:) whose keys are deleted afterwards; when no Redis answers, those rows are
skipped, saying so. The reference has no cluster mode and does not run them.

examples:
  scripts/bench --tiny                          # a smoke run of everything, seconds long
  scripts/bench                                 # the standard suite (a few minutes)
  scripts/bench saturate fanout --set saturate.seconds=20
  scripts/bench --no-reference --server hocuspocus=ws://127.0.0.1:1235
  COLLAB_BENCH_PG=postgresql://postgres:secret@db:5432/postgres scripts/bench persist latejoin
  scripts/bench spread crossproc relayoverhead coldjoin --no-reference   # the cluster scenarios
  git archive HEAD~3 collab | tar -x -C /tmp/before && scripts/bench saturate --collab before=/tmp/before
"""

UNLOAD_AFTER_S = 0.5
"""collab's --unload-after in the benchmark: short, so that latejoin's cold joins need not wait long."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/bench",
        description="Benchmark collab side by side with the reference y-websocket server (issue 5).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO", help="scenarios to run (default: all)")
    parser.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke run of a few seconds per scenario")
    parser.add_argument("--set", action="append", default=[], metavar="SCENARIO.FIELD=VALUE", help="change one size")
    parser.add_argument("--no-collab", action="store_true", help="do not start collab (on either database)")
    parser.add_argument("--no-postgres", action="store_true", help="run collab on SQLite only, not on PostgreSQL")
    parser.add_argument("--no-reference", action="store_true", help="do not start the reference server")
    parser.add_argument("--reference-dir", type=Path, default=REFERENCE_DIR, help="where the reference is installed")
    parser.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="also measure a running server (ws://host:port)",
    )
    parser.add_argument(
        "--collab",
        action="append",
        default=[],
        metavar="NAME=DIR",
        help=(
            "also run the collab package found in DIR (e.g. an older commit, from git archive), as NAME"
            " (and as NAME-pg on PostgreSQL, if that tree has the engine)"
        ),
    )
    parser.add_argument("--json-out", type=Path, help="also write every result to this file, as a JSON list")
    parser.add_argument("--seed", type=int, default=1, help="seed of the typing workloads")
    parser.add_argument("--no-cache", action="store_true", help="type the workloads again (not from .cache/bench)")
    parser.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto", help="load generator's loop")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the run directory (server logs, SQLite files; PostgreSQL databases are dropped anyway)",
    )
    parser.add_argument(
        "--py-spy", type=Path, metavar="DIR", help="profile collab with py-spy during each scenario, into DIR"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario {', '.join(unknown)} (choose from {', '.join(SCENARIOS)})")
    try:
        sizes = apply_overrides(TINY if args.tiny else DEFAULT, args.set)
    except ValueError as error:
        parser.error(str(error))
    scenarios = args.scenarios or list(SCENARIOS)
    wants_postgres = not (args.no_collab or args.no_postgres) and any(s in POSTGRES_SCENARIOS for s in scenarios)
    postgres = find_server() if wants_postgres else None
    wants_redis = not args.no_collab and any(s in CLUSTER_SCENARIOS for s in scenarios)
    redis = find_redis() if wants_redis else None
    targets: list[Target] = []
    if not args.no_collab:
        own = [collab_target(UNLOAD_AFTER_S)]
        if postgres is not None:
            own.append(collab_pg_target(UNLOAD_AFTER_S, postgres))
        for target in own:
            target.profile_dir = args.py_spy.resolve() if args.py_spy else None
        own[0].redis = redis
        targets += own
    for spec in args.collab:
        name, sep, source = spec.partition("=")
        if not sep or name in ("collab", "collab-pg", "reference"):
            parser.error(f"--collab {spec!r}: expected NAME=DIR, NAME none of collab, collab-pg, reference")
        other = collab_target(UNLOAD_AFTER_S, name, Path(source))
        other.cluster, other.redis = has_cluster(Path(source)), redis
        targets.append(other)
        if postgres is not None and has_postgres(Path(source)):
            targets.append(collab_pg_target(UNLOAD_AFTER_S, postgres, f"{name}-pg", Path(source)))
    if not args.no_reference:
        targets.append(reference_target(args.reference_dir))
    for spec in args.server:
        name, sep, url = spec.partition("=")
        if not sep or not url.startswith("ws://"):
            parser.error(f"--server {spec!r}: expected NAME=ws://host:port")
        targets.append(ExternalTarget(name, url))
    if not targets:
        parser.error("nothing to measure")
    raise_fd_limit()
    run_dir = Path(tempfile.mkdtemp(prefix="collab-bench-"))
    cache = None if args.no_cache else ROOT / ".cache" / "bench" / "workloads"
    ctx = Context(sizes, uuid.uuid4().hex[:8], run_dir, seed=args.seed, cache=cache)
    loop_name = loop_choice(args.loop)
    try:
        results = run_loop(loop_name, suite(ctx, targets, scenarios))
    finally:
        if args.keep:
            print(f"run directory kept: {run_dir}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    if args.json_out:
        args.json_out.write_text(json.dumps([json.loads(result.to_json()) for result in results], indent=1) + "\n")
    print()
    print(environment(targets, ctx, loop_name))
    print()
    print(render(results, [target.name for target in targets]))
    return 0 if all(result.ok or result.skipped for result in results) else 1


async def suite(ctx: Context, targets: list[Target], scenarios: list[str]) -> list[Result]:
    results = []
    for scenario in scenarios:
        for target in targets:
            if not target.runs(scenario):
                continue
            result = await run_one(ctx, target, scenario)
            print(result.to_json(), flush=True)
            results.append(result)
    return results


async def run_one(ctx: Context, target: Target, scenario: str) -> Result:
    """One scenario against one fresh server; a failure becomes the result's `error`, never the run's end."""
    unavailable = target.unavailable_for(scenario)
    if unavailable is not None:
        return Result(scenario, target.name, {}, skipped=unavailable)
    try:
        if scenario not in CLUSTER_SCENARIOS:  # those start the processes they compare themselves
            await target.start(scenario, ctx.run_dir)
    except Exception as error:
        return Result(scenario, target.name, {}, error=f"server did not start: {error}")
    try:
        return await SCENARIOS[scenario](ctx, target)
    except Exception as error:
        print(traceback.format_exc(), file=sys.stderr)
        tail = target.log_tail() if isinstance(target, ManagedTarget) else ""
        return Result(
            scenario, target.name, {}, error=f"{type(error).__name__}: {error}" + (f"\n{tail}" if tail else "")
        )
    finally:
        await target.stop()


def run_loop(name: str, coroutine: Coroutine[object, object, T]) -> T:
    """Run on uvloop or asyncio's own loop (see `loop_choice`)."""
    if name == "uvloop":
        import uvloop

        result: T = uvloop.run(coroutine)
        return result
    return asyncio.run(coroutine)


def loop_choice(choice: str) -> str:
    """`auto` is uvloop when it is installed: the load generator's own overhead is then smaller."""
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise SystemExit("--loop uvloop: uvloop is not installed") from None
        return "asyncio"
    return "uvloop"


def raise_fd_limit() -> None:
    """Thousands of connections need thousands of descriptors, here and in the servers (who inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def environment(targets: list[Target], ctx: Context, loop_name: str) -> str:
    lines = [
        (
            f"machine: {platform.machine()}, {cpu_count()} cores, {platform.system()} {platform.release()};"
            f" Python {platform.python_version()}; the load generator shares the cores with the server"
        ),
        (
            f"load generator: pycrdt {version('pycrdt')}, websockets {version('websockets')},"
            f" loop {loop_name} {version(loop_name) if loop_name == 'uvloop' else ''};"
            f" workloads made or read in {ctx.generation_s:.1f} s before any clock started"
        ),
    ]
    lines += [f"server {target.name}: {target.describe()}" for target in targets]
    redis = {target.redis for target in targets if isinstance(target, ManagedTarget)} - {None}
    lines += [f"relay: {server.describe() if isinstance(server, RedisServer) else server}" for server in redis]
    lines.append(f"at {time.strftime('%Y-%m-%d %H:%M:%S')}")
    return "\n".join(lines)


def cpu_count() -> int:
    return len(os.sched_getaffinity(0))
