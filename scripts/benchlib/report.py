"""The closing table: every metric per server, collab / reference, PostgreSQL / SQLite, and the issues' targets."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from .results import Number, Result

__all__ = ["render"]

LOWER_IS_BETTER = ("_ms", "_kb", "_mb", "ratio", "_per_update")


Table = dict[tuple[str, str], dict[str, Number]]
"""(scenario, server) -> that result's metrics."""


@dataclass(frozen=True)
class TargetCheck:
    """One of the issues' targets, judged from the results of one run."""

    label: str
    judge: Callable[[Table], tuple[Number, bool] | None]


def _ratio(a: Number, b: Number) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def _relative(
    label: str, scenario: str, metric: str, ref_metric: str, at_least: bool, server: str = "collab"
) -> TargetCheck:
    def judge(table: Table) -> tuple[Number, bool] | None:
        collab = table.get((scenario, server), {}).get(metric)
        ratio = _ratio(collab, table.get((scenario, "reference"), {}).get(ref_metric))
        if ratio is None:
            return None
        return round(ratio, 3), ratio >= 1.0 if at_least else ratio <= 1.0

    return TargetCheck(label, judge)


def _absolute(
    label: str, scenario: str, metric: str, bound: float, at_least: bool, server: str = "collab"
) -> TargetCheck:
    def judge(table: Table) -> tuple[Number, bool] | None:
        value = table.get((scenario, server), {}).get(metric)
        if value is None:
            return None
        return value, value >= bound if at_least else value <= bound

    return TargetCheck(label, judge)


def _largest_latejoin(metrics: dict[str, Number]) -> str | None:
    labels = [key[len("cold_") : -len("_ms")] for key in metrics if key.startswith("cold_")]
    return max(labels, key=lambda label: int(label.rstrip("k")) * (1000 if label.endswith("k") else 1), default=None)


def _latejoin_cold(label: str, server: str) -> TargetCheck:
    """The cold join of the largest document on `server` against the reference's warm join of it."""

    def judge(table: Table) -> tuple[Number, bool] | None:
        size = _largest_latejoin(table.get(("latejoin", server), {}))
        if size is None:
            return None
        return _relative("", "latejoin", f"cold_{size}_ms", f"warm_{size}_ms", False, server).judge(table)

    return TargetCheck(label, judge)


TARGETS = [
    _relative("saturate updates/s >= 1.0x reference", "saturate", "updates_per_s", "updates_per_s", at_least=True),
    _relative("fanout p99 <= 1.0x reference", "fanout", "p99_ms", "p99_ms", at_least=False),
    _relative("idle connection memory <= 1.0x reference", "conns", "rss_per_conn_kb", "rss_per_conn_kb", False),
    _absolute("idle connection memory <= 20 KB", "conns", "rss_per_conn_kb", 20.0, at_least=False),
    _latejoin_cold("latejoin, largest doc, collab cold <= 1.0x reference warm", "collab"),
    _absolute("persist >= 20,000 updates/s committed", "persist", "updates_per_s", 20_000, at_least=True),
    _absolute("persist storage after compaction <= 1.2x get_update()", "persist", "storage_ratio", 1.2, False),
    _absolute("flood: typist p99 < 50 ms in another room (issue 9)", "flood", "typist_p99_ms", 50.0, at_least=False),
    _latejoin_cold("PostgreSQL: latejoin, largest doc, cold <= 1.0x reference warm (issue 11)", "collab-pg"),
    _absolute(
        "PostgreSQL: persist >= 20,000 updates/s committed (issue 11)",
        "persist",
        "updates_per_s",
        20_000,
        True,
        "collab-pg",
    ),
    _absolute(
        "PostgreSQL: persist storage after compaction <= 1.2x get_update() (issue 11)",
        "persist",
        "storage_ratio",
        1.2,
        False,
        "collab-pg",
    ),
    _absolute("cluster: 2 workers >= 1.7x one process's updates/s (issue 12)", "spread", "speedup", 1.7, True),
    _absolute("cluster: cross-process delivery p99 <= 5 ms (issue 12)", "crossproc", "cross_p99_ms", 5.0, False),
]
"""Each judged when its scenario ran; a PostgreSQL row is n/a when PostgreSQL was skipped, a cluster row when
Redis was."""

RATIOS = (("collab/ref", "collab", "reference"), ("pg/sqlite", "collab-pg", "collab"))
"""The ratio columns: (header, numerator server, denominator server), shown when both ran."""


def _format(value: Number) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value < 100:
        return f"{value:,.2f}"
    return f"{value:,.0f}"


def render(results: list[Result], servers: list[str]) -> str:
    table: Table = {}
    order: list[tuple[str, str]] = []
    for result in results:
        table[(result.scenario, result.server)] = result.metrics
        for metric in result.metrics:
            if (result.scenario, metric) not in order:
                order.append((result.scenario, metric))
    ratios = [(header, a, b) for header, a, b in RATIOS if a in servers and b in servers]
    header = ["scenario", "metric", *servers, *(header for header, _, _ in ratios)]
    rows = [header]
    for scenario, metric in order:
        row = [scenario, metric + (" (lower is better)" if metric.endswith(LOWER_IS_BETTER) else "")]
        row += [_format(table.get((scenario, server), {}).get(metric)) for server in servers]
        for _, a, b in ratios:
            ratio = _ratio(table.get((scenario, a), {}).get(metric), table.get((scenario, b), {}).get(metric))
            row.append("-" if ratio is None else f"{ratio:.2f}x")
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines += ["", "load generator CPU (it shares the cores with the server):"]
    lines += [
        f"  {r.scenario:<13} {r.server:<10} loadgen {_format(r.loadgen_cpu_s)} s, server {_format(r.server_cpu_s)} s"
        f" CPU over {_format(r.wall_s)} s wall" + ("" if r.ok else f"  [{r.skipped or r.error or 'CHECK FAILED'}]")
        for r in results
    ]
    if "collab" in servers and "reference" in servers:
        lines += ["", "targets (issues 5 and 11):"]
        for target in TARGETS:
            verdict = target.judge(table)
            mark = "n/a " if verdict is None else ("MET " if verdict[1] else "MISS")
            lines.append(f"  {mark} {target.label}" + ("" if verdict is None else f"  ({_format(verdict[0])})"))
    return "\n".join(lines)
