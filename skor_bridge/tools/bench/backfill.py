"""Backfill: `skor-bridge backfill` of the scratch table to the webhook, with paced writers.

The table gets its rows (ids 1..N) before capture is installed, so only the backfill sends
them. The bridge runs with the webhook; paced writers insert at WRITER_RATE, first for
`--seconds` without a backfill, then while `skor-bridge backfill` runs as its own process
(as users run it), from its start until the receiver holds a READ of every row. The rate
figure is N over that time; the writers' figure compares their achieved rate and commit
latency in the two windows. (The command also sends the rows the writers inserted before
it reached them, as a backfill should, and so ends a little after that moment.)

Why paced writers: on a small machine PostgreSQL, the bridge, the receiver and the writers
share the cores, so writers inserting flat out lose throughput to any other work, a backfill
or not. Writers at a fixed rate (what an application's traffic is) show what a backfill
costs them: whether they keep their rate, and how much longer each commit takes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import TYPE_CHECKING

from skor_bridge.tools.bench.bridge_proc import cpu_seconds, stop_process
from skor_bridge.tools.bench.footprint import Backends
from skor_bridge.tools.bench.latency import percentile
from skor_bridge.tools.bench.report import Row, count, rate, verdict
from skor_bridge.tools.bench.scratch import TABLE
from skor_bridge.tools.bench.throughput import STALL_TIMEOUT, start_bridge
from skor_bridge.tools.bench.writers import PacedWriters

if TYPE_CHECKING:
    from skor_bridge.tools.bench.context import Context
    from skor_bridge.tools.bench.writers import PacedRun

#: Rows per second the backfill must reach to the webhook (issue 12).
RATE_TARGET = 10_000

#: The writers beside it: this many processes inserting this many rows per second in all.
WRITER_PROCESSES = 4
WRITER_RATE = 500

#: "Not slowed by more than 10%": the writers' achieved rate during the backfill at least
#: this share of their rate without it.
WRITER_SHARE = 0.90

POLL = 0.005

#: Seconds the command gets, once the writers stopped, to catch up with their rows.
COMMAND_GRACE = 120.0

#: Seconds between looks at the bridge's and the command's PostgreSQL sessions' CPU.
SAMPLE = 0.5


def _writers(ctx: Context) -> PacedWriters:
    return PacedWriters(ctx.db.dsn, TABLE, WRITER_RATE, WRITER_PROCESSES)


def _baseline(ctx: Context) -> tuple[float, list[float]]:
    ctx.progress(
        f"backfill: {WRITER_RATE} writes/s from {WRITER_PROCESSES} writers for "
        f"{ctx.options.seconds:g} s, no backfill"
    )
    writers = _writers(ctx)
    try:
        start = writers.start()
        time.sleep(max(0.0, start - time.time()) + ctx.options.seconds)
        end = time.time()
        run = writers.stop()
    finally:
        writers.close()
    return run.window(start, end)


def _start_backfill(ctx: Context) -> subprocess.Popen[bytes]:
    env = {**os.environ, "SKOR_DSN": ctx.db.dsn}
    with ctx.log_path("backfill-command").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "skor_bridge", "backfill", "--table", TABLE],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def _finish(command: subprocess.Popen[bytes]) -> int | None:
    """The command's exit code; None when it was still running after COMMAND_GRACE s (then
    stopped). It also reads the rows the writers inserted while it ran (as it should: they
    exist), so it ends a little after the table's first rows have all arrived."""
    try:
        return command.wait(COMMAND_GRACE)
    except subprocess.TimeoutExpired:
        stop_process(command, 5)
        return None


def _micros(seconds: float, events: int) -> str:
    return f"{seconds / max(events, 1) * 1e6:.0f} us"


def _summary(done: float, latencies: list[float]) -> str:
    return (
        f"{rate(done, 'writes/s')}, commit p50 {percentile(latencies, 0.5):.1f} ms, "
        f"p99 {percentile(latencies, 0.99):.1f} ms"
    )


