"""Webhooks as real receivers behave: every answer 50 ms late, a slow tail, an outage.

The benchmark's receiver delays its answers (`FastReceiver.set_delay`) or stops listening
(`down`/`up`); arrival times are noted when a request arrives, so latency is commit to
receipt, as in the fast-receiver latency run.
"""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from skor_bridge.tools.bench.latency import SETTLE, WARMUP, percentile, steady_latencies
from skor_bridge.tools.bench.report import Row, count, rate, verdict
from skor_bridge.tools.bench.scratch import TABLE
from skor_bridge.tools.bench.throughput import prepare, start_bridge
from skor_bridge.tools.bench.writers import insert_backlog, run_paced

if TYPE_CHECKING:
    from skor_bridge.tools.bench.context import Context

#: The receiver's answer delay (seconds) of the 50 ms runs.
DELAY = 0.05
#: Paced rate (events/s, from 4 writers) and p99 target (ms) of the 50 ms receiver.
PACED_RATE, PACED_P99_MS = 3000, 250.0
#: Flat out with a 50 ms receiver: events/s target, and the backlog drained.
FLAT_OUT_TARGET, FLAT_OUT_BACKLOG = 5000, 30_000
#: Slow tail: the share of answers late, how late, the paced rate, and the p50 target.
TAIL_SHARE, TAIL_DELAY, TAIL_RATE, TAIL_P50_MS = 0.002, 10.0, 2000, 25.0
#: Outage: seconds the receiver is down while changes arrive (at OUTAGE_RATE/s), and
#: the target for delivering everything once it is back.
OUTAGE_SECONDS, OUTAGE_RATE, OUTAGE_TARGET = 45.0, 200, 5.0


def measure(ctx: Context) -> list[Row]:
    rows = [
        _paced(ctx, "50 ms receiver", PACED_RATE, DELAY, 0.0, 0.0, 99, PACED_P99_MS),
        _flat_out(ctx),
        _paced(
            ctx,
            f"{TAIL_SHARE:.1%} of answers {TAIL_DELAY:g} s late",
            TAIL_RATE,
            0.0,
            TAIL_SHARE,
            TAIL_DELAY,
            50,
            TAIL_P50_MS,
        ),
        _outage(ctx),
    ]
    ctx.receiver.set_delay()
    return rows


def _latencies(ctx: Context, commits: dict[int, float]) -> tuple[list[float], float, int]:
    """(latencies after the warm-up, sorted; the worst one of the warm-up; lost events).
    As in the other paced rows, the first second is not counted: it holds the first change
    after a quiet period, which waits for the sequencer's backed-off poll (up to 250 ms),
    and the adaptive limit's slow start from a bridge that has not sent yet. Its worst
    latency is reported beside the figure, and its events must arrive like the rest."""
    deadline = time.monotonic() + SETTLE + TAIL_DELAY
    while ctx.receiver.summary().distinct < len(commits) and time.monotonic() < deadline:
        time.sleep(0.05)
    arrivals = ctx.receiver.arrivals()
    steady = steady_latencies(commits, arrivals)
    start = min(commits.values(), default=0.0) + WARMUP
    warmup = [
        (arrivals[i] - at) * 1000 for i, at in commits.items() if i in arrivals and at < start
    ]
    lost = sum(1 for i in commits if i not in arrivals)
    return steady, max(warmup, default=0.0), lost


