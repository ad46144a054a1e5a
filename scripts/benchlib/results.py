"""One scenario's outcome against one server, the meter that times it, and the JSON line it prints."""

from __future__ import annotations

import json
import math
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Self

from .servers import Target

__all__ = ["Meter", "Result", "median", "percentile"]

Number = int | float | None


@dataclass
class Result:
    scenario: str
    server: str
    params: dict[str, Any]
    metrics: dict[str, Number] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)
    """What was verified (every client converged, the server's document, the database)."""
    loadgen_cpu_s: float | None = None
    """CPU time (user + system) of the load generator during the measured part."""
    server_cpu_s: float | None = None
    wall_s: float | None = None
    """Wall-clock time of the measured part."""
    notes: list[str] = field(default_factory=list)
    error: str | None = None
    skipped: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.skipped is None and all(self.checks.values())

    def to_json(self) -> str:
        return json.dumps({"ok": self.ok, **asdict(self)}, separators=(",", ":"))


class Meter:
    """Wall time, the load generator's CPU and the server's CPU over one measured interval."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.wall = self.cpu = 0.0
        self.server_cpu: float | None = None

    def __enter__(self) -> Self:
        self._wall0, self._cpu0 = time.perf_counter(), time.process_time()
        self._server0 = self.target.cpu_seconds()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self._wall0
        self.cpu = time.process_time() - self._cpu0
        server = self.target.cpu_seconds()
        self.server_cpu = None if server is None or self._server0 is None else server - self._server0

    def record(self, result: Result) -> None:
        result.wall_s = round(self.wall, 4)
        result.loadgen_cpu_s = round(self.cpu, 4)
        result.server_cpu_s = None if self.server_cpu is None else round(self.server_cpu, 4)


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100), nearest-rank, of a non-empty list."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: list[float]) -> float:
    return statistics.median(values)
