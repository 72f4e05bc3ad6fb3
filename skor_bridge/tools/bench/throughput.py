"""End-to-end throughput per output: while writers insert flat out, and draining a backlog.

Every phase starts from a fresh `skor` schema (no outbox, log or positions from earlier
phases) and runs the bridge as its own process with only the outputs it measures.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from skor_bridge.tools.bench.bridge_proc import BridgeProcess, cpu_seconds
from skor_bridge.tools.bench.context import Context, Drain
from skor_bridge.tools.bench.report import Row, count, rate, verdict
from skor_bridge.tools.bench.scratch import TABLE
from skor_bridge.tools.bench.writers import insert_backlog

if TYPE_CHECKING:
    from skor_bridge.tools.bench.outputs import Counter

#: Events per second each output must reach (from the issue); None: no target.
TARGETS: dict[str, float | None] = {"webhook": 4_800, "amqp": 8_000, "kafka": 15_000}

#: A drain that made no progress for this long is reported as incomplete.
STALL_TIMEOUT = 60.0

#: Seconds between looks at the outputs' counts.
POLL = 0.005


@dataclass(frozen=True)
class FlatOut:
    committed_rate: float
    delivered_rate: float
    expected: int
    received: int
    duplicates: int

    @property
    def lost(self) -> int:
        return max(0, self.expected - self.received)


def counters_for(ctx: Context, names: tuple[str, ...]) -> list[Counter]:
    found: dict[str, Counter | None] = {
        "webhook": ctx.webhook,
        "amqp": ctx.amqp,
        "kafka": ctx.kafka,
    }
    result = []
    for name in names:
        counter = found[name]
        assert counter is not None, name
        result.append(counter)
    return result


def prepare(ctx: Context, counters: list[Counter]) -> None:
    ctx.db.fresh_bridge_state()
    ctx.receiver.reset()
    if ctx.amqp is not None and ctx.amqp in counters:
        ctx.amqp.purge()
    if ctx.kafka is not None and ctx.kafka in counters:
        ctx.kafka.next_phase()


def start_bridge(ctx: Context, counters: list[Counter], label: str) -> BridgeProcess:
    args: list[str] = []
    env: dict[str, str] = {}
    for counter in counters:
        args += counter.bridge_args()
        env.update(counter.bridge_env())
    return BridgeProcess(ctx.db.dsn, args, ctx.log_path(label), env).start()


def _delivered(counters: list[Counter]) -> int:
    """Events that reached every output of the phase."""
    return min(counter.count() for counter in counters)


def _received(ctx: Context, counters: list[Counter]) -> tuple[int, int]:
    """(distinct events every output has, duplicates seen at any output)."""
    distinct, duplicates = None, 0
    for counter in counters:
        total = counter.count()
        if counter is ctx.webhook:
            unique = ctx.webhook.distinct()
        elif counter is ctx.kafka:
            unique = ctx.kafka.distinct()  # keys are row ids
        else:
            # A queue's depth says how many, not which: what exceeds the rows inserted is
            # taken as duplicates, the rest as distinct.
            unique = min(total, ctx.db.rows())
        duplicates += total - unique
        distinct = unique if distinct is None else min(distinct, unique)
    return distinct or 0, duplicates


def _wait_for(counters: list[Counter], expected: int, bridge: BridgeProcess) -> float | None:
    """Poll until every output has `expected` events; the monotonic time they had, or None
    when the outputs stopped making progress (or the bridge died)."""
    last_seen, last_change = -1, time.monotonic()
    while True:
        now = time.monotonic()
        delivered = _delivered(counters)
        if delivered >= expected:
            return now
        if delivered != last_seen:
            last_seen, last_change = delivered, now
        elif now - last_change > STALL_TIMEOUT or not bridge.alive():
            return None
        time.sleep(POLL)


def flat_out(ctx: Context, names: tuple[str, ...]) -> FlatOut:
    counters = counters_for(ctx, names)
    label = "+".join(names)
    prepare(ctx, counters)
    bridge = start_bridge(ctx, counters, f"{label}-flat-out")
    try:
        bridge.wait_ready(len(counters))
        mark: list[tuple[int, float]] = []
        run = ctx.writers.run(
            ctx.options.flat_out_writers,
            ctx.options.seconds,
            on_start=lambda: mark.append((_delivered(counters), time.monotonic())),
        )
        before, started = mark[0]
        elapsed = time.monotonic() - started
        during = _delivered(counters) - before
        expected = ctx.db.rows()
        ctx.progress(
            f"{label}: writers done ({rate(run.tps, 'tps')}); waiting for all "
            f"{count(expected)} events to arrive"
        )
        _wait_for(counters, expected, bridge)
        received, duplicates = _received(ctx, counters)
    finally:
        bridge.stop()
    return FlatOut(run.tps, during / elapsed, expected, received, duplicates)


def drain(ctx: Context, names: tuple[str, ...], events: int) -> Drain:
    cached = ctx.drains.get((names, events))
    if cached is not None:
        return cached
    counters = counters_for(ctx, names)
    label = "+".join(names)
    prepare(ctx, counters)
    ctx.progress(f"{label}: inserting a backlog of {count(events)} events (bridge stopped)")
    step = max(events // 10, 100_000)
    insert_backlog(
        ctx.db.dsn,
        TABLE,
        events,
        lambda done: (
            ctx.progress(f"{label}: {count(done)} of {count(events)} inserted")
            if done % step == 0 and done < events
            else None
        ),
    )
    ctx.progress(f"{label}: starting the bridge; timing the drain")
    bridge = start_bridge(ctx, counters, f"{label}-drain-{events}")
    try:
        started = time.monotonic()
        bridge.wait_ready(len(counters))
        ready = time.monotonic()
        cpu_ready = bridge.cpu_seconds()
        receiver_ready = cpu_seconds(ctx.receiver.pid) if ctx.webhook in counters else 0.0
        done = _wait_for(counters, events, bridge)
        cpu_done = bridge.cpu_seconds()
        receiver_load = None
        if ctx.webhook in counters:
            busy = cpu_seconds(ctx.receiver.pid) - receiver_ready
            receiver_load = busy / max(time.monotonic() - ready, 1e-3)
        peak = bridge.peak_memory_mb()
        received, duplicates = _received(ctx, counters)
    finally:
        bridge.stop()
    if done is None:
        ctx.notes.append(
            f"{label}: the {count(events)}-event backlog did not drain: "
            f"{count(received)} arrived; see {bridge.log_path}"
        )
        done = time.monotonic()
    result = Drain(
        events,
        done - ready,
        done - started,
        (cpu_done - cpu_ready) / max(received, 1) * 10_000,
        peak,
        received,
        duplicates,
        receiver_load,
    )
    ctx.drains[(names, events)] = result
    return result


def _label(names: tuple[str, ...]) -> str:
    pretty = {"webhook": "webhook", "amqp": "RabbitMQ", "kafka": "Kafka"}
    if len(names) > 1:
        return "all three at once (" + " + ".join(pretty[n] for n in names) + ")"
    return pretty[names[0]]


def _secs(seconds: float) -> str:
    return f"{seconds:.1f} s" if seconds >= 10 else f"{seconds:.2f} s"


def _losses(expected: int, received: int, duplicates: int) -> str:
    text = "none lost" if received >= expected else f"{count(expected - received)} LOST"
    if duplicates:
        text += f", {count(duplicates)} duplicates"
    return text


def measure(ctx: Context, names: tuple[str, ...]) -> list[Row]:
    """The flat-out row and the backlog row of one output (or of all three together)."""
    label = _label(names)
    target = TARGETS.get(names[0]) if len(names) == 1 else None
    ctx.progress(
        f"{label}: {ctx.options.flat_out_writers} writers flat out for {ctx.options.seconds:g} s"
    )
    flat = flat_out(ctx, names)
    ctx.progress(f"{label}: {rate(flat.delivered_rate)} delivered while writing")
    backlog = drain(ctx, names, ctx.options.backlog)
    ctx.progress(f"{label}: backlog drained at {rate(backlog.rate)}")

    bound = " (bound by the writers)" if flat.delivered_rate >= 0.95 * flat.committed_rate else ""
    flat_result = (
        f"{rate(flat.delivered_rate)} while writers committed "
        f"{rate(flat.committed_rate, '/s')}{bound}; {count(flat.expected)} events, "
        f"{_losses(flat.expected, flat.received, flat.duplicates)}"
    )
    drain_result = (
        f"{rate(backlog.rate)} ({count(backlog.events)} in {_secs(backlog.seconds)}, "
        f"{_secs(backlog.from_start)} from process start; "
        f"{_losses(backlog.events, backlog.received, backlog.duplicates)}; "
        f"bridge {backlog.cpu_per_10k:.2f} CPU-s per 10,000 events, "
        f"peak {backlog.peak_mb:.0f} MiB)"
    )
    flat_figure = f"{label}: events/s, {ctx.options.flat_out_writers} writers inserting flat out"
    drain_figure = f"{label}: events/s draining a {count(backlog.events)}-event backlog"
    rows = []
    if names == ("webhook",) and target is not None:
        # Skor's peak was measured with writers running, so the flat-out figure counts too.
        goal = f">= {target:,.0f} events/s, none lost"
        rows.append(
            Row(
                flat_figure,
                flat_result,
                goal,
                verdict(flat.delivered_rate >= target and flat.lost == 0),
            )
        )
    else:
        rows.append(Row(flat_figure, flat_result))
    if target is not None:
        goal = f">= {target:,.0f} events/s, none lost"
        rows.append(
            Row(
                drain_figure,
                drain_result,
                goal,
                verdict(backlog.rate >= target and backlog.lost == 0),
            )
        )
    else:
        rows.append(Row(drain_figure, drain_result))
    return rows
