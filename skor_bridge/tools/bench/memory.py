"""The bridge's footprint: CPU seconds per 10,000 events and peak resident memory (VmHWM),
idle and while draining a backlog to the webhook."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from skor_bridge.tools.bench.options import BIG_BACKLOG
from skor_bridge.tools.bench.report import Row, count, rate, verdict
from skor_bridge.tools.bench.throughput import drain, prepare, start_bridge

if TYPE_CHECKING:
    from skor_bridge.tools.bench.context import Context

#: Peak memory target, MiB.
MEMORY_TARGET_MB = 150.0

#: "The same with a 1,000,000-event backlog as with none": at most this much above an idle
#: bridge. A draining bridge holds a bounded read-ahead of events, never the backlog.
SAME_TOLERANCE = 0.25

#: Seconds an idle bridge runs before its memory and CPU are read.
IDLE_SECONDS = 3.0


def idle(ctx: Context) -> tuple[float, float]:
    """(peak MiB, CPU share of one core) of a bridge with nothing to do."""
    counters = [ctx.webhook]
    prepare(ctx, counters)  # type: ignore[arg-type]
    bridge = start_bridge(ctx, counters, "webhook-idle")  # type: ignore[arg-type]
    try:
        bridge.wait_ready(1)
        cpu = bridge.cpu_seconds()
        time.sleep(IDLE_SECONDS)
        share = (bridge.cpu_seconds() - cpu) / IDLE_SECONDS
        return bridge.peak_memory_mb(), share
    finally:
        bridge.stop()


def measure(ctx: Context) -> list[Row]:
    ctx.progress("memory: an idle bridge")
    idle_mb, idle_cpu = idle(ctx)
    rows = [
        Row(
            "bridge peak memory (VmHWM), idle, no backlog",
            f"{idle_mb:.0f} MiB (idle CPU {idle_cpu * 100:.1f} % of one core)",
            f"< {MEMORY_TARGET_MB:.0f} MiB",
            verdict(idle_mb < MEMORY_TARGET_MB),
        )
    ]
    sizes = [ctx.options.backlog]
    if ctx.options.big_backlog:
        sizes.append(BIG_BACKLOG)
    else:
        ctx.notes.append(
            f"The {count(BIG_BACKLOG)}-event backlog run was skipped "
            "(--big-backlog runs it; `make bench` does)."
        )
    drains = []
    for size in sizes:
        ctx.progress(f"memory: draining {count(size)} events to the webhook")
        result = drain(ctx, ("webhook",), size)
        drains.append(result)
        rows.append(
            Row(
                f"bridge CPU per 10,000 events, {count(size)}-event backlog to the webhook",
                f"{result.cpu_per_10k:.2f} CPU-s (drained at {rate(result.rate)})",
            )
        )
    for size, result in zip(sizes, drains, strict=True):
        figure = f"bridge peak memory (VmHWM), {count(size)}-event backlog to the webhook"
        text = f"{result.peak_mb:.0f} MiB ({result.peak_mb - idle_mb:+.0f} MiB vs no backlog)"
        if size == BIG_BACKLOG:
            same = result.peak_mb <= idle_mb * (1 + SAME_TOLERANCE)
            rows.append(
                Row(
                    figure,
                    text,
                    f"< {MEMORY_TARGET_MB:.0f} MiB and within {SAME_TOLERANCE:.0%} of no backlog",
                    verdict(result.peak_mb < MEMORY_TARGET_MB and same),
                )
            )
        else:
            rows.append(
                Row(
                    figure,
                    text,
                    f"< {MEMORY_TARGET_MB:.0f} MiB",
                    verdict(result.peak_mb < MEMORY_TARGET_MB),
                )
            )
    return rows
