"""WAL capture next to trigger capture, on a server with wal_level=logical.

The machine's server may not have `wal_level = logical`, so this section runs on its own
server: a throwaway embedded PostgreSQL (fsync on, default settings otherwise) or the one
`--wal-dsn` names. Every figure here that compares modes was measured on that same server,
interleaved, so the ratios hold even though its absolute numbers differ from the main
section's:
- write cost: single-row INSERTs with no capture, trigger capture and WAL capture
  installed, no bridge running;
- capture rate: a backlog written with the bridge stopped, then the time until it is all
  in skor.log (the outbox sequencer in trigger mode, the slot reader in WAL mode);
- end to end (webhook, and Kafka when available) and latency at the fixed rate, WAL mode.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING

from skor_bridge.capture import triggers
from skor_bridge.capture.wal import install as wal_install
from skor_bridge.tools.bench import latency, throughput
from skor_bridge.tools.bench.context import Context
from skor_bridge.tools.bench.logical_pg import LogicalServer
from skor_bridge.tools.bench.report import Row, count, rate, verdict
from skor_bridge.tools.bench.scratch import TABLE, ScratchDatabase
from skor_bridge.tools.bench.writers import Writers, insert_backlog

if TYPE_CHECKING:
    from skor_bridge.tools.bench.writers import WriteRun

#: WAL capture's write-cost target: this share of no-capture throughput with N writers.
WRITE_TARGET = 0.95
#: Capture rate target of the backlog into skor.log.
CAPTURE_TARGET = 20_000

MODES = ("none", "durable", "wal")
LABELS = {"none": "no capture", "durable": "trigger capture", "wal": "WAL capture"}


class WalScratch(ScratchDatabase):
    """A scratch database whose bridge phases use `mode`'s capture ("wal" or "durable")."""

    mode = "wal"

    def capture(self, mode: str) -> None:
        wal_install.uninstall(self.dsn)
        if mode == "wal":
            triggers.uninstall(self.dsn)
            wal_install.install(self.dsn, [self._spec])
        else:
            super().capture(mode)

    def fresh_bridge_state(self) -> None:
        wal_install.uninstall(self.dsn)
        triggers.uninstall(self.dsn, purge=True)
        self.execute(f"TRUNCATE {TABLE}")
        self.capture(self.mode)
        self.execute("VACUUM ANALYZE")
        self.checkpoint()

    def drop(self) -> None:
        if self.created:
            with contextlib.suppress(Exception):
                wal_install.uninstall(self.dsn)  # a slot pins its database
        super().drop()


def measure(main: Context, stack: contextlib.ExitStack) -> list[Row]:
    options, progress = main.options, main.progress
    admin = options.wal_dsn
    if admin is None:
        progress("WAL mode: starting a throwaway PostgreSQL with wal_level=logical")
        server = LogicalServer()
        stack.callback(server.stop)
        admin = server.start().dsn
    db = WalScratch(admin)
    stack.callback(db.drop)
    db.create()
    writers = Writers(db.dsn, TABLE, main.writers.pgbench)
    stack.callback(writers.close)
    ctx = Context(
        options, db, writers, main.receiver, main.workdir, progress, main.webhook, kafka=main.kafka
    )
    version = db.server_version()
    rows = _write_cost(ctx)
    events = 1_000_000 if options.big_backlog else options.backlog
    rates = {}
    for mode in ("durable", "wal"):
        db.mode = mode
        rates[mode] = _capture_rate(ctx, db, events)
    rows.append(
        Row(
            f"WAL mode: capture rate of a {count(events)}-change backlog into skor.log",
            f"{rate(rates['wal'], 'changes/s')} (trigger mode's sequencer on the same "
            f"server: {rate(rates['durable'], 'changes/s')})",
            f">= {CAPTURE_TARGET:,} changes/s",
            verdict(rates["wal"] >= CAPTURE_TARGET),
        )
    )
    db.mode = "wal"
    for names in (("webhook",), ("kafka",)):
        if names == ("kafka",) and ctx.kafka is None:
            continue
        if options.runs(names[0]):
            rows += [_relabel(row) for row in throughput.measure(ctx, names)]
    db.mode = "durable"
    if options.runs("webhook"):
        flat = throughput.flat_out(ctx, ("webhook",))
        rows.append(
            Row(
                f"trigger mode on the same server: webhook, "
                f"{options.flat_out_writers} writers inserting flat out",
                f"{rate(flat.delivered_rate)} while writers committed "
                f"{rate(flat.committed_rate, '/s')}",
            )
        )
    db.mode = "wal"
    if options.runs("latency"):
        rows += [_relabel(row) for row in latency.measure(ctx)]
    if options.runs("database"):
        from skor_bridge.tools.bench import footprint

        rows += footprint.measure(ctx, "WAL mode, its own server")
    where = "--wal-dsn" if options.wal_dsn else "a throwaway embedded PostgreSQL"
    main.notes.append(
        f"WAL mode rows: measured on {where} (PostgreSQL {version}, wal_level=logical, fsync "
        "on) on this machine; modes compared there were run on that server, interleaved."
    )
    return rows


