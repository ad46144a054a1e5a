"""Rate limiting without I/O: what a frame costs, and a per-connection budget that slows instead of refusing.

A connection may spend `rate` tokens per second on average and bursts of up to `capacity`. A frame that
costs more than the connection has left is still handled, but puts the budget into debt, and
`Throttle.charge` answers how long the caller must wait before reading the connection's next frame:
the server's transport then stops reading that socket for that long, the kernel's buffers fill, and
TCP backpressure slows the sender to the rate. A legitimate bulk writer (an import,
a bot, a script sending keystrokes as fast as TCP allows) is slowed, not closed, and loses nothing.

Only two things close a connection (1008, `RateLimitError`), both far beyond what any real client does:

- one frame that costs more than `MAX_FRAME_COST_BURSTS` bursts on its own: it is refused before it is
  handled, because it would hold the connection that many bursts' worth of seconds (20 s at the
  defaults) and cost the server as much CPU at once; no stock client sends one;
- being held back continuously for `close_after` seconds: its budget has never refilled to a full
  burst since it was first made to wait (a pause of capacity / rate seconds, 2 s at the defaults, would
  refill it). At 500 updates/s, ten minutes is 300,000 updates in one uninterrupted stream.

What a frame costs (`frame_cost`), in tokens of about one small update's work (40 us of server CPU in
scripts/bench flood, persistence included):

- an update (or sync step 2): 1, plus 1 per `AUDIENCE_PER_TOKEN` other peers in the room, since each is
  relayed to all of them (about 1.5 us per recipient measured: a flood into a room of 200 readers cost
  the server 8 times what it cost into a room of one);
- an awareness message: 1 per entry (parsing and ownership checks are per entry: issue 9 measured 115
  messages/s of 2,000 entries each taking a whole core), plus the relay's share as for an update (it
  goes out as one frame per peer, however many entries it has; a stock client echoes every state it
  is told about, so a newcomer to a room of 1,000 sends 1,000 entries at once);
- a sync step 1: 1, plus 1 per `STATE_VECTOR_BYTES_PER_TOKEN` bytes of state vector (parsing costs
  about 0.6 us per entry, an entry takes 2 to 16 bytes);
- anything else: 1;
- and every update or awareness message 1 more per `BYTES_PER_TOKEN` bytes (`bytes_cost`): checking and
  merging an update costs from 5 ns a byte (one long insert) to 75 ns (a merge of many keystrokes, where a
  64 MiB update would take about 5 s). That part is not counted against `MAX_FRAME_COST_BURSTS`, so a
  big document can still be uploaded in one message; its sender then waits for it (a 60 MB update: 30 s
  at the defaults), and a stream of big updates gets at most 2 MB/s through.
"""

from __future__ import annotations

from ..errors import RateLimitError
from .protocol import Awareness, Message, SyncStep1, SyncStep2, Update

__all__ = [
    "AUDIENCE_PER_TOKEN",
    "BYTES_PER_TOKEN",
    "HOLD_QUANTUM",
    "MAX_FRAME_COST_BURSTS",
    "STATE_VECTOR_BYTES_PER_TOKEN",
    "Throttle",
    "bytes_cost",
    "frame_cost",
]

MAX_FRAME_COST_BURSTS = 10
"""A frame costing more than this many bursts on its own closes the connection (1008)."""
AUDIENCE_PER_TOKEN = 32
"""A relayed message costs one token more per this many recipients."""
BYTES_PER_TOKEN = 4096
"""An update or awareness message costs one token more per this many bytes (see `bytes_cost`)."""
STATE_VECTOR_BYTES_PER_TOKEN = 256
"""A sync step 1 costs one token more per this many bytes of state vector (at most 128 entries)."""
HOLD_QUANTUM = 0.05
"""A connection is let into this many seconds' worth of debt before it is made to wait, and then waits
until it is out of debt: one wait per 25 frames at 500/s rather than one per frame. In scripts/bench
flood, a wait per frame cost the server about as much CPU as the frames themselves."""


def frame_cost(messages: list[Message], audience: int = 0) -> int:
    """Tokens one frame's messages cost when relayed to `audience` other peers (see the module docstring)."""
    relayed = 1 + audience // AUDIENCE_PER_TOKEN
    cost = 0
    for message in messages:
        if type(message) is Update or type(message) is SyncStep2:
            cost += relayed
        elif type(message) is Awareness:
            cost += max(1, len(message.entries)) + relayed - 1
        elif type(message) is SyncStep1:
            cost += 1 + len(message.state_vector) // STATE_VECTOR_BYTES_PER_TOKEN
        else:
            cost += 1
    return cost


def bytes_cost(messages: list[Message]) -> int:
    """Tokens the size of one frame's updates and awareness messages costs, beyond `frame_cost`."""
    size = 0
    for message in messages:
        if type(message) is Update or type(message) is SyncStep2:
            size += len(message.update)
        elif type(message) is Awareness:
            size += len(message.raw)
    return size // BYTES_PER_TOKEN


class Throttle:
    """One connection's budget: `rate` tokens per second, bursts of `capacity`, debt instead of refusal."""

    __slots__ = ("capacity", "close_after", "held_since", "rate", "slack", "stamp", "tokens")

    def __init__(self, rate: float, capacity: float, now: float, close_after: float = 0.0) -> None:
        """`close_after`: seconds of being held back without a pause before the connection is closed (0: never)."""
        self.rate = rate
        self.capacity = capacity
        self.close_after = close_after
        self.slack = rate * HOLD_QUANTUM
        self.tokens = capacity
        self.stamp = now
        self.held_since: float | None = None
        """When the connection was first made to wait since its budget was last full; None: not held."""

    def charge(self, cost: int, now: float, size_cost: int = 0) -> float:
        """Spend `cost + size_cost` tokens for a frame received at `now`; return how long to wait before
        reading the next.

        Raises `RateLimitError` for a frame whose `cost` alone is too much to handle at all, and for a
        connection held back without a pause for `close_after` seconds.
        """
        if cost > MAX_FRAME_COST_BURSTS * self.capacity:
            raise RateLimitError(
                f"one message costs {cost} of a budget of {self.rate:g} per second: more than"
                f" {MAX_FRAME_COST_BURSTS} bursts"
            )
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens >= self.capacity:
            tokens = self.capacity
            self.held_since = None  # it paused long enough to earn a whole burst back
        self.stamp = now
        tokens -= cost + size_cost
        self.tokens = tokens
        if tokens >= -self.slack:
            return 0.0
        if self.held_since is None:
            self.held_since = now
        elif self.close_after and now - self.held_since > self.close_after:
            raise RateLimitError(
                f"more than {self.rate:g} messages per second without a pause for {self.close_after:g} s"
            )
        return -tokens / self.rate
