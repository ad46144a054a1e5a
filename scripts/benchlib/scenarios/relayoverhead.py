"""`relayoverhead`: what `--relay` costs one process: saturate's load without and with it.

`saturate.run` (its sizes, `saturate.*`) against one collab process started plainly and one started with
`--relay`, with no other process in the cluster: every update the room accepts is also published to Redis,
and nobody reads it back. The difference in server CPU per update is the relay's cost on the path every
update takes. Each of `rounds` rounds measures both, alternating which goes first (plain, relay, relay,
plain, ...), and the metrics are the means over rounds; every round's figures are in `params`. The Redis
server's CPU per update is given apart (it runs on the same cores).
"""

from __future__ import annotations

import statistics

from ..context import Context
from ..relay import prefix_for
from ..results import Number, Result
from ..servers import Target
from . import saturate
from .cluster import Group, cluster_base, process, relay_args, started


async def run(ctx: Context, target: Target) -> Result:
    size = ctx.sizes.relayoverhead
    result = Result("relayoverhead", target.name, params={**vars(size), "saturate": vars(ctx.sizes.saturate).copy()})
    found = cluster_base(target, result)
    if found is None:
        return result
    base, redis = found
    prefix = prefix_for(ctx.run_id, "relayoverhead")
    samples: dict[str, dict[str, list[float]]] = {"plain": {}, "relay": {}}
    wall = loadgen = server = 0.0
    for round_ in range(size.rounds):  # each process under a name of its own: a directory, a database of its own
        order = ["plain", "relay"] if round_ % 2 == 0 else ["relay", "plain"]
        for label in order:
            if label == "plain":
                group = Group("plain", [process(base, f"plain-{round_ + 1}")])
            else:
                group = Group(
                    "relay", [process(base, f"relay-{round_ + 1}", *relay_args(redis, prefix))], redis, prefix
                )
            async with started(group, "relayoverhead", ctx.run_dir):
                redis_before = redis.cpu_seconds()
                measured = await saturate.run(ctx, group)
                redis_after = redis.cpu_seconds()
            result.checks.update({f"{label}_{round_ + 1}_{name}": ok for name, ok in measured.checks.items()})
            result.notes += [f"{label}: {note}" for note in measured.notes]
            kept = samples[label]
            for metric in ("updates_per_s", "server_us_per_update"):
                value = measured.metrics.get(metric)
                if value is not None:
                    kept.setdefault(metric, []).append(float(value))
            updates = measured.metrics.get("updates")
            if label == "relay" and updates and redis_before is not None and redis_after is not None:
                kept.setdefault("redis_us_per_update", []).append((redis_after - redis_before) / updates * 1e6)
            wall += measured.wall_s or 0.0
            loadgen += measured.loadgen_cpu_s or 0.0
            server += measured.server_cpu_s or 0.0
    means: dict[str, dict[str, float]] = {
        label: {metric: statistics.fmean(values) for metric, values in kept.items()} for label, kept in samples.items()
    }
    metrics: dict[str, Number] = {}
    for label, kept_means in means.items():
        if "updates_per_s" in kept_means:
            metrics[f"{label}_updates_per_s"] = round(kept_means["updates_per_s"])
        if "server_us_per_update" in kept_means:
            metrics[f"{label}_us_per_update"] = round(kept_means["server_us_per_update"], 2)
    if "redis_us_per_update" in means["relay"]:
        metrics["relay_redis_us_per_update"] = round(means["relay"]["redis_us_per_update"], 2)
    plain_us, relay_us = metrics.get("plain_us_per_update"), metrics.get("relay_us_per_update")
    if isinstance(plain_us, float) and isinstance(relay_us, float) and plain_us > 0:
        metrics["relay_cpu_ratio"] = round(relay_us / plain_us, 3)
    result.metrics = metrics
    result.params["rounds_measured"] = {
        label: {metric: [round(value, 2) for value in values] for metric, values in kept.items()}
        for label, kept in samples.items()
    }
    result.wall_s, result.loadgen_cpu_s, result.server_cpu_s = round(wall, 4), round(loadgen, 4), round(server, 4)
    return result
