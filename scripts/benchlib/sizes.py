"""How big each scenario is: the default suite, `--tiny` for a seconds-long smoke run, `--set` to change one.

scripts/bench --set saturate.seconds=20 --set conns.connections=5000
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

__all__ = ["DEFAULT", "TINY", "Sizes", "apply_overrides"]


@dataclass(frozen=True)
class Fanout:
    rooms: int = 10
    clients: int = 10
    """Per room, writers included."""
    writers: int = 2
    rate: float = 20.0
    """Updates per second per writer."""
    seconds: float = 10.0
    preload: int = 0
    """Keystrokes each writer typed before the clock starts (uploaded in merged chunks): a long document."""
    pattern: str = "typing"
    """typing, or append: a typist who never moves nor backspaces (workload.PATTERNS)."""


@dataclass(frozen=True)
class Saturate:
    rooms: int = 10
    clients: int = 5
    writers: int = 1
    seconds: float = 8.0
    window: int = 100
    """Updates per writer sent but not yet received by every reader of its room."""
    cap: int = 80_000
    """Keystrokes made ready per writer: the run stops early (and says so) if a writer gets through them."""


@dataclass(frozen=True)
class Latejoin:
    ops: tuple[int, ...] = (10_000, 100_000)
    warm_joins: int = 5
    cold_joins: int = 3
    upload_chunk: int = 100
    """Keystrokes merged into each update while the document is uploaded (setup, not measured)."""


@dataclass(frozen=True)
class Conns:
    connections: int = 5000
    """Enough for the connect rate to be measured over a few seconds (2,000 took ~1 s: too noisy)."""
    rooms: int = 250
    concurrency: int = 50
    """Handshakes in flight at once while connecting."""


@dataclass(frozen=True)
class Persist:
    rooms: int = 10
    updates: int = 10_000
    """Per room, from one writer."""


@dataclass(frozen=True)
class Flood:
    flooders: int = 2
    """Clients flooding one room, each as fast as TCP allows."""
    readers: int = 4
    """Clients reading the typist in the other room."""
    audience: int = 1
    """Clients reading the flood (each relayed update costs the server once per reader)."""
    rate: float = 10.0
    """The typist's keystrokes per second: a human pace."""
    seconds: float = 10.0
    warmup: float = 1.0
    """Seconds of flood before the typist starts (collab's burst allowance is spent by then)."""
    cap: int = 80_000
    """Keystrokes made ready per flooder: the run says so if a flooder gets through them."""


@dataclass(frozen=True)
class Spread:
    rooms: int = 200
    """Each with two clients, both typing: each is the other's reader."""
    workers: int = 2
    seconds: float = 8.0
    window: int = 50
    """Updates per client sent but not yet received by the other client of its room."""
    cap: int = 10_000
    """Keystrokes made ready per client (the same two typists in every room): the run says so if one runs out
    (some clients get through twice the mean: 5,000 ran out at 120,000 updates/s)."""


@dataclass(frozen=True)
class Crossproc:
    """fanout's load (its defaults), every room's writers on one process and its readers on another."""

    rooms: int = 10
    clients: int = 10
    """Per room, writers included."""
    writers: int = 2
    rate: float = 20.0
    """Updates per second per writer."""
    seconds: float = 10.0


@dataclass(frozen=True)
class Relayoverhead:
    """saturate's load and sizes (`saturate.*`), on one process without and with --relay."""

    rounds: int = 2
    """Each round measures both; they alternate which goes first (ABBA), so that a drifting machine favours
    neither."""


@dataclass(frozen=True)
class Coldjoin:
    ops: tuple[int, ...] = (10_000, 100_000)
    recent: int = 100
    """Of each document, the keystrokes typed on A after it was loaded (the rest typed earlier, in the store)."""
    warm_joins: int = 5
    cold_joins: int = 3
    upload_chunk: int = 100
    """Keystrokes merged into each update while the document is uploaded (setup, not measured)."""


@dataclass(frozen=True)
class Sizes:
    fanout: Fanout = field(default_factory=Fanout)
    saturate: Saturate = field(default_factory=Saturate)
    latejoin: Latejoin = field(default_factory=Latejoin)
    conns: Conns = field(default_factory=Conns)
    persist: Persist = field(default_factory=Persist)
    flood: Flood = field(default_factory=Flood)
    spread: Spread = field(default_factory=Spread)
    crossproc: Crossproc = field(default_factory=Crossproc)
    relayoverhead: Relayoverhead = field(default_factory=Relayoverhead)
    coldjoin: Coldjoin = field(default_factory=Coldjoin)


DEFAULT = Sizes()
TINY = Sizes(
    fanout=Fanout(rooms=2, clients=3, writers=1, rate=50.0, seconds=1.0),
    saturate=Saturate(rooms=2, clients=3, writers=1, seconds=1.0, window=20, cap=3000),
    latejoin=Latejoin(ops=(500, 2000), warm_joins=2, cold_joins=1, upload_chunk=50),
    conns=Conns(connections=40, rooms=4, concurrency=10),
    persist=Persist(rooms=2, updates=500),
    flood=Flood(flooders=1, readers=1, rate=20.0, seconds=1.0, warmup=0.2, cap=3000),
    spread=Spread(rooms=4, seconds=0.5, window=10, cap=5000),
    crossproc=Crossproc(rooms=1, clients=3, writers=1, rate=50.0, seconds=0.5),
    relayoverhead=Relayoverhead(rounds=1),
    coldjoin=Coldjoin(ops=(500, 2000), recent=50, warm_joins=2, cold_joins=1, upload_chunk=50),
)


def apply_overrides(sizes: Sizes, overrides: list[str]) -> Sizes:
    """Apply `scenario.field=value` settings; raise ValueError naming what is wrong."""
    for override in overrides:
        key, sep, text = override.partition("=")
        scenario, dot, name = key.partition(".")
        if not sep or not dot or scenario not in {f.name for f in fields(Sizes)}:
            raise ValueError(f"--set {override!r}: expected scenario.field=value, e.g. saturate.seconds=20")
        current = getattr(sizes, scenario)
        known = {f.name: f for f in fields(current)}
        if name not in known:
            raise ValueError(f"--set {override!r}: {scenario} has no {name!r} (one of {', '.join(known)})")
        value: Any = _parse(getattr(current, name), text)
        sizes = replace(sizes, **{scenario: replace(current, **{name: value})})
    return sizes


def _parse(example: Any, text: str) -> Any:
    if isinstance(example, tuple):
        return tuple(int(part) for part in text.split(","))
    return type(example)(text)
