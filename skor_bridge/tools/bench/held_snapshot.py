"""`python -m skor_bridge.tools.bench.held_snapshot`: what a long transaction costs capture.

A session holds a snapshot (REPEATABLE READ, one SELECT, left open) while one writer inserts
rows one by one, each committed, at `--rate` per second for `--seconds`; a bridge in durable
mode delivers them to a local receiver. Printed: the CPU time of the sequencer's database
backend (application_name like 'skor-bridge%sequencer%', from /proc/<pid>/stat) per event,
over the whole run and per stretch of the run, so that a cost growing with the snapshot's
age shows; the outbox's dead rows and size at the end. `--no-snapshot` is the baseline.
Needs to run on the database's machine (it reads the backend's /proc entry).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import psycopg2

from skor_bridge.tools.bench.bridge_proc import cpu_seconds, stop_process
from skor_bridge.tools.bench.receiver import FastReceiver
from skor_bridge.tools.bench.scratch import TABLE, ScratchDatabase

_SEQUENCER = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name LIKE 'skor-bridge%sequencer%'"
)


def _wait_for(db: ScratchDatabase, query: str, timeout: float = 60.0) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = db.scalar(query)
        if isinstance(value, int):
            return value
        time.sleep(0.2)
    raise RuntimeError(f"no answer to {query!r} within {timeout:.0f}s")


def run(admin_dsn: str, rate: int, seconds: float, snapshot: bool, config: str | None) -> None:
    total = int(rate * seconds)
    receiver = FastReceiver().start()
    bridge: subprocess.Popen[bytes] | None = None
    with ScratchDatabase(admin_dsn) as db:
        try:
            db.capture("durable")
            log = Path(f"/tmp/held-snapshot-{db.name}.log")
            args = ["--dsn", db.dsn, "--webhook", f"hook={receiver.url}"]
            args += ["--config", config] if config else []
            with log.open("wb") as out:
                bridge = subprocess.Popen(
                    [sys.executable, "-m", "skor_bridge", "run", *args], stdout=out, stderr=out
                )
            backend = _wait_for(db, _SEQUENCER)
            report = psycopg2.connect(db.dsn)
            report.set_session(isolation_level="REPEATABLE READ")
            if snapshot:
                with report.cursor() as cur:
                    cur.execute("SELECT count(*) FROM pg_class")
            writer = psycopg2.connect(db.dsn)
            writer.autocommit = True
            stretches: list[tuple[int, float]] = []
            began_cpu, began = cpu_seconds(backend), time.monotonic()
            with writer.cursor() as cur:
                for i in range(total):
                    pause = began + i / rate - time.monotonic()
                    if pause > 0:
                        time.sleep(pause)
                    cur.execute(
                        f"INSERT INTO {TABLE} (customer, amount, status) VALUES (%s, 1, 'new')",
                        (i,),
                    )
                    if (i + 1) % (total // 5) == 0:
                        stretches.append((i + 1, cpu_seconds(backend) - began_cpu))
            wall = time.monotonic() - began
            _wait_for(db, f"SELECT 1 WHERE (SELECT next_pos - 1 FROM skor.sequencer) >= {total}")
            used = cpu_seconds(backend) - began_cpu
            dead = db.integer("SELECT pg_stat_get_dead_tuples('skor.outbox'::regclass)")
            size = db.integer("SELECT pg_total_relation_size('skor.outbox')")
            print(
                f"{'held snapshot' if snapshot else 'no snapshot'}: {total} events in "
                f"{wall:.0f}s ({total / wall:.0f}/s); sequencer backend {used:.2f} CPU-s = "
                f"{used / total * 1e6:.0f} us/event ({used / wall * 100:.1f}% of a core); "
                f"outbox at the end: {dead} dead rows, {size // 1024} kB; "
                f"{log.read_text().count('compacted the outbox')} 'compacted' line(s)"
            )
            last_events, last_cpu = 0, 0.0
            for events, cpu in stretches:
                per = (cpu - last_cpu) / (events - last_events) * 1e6
                print(f"  events {last_events + 1}-{events}: {per:.0f} us/event")
                last_events, last_cpu = events, cpu
            report.close()
            writer.close()
        finally:
            stop_process(bridge, 30)
            receiver.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 user=postgres dbname=postgres")
    parser.add_argument("--rate", type=int, default=200, help="rows inserted per second")
    parser.add_argument("--seconds", type=float, default=200.0)
    parser.add_argument("--no-snapshot", action="store_true", help="the baseline")
    parser.add_argument("--config", help="a skor.toml for the bridge (outbox_compact_after...)")
    options = parser.parse_args()
    run(options.dsn, options.rate, options.seconds, not options.no_snapshot, options.config)


if __name__ == "__main__":
    main()