def _paced(
    ctx: Context,
    what: str,
    events_per_s: int,
    delay: float,
    share: float,
    late: float,
    judged: int,
    target_ms: float,
) -> Row:
    prepare(ctx, [ctx.webhook])
    ctx.receiver.set_delay(delay, share, late)
    bridge = start_bridge(ctx, [ctx.webhook], f"slow-{events_per_s}")
    try:
        bridge.wait_ready(1)
        ctx.progress(
            f"slow webhook: {what}, {events_per_s:,} events/s from 4 writers for "
            f"{ctx.options.seconds:g} s"
        )
        commits = run_paced(ctx.db.dsn, TABLE, events_per_s, ctx.options.seconds, processes=4)
        latencies, warmup_worst, lost = _latencies(ctx, commits)
    finally:
        bridge.stop()
    p50, p99 = percentile(latencies, 0.50), percentile(latencies, 0.99)
    achieved = len(commits) / ctx.options.seconds
    ctx.progress(f"slow webhook: {what}: p50 {p50:.1f} ms, p99 {p99:.1f} ms")
    measured = p99 if judged == 99 else p50
    return Row(
        f"latency, webhook, {what}, at {events_per_s:,} events/s",
        f"p50 {p50:.1f} ms, p99 {p99:.1f} ms ({count(len(commits))} events at "
        f"{rate(achieved)}, the first second not counted: its worst {warmup_worst:.0f} ms; "
        f"{'none lost' if not lost else f'{count(lost)} LOST'})",
        f"p{judged} <= {target_ms:g} ms",
        verdict(measured <= target_ms and not lost and bool(latencies)),
    )


def _flat_out(ctx: Context) -> Row:
    prepare(ctx, [ctx.webhook])
    ctx.receiver.set_delay(DELAY)
    ctx.progress(f"slow webhook: inserting a backlog of {count(FLAT_OUT_BACKLOG)} events")
    insert_backlog(ctx.db.dsn, TABLE, FLAT_OUT_BACKLOG)
    bridge = start_bridge(ctx, [ctx.webhook], "slow-flat-out")
    try:
        bridge.wait_ready(1)
        started, cpu = time.monotonic(), bridge.cpu_seconds()
        deadline = started + 300
        while ctx.receiver.summary().distinct < FLAT_OUT_BACKLOG and time.monotonic() < deadline:
            time.sleep(0.05)
        took = time.monotonic() - started
        cpu = bridge.cpu_seconds() - cpu
        received = ctx.receiver.summary().distinct
    finally:
        bridge.stop()
    per_s = received / took
    ctx.progress(f"slow webhook: flat out {rate(per_s)}")
    return Row(
        f"throughput, webhook, 50 ms receiver, draining {count(FLAT_OUT_BACKLOG)} events",
        f"{rate(per_s)}, bridge CPU {cpu / max(received, 1) * 10_000:.2f} s per "
        f"10,000 events ({count(received)} received)",
        f">= {FLAT_OUT_TARGET:,} events/s",
        verdict(per_s >= FLAT_OUT_TARGET and received == FLAT_OUT_BACKLOG),
    )


def _outage(ctx: Context) -> Row:
    prepare(ctx, [ctx.webhook])
    ctx.receiver.set_delay()
    bridge = start_bridge(ctx, [ctx.webhook], "slow-outage")
    try:
        bridge.wait_ready(1)
        ctx.progress(
            f"slow webhook: receiver down {OUTAGE_SECONDS:g} s while "
            f"{OUTAGE_RATE}/s changes arrive, then back"
        )
        back = threading.Timer(OUTAGE_SECONDS, ctx.receiver.up)

        def go_down() -> None:  # as the writers' schedule starts: changes arrive throughout
            ctx.receiver.down()
            back.start()

        commits = run_paced(ctx.db.dsn, TABLE, OUTAGE_RATE, OUTAGE_SECONDS, on_start=go_down)
        back.join()
        up = time.monotonic()
        deadline = up + 120
        while ctx.receiver.summary().distinct < len(commits) and time.monotonic() < deadline:
            time.sleep(0.02)
        took = time.monotonic() - up
        received = ctx.receiver.summary().distinct
    finally:
        bridge.stop()
    ctx.progress(f"slow webhook: everything delivered {took:.1f} s after the receiver came back")
    return Row(
        f"receiver down {OUTAGE_SECONDS:g} s with changes arriving, then back",
        f"all {count(len(commits))} delivered {took:.1f} s after it was back "
        f"({count(received)} received)",
        f"<= {OUTAGE_TARGET:g} s",
        verdict(took <= OUTAGE_TARGET and received >= len(commits)),
    )