def measure(ctx: Context) -> list[Row]:
    rows_n = ctx.options.backfill_table_rows
    ctx.progress(f"backfill: a table of {count(rows_n)} rows written before capture")
    ctx.db.fresh_with_existing_rows(rows_n)
    ctx.receiver.reset()
    bridge = start_bridge(ctx, [ctx.webhook], "webhook-backfill")
    command: subprocess.Popen[bytes] | None = None
    writers = _writers(ctx)
    try:
        bridge.wait_ready(1)
        base_rate, base_latencies = _baseline(ctx)
        ctx.receiver.watch(rows_n)
        ctx.progress(f"backfill: sending {count(rows_n)} rows while {WRITER_RATE} writes/s go on")
        first_write = writers.start()
        time.sleep(max(0.0, first_write - time.time()) + 0.5)  # writers at their pace
        backends = Backends(ctx.db.dsn).start()
        bridge_cpu, receiver_cpu = bridge.cpu_seconds(), cpu_seconds(ctx.receiver.pid)
        events_before = ctx.receiver.count
        started = time.time()
        command = _start_backfill(ctx)
        finished, seen, last_change, sampled = None, -1, time.monotonic(), 0.0
        while finished is None:
            got = ctx.receiver.below
            now = time.monotonic()
            if got >= rows_n:
                finished = time.time()
            elif got != seen:
                seen, last_change = got, now
            elif now - last_change > STALL_TIMEOUT or not bridge.alive():
                break
            if now - sampled > SAMPLE:  # sessions come and go: the command's among them
                backends.sample()
                sampled = now
            time.sleep(POLL)
        end = finished or time.time()
        bridge_used = bridge.cpu_seconds() - bridge_cpu
        receiver_used = cpu_seconds(ctx.receiver.pid) - receiver_cpu
        sessions_used = backends.used()
        events = ctx.receiver.count - events_before
        run: PacedRun = writers.stop()
        exit_code = _finish(command)
    finally:
        writers.close()
        stop_process(command, 5)
        bridge.stop()
    received = ctx.receiver.below
    elapsed = end - started
    during_rate, during_latencies = run.window(started, end)
    backfill_rate = rows_n / elapsed if finished else 0.0
    if exit_code is None:
        ctx.notes.append(
            f"backfill: the command, still reading rows the writers inserted meanwhile, was "
            f"stopped {COMMAND_GRACE:g} s after the last of the {count(rows_n)} rows arrived."
        )
    if finished is None or exit_code not in (0, None):
        ctx.notes.append(
            f"backfill: did not complete ({count(received)} of {count(rows_n)} READ events "
            f"arrived, command exit code {exit_code}); see the logs in {ctx.workdir}"
        )
    ctx.progress(
        f"backfill: {rate(backfill_rate, 'rows/s')}; writers "
        f"{_summary(during_rate, during_latencies)} (without: "
        f"{_summary(base_rate, base_latencies)})"
    )
    share = during_rate / base_rate if base_rate else 0.0
    lost = max(0, rows_n - received)
    return [
        Row(
            f"backfill: rows/s to the webhook, {count(rows_n)} rows, while writers insert "
            f"{WRITER_RATE} rows/s",
            f"{rate(backfill_rate, 'rows/s')} ({count(rows_n)} READ events in "
            f"{elapsed:.1f} s, from the command's start until the receiver had every row; "
            f"{'none lost' if not lost else f'{count(lost)} LOST'}; per event delivered "
            f"meanwhile ({count(events)}, the writers' included): bridge "
            f"{_micros(bridge_used, events)}, receiver {_micros(receiver_used, events)}, "
            f"PostgreSQL sessions of the bridge and the command "
            f"{_micros(sessions_used, events)} of CPU)",
            f">= {RATE_TARGET:,} rows/s, none lost",
            verdict(backfill_rate >= RATE_TARGET and lost == 0),
        ),
        Row(
            f"backfill: {WRITER_PROCESSES} paced writers at {WRITER_RATE} rows/s, during "
            "the backfill vs without",
            f"{share:.2f} × the rate without: {_summary(during_rate, during_latencies)} "
            f"during; {_summary(base_rate, base_latencies)} without",
            f">= {WRITER_SHARE:.2f} × the rate without",
            verdict(share >= WRITER_SHARE),
        ),
    ]
