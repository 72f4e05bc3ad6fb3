"""Load on the scratch table: flat-out writers (pgbench, else Python processes), a paced
writer that notes each commit's time, and the fast backlog insert.

Every write is one single-row INSERT in its own transaction (autocommit), the shape that
pays the most per row for a trigger.
"""

from __future__ import annotations

import array
import multiprocessing
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg2
import psycopg2.extensions

from skor_bridge.tools.bench.bridge_proc import stop_process

if TYPE_CHECKING:
    from collections.abc import Callable
    from multiprocessing.connection import Connection

#: The bench table's INSERT, as pgbench runs it (:c is a random customer) and as Python does.
PGBENCH_SCRIPT = """\
\\set c random(1, 100000)
INSERT INTO {table} (customer, amount, status, note) VALUES (:c, :c * 0.01, 'new', 'benchmark row');
"""
PY_INSERT = (
    "INSERT INTO {table} (customer, amount, status, note)"
    " VALUES (%s, %s * 0.01, 'new', 'benchmark row')"
)

#: Rows per transaction of the backlog insert; each row still fires the row trigger.
BACKLOG_CHUNK = 10_000

_PROCESSED = re.compile(r"number of transactions actually processed: (\d+)")


@dataclass(frozen=True)
class WriteRun:
    """Transactions committed by all writers and the seconds they ran."""

    committed: int
    seconds: float

    @property
    def tps(self) -> float:
        return self.committed / self.seconds if self.seconds > 0 else 0.0


def pgbench_path() -> str | None:
    return shutil.which("pgbench")


def _libpq_env(dsn: str) -> tuple[str, dict[str, str]]:
    """The DSN without its password, and an environment carrying it, so that the password
    never shows on a command line (ps)."""
    params = psycopg2.extensions.parse_dsn(dsn)
    env = dict(os.environ)
    password = params.pop("password", None)
    if password:
        env["PGPASSWORD"] = password
    return " ".join(f"{k}='{_quote(v)}'" for k, v in params.items()), env


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


