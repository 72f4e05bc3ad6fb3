"""One backfill: the table's rows, chunk by chunk in primary-key order, into the log.

Each chunk is one transaction: it takes the log's counter row (`skor.sequencer`, FOR UPDATE,
as the sequencer and the WAL reader do), then ONE statement reads up to `chunk_size` rows
after the last key sent, appends a READ event per row to `skor.log` at the next positions,
moves the counter and records the new last key in `skor.backfills`. A kill at any moment
therefore loses nothing and repeats nothing: the next run continues after the last chunk
that committed. READ event ids are derived from the backfill's id and the row key, so even
a chunk sent twice (a backfill started over with `skor.backfills` edited by hand) repeats
the same ids. See `watermark` for why this keeps every row's last event equal to the table.

The rows go from table to log inside the database, never through Python, and not through
the outbox: no outbox row to write, move and vacuum per table row, and the bridge's
sequencer does no work per READ (the chunk tells the running bridge that the log grew,
see `_announcement`; the outputs read the READ events from the log like any backlog).

Pacing: the next chunk waits until an output the backfill is for has delivered up to
`LEAD` positions behind the last READ sent. The outputs set the pace, the log ahead of
them stays short, and the backfill never outruns a stopped bridge (nor starts before an
output exists to deliver it).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import psycopg2

from skor_bridge.backfill.table import Table, resolve
from skor_bridge.capture.schema import ensure_schema
from skor_bridge.capture.sequencer import LOG_GREW, ensure_partitions
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

#: READ events the backfill may have in the log beyond what its fastest output delivered
#: (as saved in skor.outputs, every 0.2 s while busy): enough to keep a webhook output at
#: 10,000 events/s fed between two saves, little enough that the log stays short and
#: the database does not race ahead of the outputs.
LEAD = 20_000

#: Prefix of the logical message a WAL-mode chunk ends with (see `_announcement`).
WAL_MESSAGE = "skor.backfill"

#: Seconds between looks at the outputs' positions while waiting.
PACE_POLL = 0.01


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
    announce = _announcement(cur, table.mode)
    sent_upto = 0  # the position of the last READ sent, 0 before the first
    while not progress.finished and not stop.is_set():
        if not _wait_for_outputs(cur, outputs, sent_upto - LEAD, waiting, stop):
            break
        sql = following if progress.rows_sent else first
        row = _send_to_log(cur, sql, params, table.mode == "durable", announce)
        progress.rows_sent, progress.finished = int(row[0]), row[1] == "finished"
        sent_upto = max(sent_upto, int(row[2]))
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
    rather than `last IS NULL OR ...`, which would keep the planner from the key's index.)
    Runs with the counter row held; %(base)s is its next_pos."""
    names = [f"k{n}" for n in range(1, len(table.key) + 1)]
    keys = ", ".join(names)
    picked = ", ".join(
        f"{value} AS {name}"
        for value, name in zip(table.key_values().split(", "), names, strict=True)
    )
    pending = _PENDING if table.mode == "durable" else ""
    return f"""
WITH chunk AS MATERIALIZED (
    SELECT {picked}, {table.row_key()} AS row_key, {table.data()}::text AS data
    FROM {table.source()}
    {"WHERE " + table.after() if after_last else ""}
    ORDER BY {table.key_values()} LIMIT %(limit)s
), sent AS (
    INSERT INTO skor.log (pos, event_id, captured_at, schema_name, table_name, op, row_key,
                          data, outputs)
    SELECT %(base)s - 1 + row_number() OVER (ORDER BY {keys}), {_EVENT_ID},
           clock_timestamp(), %(schema)s, %(table)s, 'READ', row_key, data,
           %(outputs)s::text[]
    FROM chunk {pending}
    RETURNING 1
), counted AS (
    SELECT (SELECT count(*) FROM chunk) AS n, (SELECT count(*) FROM sent) AS inserted
), moved AS (
    UPDATE skor.sequencer SET next_pos = %(base)s + (SELECT inserted FROM counted)
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
RETURNING rows_sent, status, %(base)s - 1 + (SELECT inserted FROM counted)
""".replace("%(last)s", "(SELECT last_key FROM skor.backfills WHERE id = %(backfill)s)")


# Trigger mode: a row with a change still in the outbox (committed before this chunk's
# snapshot, not numbered yet) gets no READ: that change is numbered after this chunk and
# carries the row as it is now, or newer (see `watermark`).
_PENDING = """WHERE NOT EXISTS (
        SELECT FROM skor.outbox o WHERE o.row_key = chunk.row_key
        AND o.table_name = %(table)s AND o.schema_name = %(schema)s)"""


def _announcement(cur: cursor, mode: str) -> str:
    """The statement that tells the running bridge the log grew (it would not know
    otherwise): a NOTIFY its sequencer listens for, or in WAL mode a transactional logical
    message, on which the WAL reader writes (nothing) and reads the log's new head. Without
    the right to emit one, the READs go out with the next captured change."""
    if mode == "durable":
        return f"NOTIFY {LOG_GREW}"
    # (PostgreSQL 17 added a fourth, optional argument: look the function up by name.)
    cur.execute(
        "SELECT coalesce(bool_or(has_function_privilege(oid, 'EXECUTE')), false)"
        " FROM pg_proc WHERE proname = 'pg_logical_emit_message'"
    )
    if not _first(cur):
        return ""
    return f"SELECT pg_logical_emit_message(true, '{WAL_MESSAGE}', ''::text)"


def _send_to_log(
    cur: cursor, sql: str, params: dict[str, Any], durable: bool, announce: str
) -> tuple[Any, ...]:
    """One chunk: hold the log's counter row, read the chunk, append it, announce it."""
    try:
        # The outbox before the counter row, in the order the sequencer's rounds (and its
        # compaction, which locks the outbox whole) take them: no lock cycle.
        outbox = "LOCK TABLE skor.outbox IN ACCESS SHARE MODE; " if durable else ""
        cur.execute(f"BEGIN; {outbox}SELECT next_pos FROM skor.sequencer FOR UPDATE")
        base = int(_first(cur))
        ensure_partitions(cur, base, base + int(params["limit"]), PARTITION_SIZE)
        cur.execute(sql, {**params, "base": base})
        row = cur.fetchone()
        if announce:
            cur.execute(announce)
        cur.execute("COMMIT")
    except BaseException:
        if not cur.connection.closed:
            cur.execute("ROLLBACK")
        raise
    assert row is not None
    return tuple(row)


def _wait_for_outputs(
    cur: cursor,
    outputs: tuple[str, ...],
    position: int,
    waiting: Callable[[str], None],
    stop: threading.Event,
) -> bool:
    """Wait until an output the backfill is for has delivered up to `position` (and one
    exists at all); False when stopped meanwhile."""
    started = time.monotonic()
    noticed = False
    while not stop.is_set():
        cur.execute(
            "SELECT max(position) FROM skor.outputs"
            " WHERE %(outputs)s::text[] IS NULL OR name = ANY(%(outputs)s::text[])",
            {"outputs": list(outputs) or None},
        )
        delivered = _first(cur)
        if delivered is not None and delivered >= position:
            return True
        if not noticed and time.monotonic() - started > WAIT_NOTICE:
            noticed = True
            waiting(
                "waiting for a running bridge (`skor-bridge run`) to deliver the rows sent"
                + ("" if delivered is not None else "; no output has started yet")
            )
        stop.wait(PACE_POLL)
    return False


def _first(cur: cursor) -> Any:
    row = cur.fetchone()
    assert row is not None
    return row[0]
