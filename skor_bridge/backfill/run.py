"""One backfill: the table's rows, chunk by chunk in primary-key order, into the outbox.

Each chunk is ONE statement, hence one snapshot and one transaction: it notes the log head
(the watermark), reads up to `chunk_size` rows after the last key sent, inserts a READ row
per table row into `skor.outbox`, and records the new last key in `skor.backfills`. A kill
at any moment therefore loses nothing and repeats nothing: the next run continues after
the last chunk that committed. READ event ids are derived from the backfill's id and the
row key, so even a chunk sent twice (a backfill started over with `skor.backfills` edited
by hand) repeats the same ids.

The running bridge's sequencer moves the READ rows into the log like any captured change
(see `watermark` for why that keeps every row's last event equal to the table). The next
chunk waits until at most one chunk is still in the outbox: the bridge sets the pace, the
outbox stays small, and so does the log range the sequencer checks.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg2

from skor_bridge.backfill.table import Table, resolve
from skor_bridge.capture.schema import ensure_schema
from skor_bridge.capture.sequencer import ensure_partitions
from skor_bridge.config import check_dsn
from skor_bridge.db import connect, describe
from skor_bridge.errors import ConfigError, DatabaseError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from psycopg2.extensions import connection, cursor

#: First key of the session advisory lock held while a table is backfilled ("skbf"); the
#: second is hashtext of the table's name. `status` looks for it in pg_locks.
LOCK_CLASS = 0x736B6266
LOCK_KEY = "hashtext(format('%%I.%%I', %s, %s))"

#: Positions per log partition this command creates in WAL mode when the log needs one
#: (the bridge's default; partitions of another size next to them are harmless).
PARTITION_SIZE = 100_000

_EVENT_ID = "md5(%(install_id)s || '.read.' || %(backfill)s || '.' || row_key)::uuid"

#: Seconds without progress of the bridge before the command says what it waits for.
WAIT_NOTICE = 5.0


@dataclass
class Progress:
    backfill: int
    table: str
    outputs: tuple[str, ...]
    rows_sent: int
    rows_total: int
    resumed: bool = False
    finished: bool = False


@dataclass(frozen=True)
class Request:
    dsn: str
    schema: str
    table: str
    outputs: tuple[str, ...] = ()
    chunk_size: int = 1000

    def __post_init__(self) -> None:
        if self.chunk_size < 1:
            raise ConfigError(f"chunk-size: must be at least 1, got {self.chunk_size}")


def backfill(
    request: Request,
    report: Callable[[Progress], None] = lambda _: None,
    waiting: Callable[[str], None] = lambda _: None,
    stop: threading.Event | None = None,
) -> Progress:
    """Send every row of the table as a READ event; returns the final progress.

    `report` is called after every chunk, `waiting` once when the bridge seems absent.
    Raises ConfigError for a table that cannot be backfilled, DatabaseError otherwise.
    """
    check_dsn(request.dsn)
    conn = connect(request.dsn, "backfill", autocommit=True)
    try:
        with conn.cursor() as cur:
            return _run(conn, cur, request, report, waiting, stop or threading.Event())
    except psycopg2.Error as exc:
        raise DatabaseError(f"backfill: {describe(exc)}") from None
    finally:
        conn.close()  # also releases the advisory lock


def _run(
    conn: connection,
    cur: cursor,
    request: Request,
    report: Callable[[Progress], None],
    waiting: Callable[[str], None],
    stop: threading.Event,
) -> Progress:
    table = resolve(cur, request.schema, request.table)
    cur.execute(
        f"SELECT pg_try_advisory_lock({LOCK_CLASS}, {LOCK_KEY})", (table.schema, table.name)
    )
    if not _first(cur):
        raise ConfigError(f"table: a backfill of {table} is already running")
    cur.execute("BEGIN")  # the migrations apply whole or not at all
    ensure_schema(cur)
    cur.execute("COMMIT")
    outputs = _check_outputs(cur, request.outputs)
    progress = _start(cur, table, outputs)
    report(progress)
    cur.execute("SELECT value FROM skor.meta WHERE key = 'install_id'")
    install_id = str(_first(cur))
    first, following = _chunk_sql(table, False), _chunk_sql(table, True)
    params = {
        "schema": table.schema,
        "table": table.name,
        "install_id": install_id,
        "backfill": progress.backfill,
        "outputs": list(outputs) or None,
        "limit": request.chunk_size,
    }
    while not progress.finished and not stop.is_set():
        sql = following if progress.rows_sent else first
        if table.mode == "wal":
            row = _send_to_log(cur, sql, params)
        else:
            _wait_for_bridge(cur, request.chunk_size, waiting, stop)
            cur.execute(sql, params)
            row = cur.fetchone()
        assert row is not None
        progress.rows_sent, progress.finished = int(row[0]), row[1] == "finished"
        report(progress)
    return progress


def _check_outputs(cur: cursor, names: Sequence[str]) -> tuple[str, ...]:
    wanted = sorted(set(names))
    if not wanted:
        return ()
    cur.execute("SELECT name FROM skor.outputs ORDER BY name")
    known = [str(name) for (name,) in cur.fetchall()]
    for name in wanted:
        if name not in known:
            raise ConfigError(
                f"output: no output named {name!r} (known: {', '.join(known) or 'none yet'})"
            )
    return tuple(wanted)


def _start(cur: cursor, table: Table, outputs: tuple[str, ...]) -> Progress:
    """Continue the unfinished backfill of (table, outputs), or record a new one."""
    key = (table.schema, table.name, list(outputs))
    cur.execute(
        "SELECT id, rows_sent, rows_total FROM skor.backfills WHERE schema_name = %s"
        " AND table_name = %s AND outputs = %s::text[] AND status = 'running'",
        key,
    )
    row = cur.fetchone()
    if row is not None:
        return Progress(int(row[0]), str(table), outputs, int(row[1]), int(row[2]), resumed=True)
    # An exact count once, for the progress bar; the table may change while we read it.
    cur.execute(f"SELECT count(*) FROM {table.qualified}")
    total = _first(cur)
    cur.execute(
        "INSERT INTO skor.backfills (schema_name, table_name, outputs, rows_total)"
        " VALUES (%s, %s, %s::text[], %s) RETURNING id",
        (*key, total),
    )
    return Progress(int(_first(cur)), str(table), outputs, 0, int(total))


def _chunk_sql(table: Table, after_last: bool) -> str:
    """The chunk statement; `after_last` for every chunk but the first. (Two statements
    rather than `last IS NULL OR ...`, which would keep the planner from the key's index.)"""
    names = [f"k{n}" for n in range(1, len(table.key) + 1)]
    keys = ", ".join(names)
    picked = ", ".join(
        f"{value} AS {name}"
        for value, name in zip(table.key_values().split(", "), names, strict=True)
    )
    return f"""
WITH chunk AS MATERIALIZED (
    SELECT {picked}, {table.row_key()} AS row_key, {table.data()}::text AS data
    FROM {table.source()}
    {"WHERE " + table.after() if after_last else ""}
    ORDER BY {table.key_values()} LIMIT %(limit)s
), {(_LOG_INSERT if table.mode == "wal" else _OUTBOX_INSERT).replace("{keys}", keys)}, counted AS (
    SELECT count(*) AS n FROM sent
)
UPDATE skor.backfills SET
    last_key = coalesce((SELECT ARRAY[{", ".join(f"{name}::text" for name in names)}]
                         FROM chunk ORDER BY {", ".join(f"{name} DESC" for name in names)}
                         LIMIT 1), last_key),
    rows_sent = rows_sent + (SELECT n FROM counted),
    status = CASE WHEN (SELECT n FROM counted) < %(limit)s THEN 'finished' ELSE status END,
    finished_at = CASE WHEN (SELECT n FROM counted) < %(limit)s THEN now() END,
    updated_at = now()
WHERE id = %(backfill)s
RETURNING rows_sent, status
""".replace("%(last)s", "(SELECT last_key FROM skor.backfills WHERE id = %(backfill)s)")


# Trigger mode: into the outbox, with the watermark, for the sequencer to move.
_OUTBOX_INSERT = (
    """sent AS (
    INSERT INTO skor.outbox (schema_name, table_name, op, row_key, data, watermark, event_id,
                             outputs)
    SELECT %(schema)s, %(table)s, 'READ', row_key, data,
           (SELECT next_pos - 1 FROM skor.sequencer), """
    + _EVENT_ID
    + """,
           %(outputs)s::text[]
    FROM chunk ORDER BY {keys}
    RETURNING 1
)"""
)

# WAL mode: straight into the log, numbered from the counter row the transaction holds
# (see `watermark` for why no watermark is needed there).
_LOG_INSERT = (
    """sent AS (
    INSERT INTO skor.log (pos, event_id, captured_at, schema_name, table_name, op, row_key,
                          data, outputs)
    SELECT %(base)s - 1 + row_number() OVER (ORDER BY {keys}), """
    + _EVENT_ID
    + """,
           clock_timestamp(), %(schema)s, %(table)s, 'READ', row_key, data,
           %(outputs)s::text[]
    FROM chunk
    RETURNING 1
), moved AS (
    UPDATE skor.sequencer SET next_pos = %(base)s + (SELECT count(*) FROM sent)
)"""
)


def _send_to_log(cur: cursor, sql: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
    """One WAL-mode chunk: hold the log's counter row, read the chunk, append it."""
    try:
        cur.execute("BEGIN; SELECT next_pos FROM skor.sequencer FOR UPDATE")
        base = int(_first(cur))
        ensure_partitions(cur, base, base + int(params["limit"]), PARTITION_SIZE)
        cur.execute(sql, {**params, "base": base})
        row = cur.fetchone()
        cur.execute("COMMIT")
    except BaseException:
        if not cur.connection.closed:
            cur.execute("ROLLBACK")
        raise
    return row


def _wait_for_bridge(
    cur: cursor, chunk_size: int, waiting: Callable[[str], None], stop: threading.Event
) -> None:
    """Wait until at most one chunk of READ rows is still in the outbox."""
    started = time.monotonic()
    noticed = False
    while not stop.is_set():
        cur.execute(
            "SELECT count(*) FROM (SELECT FROM skor.outbox WHERE watermark IS NOT NULL"
            " LIMIT %s) pending",
            (chunk_size,),
        )
        if _first(cur) < chunk_size:
            return
        if not noticed and time.monotonic() - started > WAIT_NOTICE:
            noticed = True
            waiting(
                "waiting for a running bridge (`skor-bridge run`) to move the sent rows "
                "into the log"
            )
        stop.wait(0.01)


def _first(cur: cursor) -> Any:
    row = cur.fetchone()
    assert row is not None
    return row[0]
