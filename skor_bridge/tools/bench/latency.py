"""Latency from commit to receipt at a fixed rate, to the webhook.

Paced writers note the time each INSERT's commit returned, by row id; the receiver notes
each request's arrival, by the row id in its body. Both clocks are this machine's
`time.time()`, and the two are joined by id afterwards.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from skor_bridge.tools.bench.report import Row, count, rate, verdict
from skor_bridge.tools.bench.scratch import TABLE
from skor_bridge.tools.bench.throughput import prepare, start_bridge
from skor_bridge.tools.bench.writers import run_paced

if TYPE_CHECKING:
    from skor_bridge.tools.bench.context import Context

#: p99 target at the fixed rate, in milliseconds.
P99_TARGET_MS = 10.0

#: Seconds to wait, after the writers stopped, for the last events.
SETTLE = 30.0

#: The first second of a paced run is not counted in its percentiles: it is the first
#: change after a quiet period, which waits for the backed-off poll (up to 250 ms, see the
#: README), not the steady rate the figure is about. Those events must still arrive.
WARMUP = 1.0


def steady_latencies(commits: dict[int, float], arrivals: dict[int, float]) -> list[float]:
    """Milliseconds from commit to receipt, sorted, of the events committed after WARMUP."""
    if not commits:
        return []
    start = min(commits.values()) + WARMUP
    return sorted(
        (arrivals[i] - at) * 1000 for i, at in commits.items() if i in arrivals and at >= start
    )


def percentile(sorted_values: list[float], share: float) -> float:
    """Nearest-rank percentile of an ascending list."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(share * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def measure(ctx: Context) -> list[Row]:
    options = ctx.options
    counters = [ctx.webhook]
    prepare(ctx, counters)  # type: ignore[arg-type]
    bridge = start_bridge(ctx, counters, "webhook-latency")  # type: ignore[arg-type]
    try:
        bridge.wait_ready(1)
        ctx.progress(f"latency: {options.rate:,} events/s to the webhook for {options.seconds:g} s")
        commits = run_paced(ctx.db.dsn, TABLE, options.rate, options.seconds)
        deadline = time.monotonic() + SETTLE
        while ctx.receiver.summary().distinct < len(commits) and time.monotonic() < deadline:
            time.sleep(0.05)
        arrivals = ctx.receiver.arrivals()
    finally:
        bridge.stop()
    latencies = steady_latencies(commits, arrivals)
    lost = sum(1 for i in commits if i not in arrivals)
    p50, p95, p99 = (percentile(latencies, s) for s in (0.50, 0.95, 0.99))
    worst = latencies[-1] if latencies else 0.0
    achieved = len(commits) / options.seconds
    ctx.progress(f"latency: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    result = (
        f"p50 {p50:.1f} ms, p95 {p95:.1f} ms, p99 {p99:.1f} ms, max {worst:.1f} ms "
        f"({count(len(commits))} events at {rate(achieved)}, the first second not counted; "
        f"{'none lost' if not lost else f'{count(lost)} LOST'})"
    )
    return [
        Row(
            f"latency, commit to receipt, webhook at {options.rate:,} events/s",
            result,
            f"p99 <= {P99_TARGET_MS:g} ms",
            verdict(p99 <= P99_TARGET_MS and lost == 0 and bool(latencies)),
        )
    ]
