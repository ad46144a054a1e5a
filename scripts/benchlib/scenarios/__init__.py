"""The standard suite, in the order it runs. Each scenario is `run(ctx, target) -> Result`."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from ..context import Context
from ..results import Result
from ..servers import Target
from . import coldjoin, conns, crossproc, fanout, flood, latejoin, persist, relayoverhead, saturate, spread

__all__ = ["SCENARIOS", "Scenario"]

Scenario = Callable[[Context, Target], Awaitable[Result]]

SCENARIOS: dict[str, Scenario] = {
    "fanout": fanout.run,
    "saturate": saturate.run,
    "latejoin": latejoin.run,
    "conns": conns.run,
    "persist": persist.run,
    "flood": flood.run,
    # The cluster scenarios (servers.CLUSTER_SCENARIOS): collab only, each starting the processes it compares.
    "spread": spread.run,
    "crossproc": crossproc.run,
    "relayoverhead": relayoverhead.run,
    "coldjoin": coldjoin.run,
}