class Writers:
    """Runs `clients` writers for a number of seconds; pgbench when given its path."""

    def __init__(self, dsn: str, table: str, pgbench: str | None) -> None:
        self.dsn = dsn
        self.table = table
        self.pgbench = pgbench
        self._script: str | None = None
        self.current: subprocess.Popen[str] | None = None

    @property
    def kind(self) -> str:
        return "pgbench" if self.pgbench else "Python writer processes (psycopg2)"

    def run(
        self, clients: int, seconds: float, on_start: Callable[[], None] | None = None
    ) -> WriteRun:
        """Write for `seconds`; `on_start` is called the moment the writers start."""
        if self.pgbench:
            return self._run_pgbench(clients, seconds, on_start)
        return run_python_writers(self.dsn, self.table, clients, seconds, on_start)

    def _run_pgbench(
        self, clients: int, seconds: float, on_start: Callable[[], None] | None
    ) -> WriteRun:
        assert self.pgbench is not None
        if self._script is None:
            handle, self._script = tempfile.mkstemp(prefix="skor-bench-", suffix=".sql")
            with os.fdopen(handle, "w") as script:
                script.write(PGBENCH_SCRIPT.format(table=self.table))
        conninfo, env = _libpq_env(self.dsn)
        # -T takes whole seconds; -n: the scratch table needs no vacuum of pgbench's tables.
        whole = max(1, round(seconds))
        command = [
            self.pgbench,
            "-n",
            "-M",
            "prepared",
            "-c",
            str(clients),
            "-j",
            str(min(clients, 2)),
            "-T",
            str(whole),
            "-f",
            self._script,
            conninfo,
        ]
        if on_start is not None:
            on_start()
        # Its own session: a Ctrl-C reaches only the benchmark, which stops pgbench itself.
        process = self.current = subprocess.Popen(
            command,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
        try:
            out, err = process.communicate(timeout=whole + 60)
        finally:
            self.stop()
        processed = _PROCESSED.search(out)
        if process.returncode != 0 or processed is None:
            raise RuntimeError(f"pgbench failed: {(err or out).strip().splitlines()[-1:]}")
        return WriteRun(int(processed[1]), float(whole))

    def stop(self) -> None:
        process, self.current = self.current, None
        stop_process(process, 5)

    def close(self) -> None:
        self.stop()
        if self._script is not None:
            os.unlink(self._script)
            self._script = None


# -- Python writers --------------------------------------------------------------------------


def _flat_out(dsn: str, table: str, start: Any, seconds: float, result: Connection) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    sql = PY_INSERT.format(table=table)
    count = 0
    with conn.cursor() as cur:
        start.wait()
        deadline = time.monotonic() + seconds
        customer = os.getpid()
        while time.monotonic() < deadline:
            cur.execute(sql, (customer % 100_000, customer % 100_000))
            count += 1
            customer += 7919
    conn.close()
    result.send(count)


def run_python_writers(
    dsn: str, table: str, clients: int, seconds: float, on_start: Callable[[], None] | None = None
) -> WriteRun:
    context = multiprocessing.get_context("spawn")
    start = context.Event()
    pipes, processes = [], []
    for _ in range(clients):
        parent, child = context.Pipe()
        process = context.Process(
            target=_flat_out, args=(dsn, table, start, seconds, child), daemon=True
        )
        process.start()
        pipes.append(parent)
        processes.append(process)
    try:
        time.sleep(0.5)  # connected and waiting (spawned interpreters start slowly)
        if on_start is not None:
            on_start()
        start.set()
        committed = 0
        for pipe in pipes:
            if not pipe.poll(seconds + 60):
                raise RuntimeError("a Python writer did not finish")
            committed += int(pipe.recv())
        return WriteRun(committed, seconds)
    finally:
        for process in processes:
            process.join(5)
            if process.is_alive():
                process.terminate()


# -- paced writers (latency, database cost, the slow receiver, backfill) -------------------------


def _paced(
    dsn: str,
    table: str,
    rate: float,
    offset: float,
    seconds: float | None,
    stop: Any,
    result: Connection,
) -> None:
    """One writer process: single-row INSERTs at `rate`, from the start time it is sent once
    connected, until `seconds` of its schedule have passed (None: until `stop` is set).
    Sends back each row's id, when it was due and when its commit returned."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    sql = PY_INSERT.format(table=table) + " RETURNING id"
    result.send("ready")  # connected: the schedule starts when every writer is
    start_at = float(result.recv())
    ids, dues, commits = array.array("q"), array.array("d"), array.array("d")
    with conn.cursor() as cur:
        i = 0
        while not stop.is_set():
            due = start_at + offset + i / rate
            if seconds is not None and due >= start_at + seconds:
                break
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            cur.execute(sql, (i % 100_000, i % 100_000))
            # Autocommit: the row is committed once execute() returns.
            committed = time.time()
            row = cur.fetchone()
            assert row is not None
            ids.append(int(row[0]))
            dues.append(due)
            commits.append(committed)
            i += 1
    conn.close()
    result.send((ids.tobytes(), dues.tobytes(), commits.tobytes()))


@dataclass(frozen=True)
class PacedRun:
    """Each write's row id, when it was due (its schedule) and when its commit returned
    (epoch seconds), in the order they were due. Latency counted from the due time shows a
    writer that falls behind its schedule (no coordinated omission)."""

    ids: list[int]
    dues: list[float]
    commits: list[float]

    def commit_times(self) -> dict[int, float]:
        return dict(zip(self.ids, self.commits, strict=True))

    def window(self, start: float, end: float) -> tuple[float, list[float]]:
        """(commits per second in [start, end), sorted latencies in ms of the writes due
        in it)."""
        done = sum(1 for at in self.commits if start <= at < end)
        latencies = sorted(
            (c - d) * 1000 for d, c in zip(self.dues, self.commits, strict=True) if start <= d < end
        )
        return done / max(end - start, 1e-9), latencies


class PacedWriters:
    """`processes` writers inserting `rate` rows per second in total, staggered so one slow
    round trip does not delay the rows behind it, from `start()` for `seconds` (then
    `finish()`), or until `stop()` when `seconds` is None."""

    def __init__(
        self, dsn: str, table: str, rate: float, processes: int, seconds: float | None = None
    ) -> None:
        self.dsn, self.table, self.rate, self.processes = dsn, table, rate, processes
        self.seconds = seconds
        context = multiprocessing.get_context("spawn")
        self._stop = context.Event()
        self._context = context
        self._pipes: list[Connection] = []
        self._children: list[Any] = []
        self.started_at = 0.0

    def start(self) -> float:
        """Start the writers, connected; returns the epoch time of the first write."""
        for n in range(self.processes):
            parent, child = self._context.Pipe()
            process = self._context.Process(
                target=_paced,
                daemon=True,
                args=(
                    self.dsn,
                    self.table,
                    self.rate / self.processes,
                    n / self.rate,
                    self.seconds,
                    self._stop,
                    child,
                ),
            )
            process.start()
            self._pipes.append(parent)
            self._children.append(process)
        for pipe in self._pipes:
            if not pipe.poll(60):
                raise RuntimeError("a paced writer did not start")
            pipe.recv()
        self.started_at = time.time() + 0.05
        for pipe in self._pipes:
            pipe.send(self.started_at)
        return self.started_at

    def stop(self) -> PacedRun:
        """Stop now and collect what was written."""
        self._stop.set()
        return self.finish()

    def finish(self) -> PacedRun:
        """Collect what was written once the writers end (their schedule, or `stop`)."""
        rows: list[tuple[float, int, float]] = []
        try:
            for pipe in self._pipes:
                if not pipe.poll((self.seconds or 0) + 60):
                    raise RuntimeError("a paced writer did not finish")
                raw_ids, raw_dues, raw_commits = pipe.recv()
                ids, dues, commits = array.array("q"), array.array("d"), array.array("d")
                ids.frombytes(raw_ids)
                dues.frombytes(raw_dues)
                commits.frombytes(raw_commits)
                rows.extend(zip(dues, ids, commits, strict=True))
        finally:
            self.close()
        rows.sort()
        return PacedRun([i for _, i, _ in rows], [d for d, _, _ in rows], [c for _, _, c in rows])

    def close(self) -> None:
        self._stop.set()
        for process in self._children:
            process.join(5)
            if process.is_alive():
                process.terminate()
        self._pipes, self._children = [], []


def run_paced(
    dsn: str,
    table: str,
    rate: float,
    seconds: float,
    processes: int = 2,
    on_start: Callable[[], None] | None = None,
) -> dict[int, float]:
    """Insert at `rate` rows per second in total for `seconds`; return row id -> the time
    (epoch seconds) its commit returned. `on_start` is called as the schedule starts."""
    writers = PacedWriters(dsn, table, rate, processes, seconds)
    try:
        writers.start()
        if on_start is not None:
            on_start()
        return writers.finish().commit_times()
    finally:
        writers.close()


# -- the backlog --------------------------------------------------------------------------------


def insert_backlog(
    dsn: str, table: str, rows: int, progress: Callable[[int], None] | None = None
) -> None:
    """Insert `rows` rows in transactions of BACKLOG_CHUNK; the row triggers fire for each."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            done = 0
            while done < rows:
                chunk = min(BACKLOG_CHUNK, rows - done)
                cur.execute(
                    f"INSERT INTO {table} (customer, amount, status, note)"
                    " SELECT g %% 100000, (g %% 100000) * 0.01, 'new', 'benchmark row'"
                    " FROM generate_series(1, %s) AS g",
                    (chunk,),
                )
                done += chunk
                if progress is not None:
                    progress(done)
    finally:
        conn.close()