def _head(db: WalScratch) -> int:
    value = db.scalar("SELECT next_pos - 1 FROM skor.sequencer")
    return int(value) if isinstance(value, int) else 0


def _relabel(row: Row) -> Row:
    return Row(f"WAL mode: {row.figure}", row.result, row.target, row.verdict)


def _write_cost(ctx: Context) -> list[Row]:
    options = ctx.options
    runs: dict[str, list[WriteRun]] = {mode: [] for mode in MODES}
    for round_no in range(1, options.rounds + 1):
        for mode in MODES:
            ctx.db.capture(mode)
            ctx.db.empty_for_write_run()
            run = ctx.writers.run(options.writers, options.seconds)
            runs[mode].append(run)
            ctx.progress(
                f"WAL mode write cost, round {round_no}/{options.rounds}: "
                f"{LABELS[mode]}: {rate(run.tps, 'tps')}"
            )
    ctx.db.capture("none")

    def tps(mode: str) -> float:
        seconds = sum(r.seconds for r in runs[mode])
        return sum(r.committed for r in runs[mode]) / seconds if seconds else 0.0

    base = tps("none")
    rows = []
    for mode in ("durable", "wal"):
        ratio = tps(mode) / base if base else 0.0
        figure = (
            f"WAL-mode server: INSERT throughput, {options.writers} writers, "
            f"{LABELS[mode]} installed, no bridge"
        )
        result = f"{rate(tps(mode), 'tps')} = {ratio:.2f} × no capture ({rate(base, 'tps')})"
        if mode == "wal":
            rows.append(
                Row(
                    figure,
                    result,
                    f">= {WRITE_TARGET:.2f} × no capture",
                    verdict(ratio >= WRITE_TARGET),
                )
            )
        else:
            rows.append(Row(figure, result))
    return rows


def _capture_rate(ctx: Context, db: WalScratch, events: int) -> float:
    """Changes per second from the bridge being ready until all are in skor.log."""
    db.fresh_bridge_state()
    ctx.receiver.reset()
    ctx.progress(f"capture rate ({db.mode}): inserting {count(events)} rows, bridge stopped")
    insert_backlog(db.dsn, TABLE, events)
    bridge = throughput.start_bridge(ctx, [ctx.webhook], f"capture-{db.mode}")
    try:
        bridge.wait_ready(1)
        started = time.monotonic()
        while _head(db) < events:
            if not bridge.alive() or time.monotonic() - started > 600:
                raise RuntimeError(f"capture did not finish:\n{bridge.log_tail()}")
            time.sleep(0.01)
        elapsed = time.monotonic() - started
    finally:
        bridge.stop()
    result = events / elapsed if elapsed > 0 else 0.0
    ctx.progress(f"capture rate ({db.mode}): {rate(result, 'changes/s')}")
    return result
