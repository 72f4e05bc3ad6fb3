"""Writing a chunk of WAL changes into skor.log, together with how far the slot is done.

One statement (so one transaction) takes positions from the sequencer's counter (so
outputs, retention and status see WAL events exactly like trigger events), inserts the
events and moves `skor.wal_state`: either to the end LSN of the last whole transaction
written, or, for a transaction written in chunks, to how many of its row messages are in.
Only after that commit is the slot acknowledged, so each change enters the log once.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from skor_bridge.capture.wal.protocol import format_lsn, parse_lsn

if TYPE_CHECKING:
    from psycopg2.extensions import cursor


@dataclass(frozen=True)
class WalState:
    slot: str
    publication: str
    system_identifier: str
    timeline: int
    tables: list[object]
    #: End LSN of the last transaction whose events are all in the log.
    lsn: int
    #: Commit LSN of a transaction written in part, and how many row messages of it.
    partial_lsn: int | None
    partial_messages: int


def load_state(cur: cursor) -> WalState | None:
    cur.execute("SELECT to_regclass('skor.wal_state') IS NOT NULL")
    row = cur.fetchone()
    if not row or not row[0]:
        return None
    cur.execute(
        "SELECT slot_name, publication, system_identifier, timeline, tables,"
        " lsn::text, partial_lsn::text, partial_messages FROM skor.wal_state"
    )
    row = cur.fetchone()
    if row is None:
        return None
    slot, publication, system_id, timeline, tables, lsn, partial, messages = row
    return WalState(
        slot,
        publication,
        system_id,
        int(timeline),
        list(tables),
        parse_lsn(lsn),
        parse_lsn(partial) if partial else None,
        int(messages),
    )


def event_id(install_id: str, commit_lsn: int, message: int, sub: int) -> str:
    """Stable across re-reads of the same transaction: (LSN, place in the transaction).
    The md5 as a UUID's text, as trigger mode's `md5(...)::uuid` writes it."""
    return derived_id(id_prefix(install_id, commit_lsn), message, sub)


def id_prefix(install_id: str, commit_lsn: int) -> Any:
    """The md5 state after `{install_id}.wal.{commit_lsn}.`: a transaction's events share
    it, so each of their ids hashes only its own few bytes (`derived_id`)."""
    return hashlib.md5(f"{install_id}.wal.{commit_lsn}.".encode(), usedforsecurity=False)


def derived_id(prefix: Any, message: int, sub: int) -> str:
    h = prefix.copy()
    h.update(b"%d.%d" % (message, sub))
    x = h.hexdigest()
    return f"{x[:8]}-{x[8:12]}-{x[12:16]}-{x[16:20]}-{x[20:]}"


_COPY_ESCAPES = str.maketrans({"\\": "\\\\", "\n": "\\n", "\r": "\\r", "\t": "\\t"})


def _copy_field(text: str | None) -> str:
    if text is None:
        return "\\N"
    # (str's `in` is much cheaper than a regex search: most fields need nothing)
    if "\\" in text or "\n" in text or "\t" in text or "\r" in text:
        return text.translate(_COPY_ESCAPES)
    return text


def _array_literal(items: list[str | None]) -> str:
    """A text[] literal of `items` (NULL for None): the form a whole column of a chunk
    travels in, one parameter per column."""
    return (
        "{"
        + ",".join(
            "NULL" if i is None else '"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for i in items
        )
        + "}"
    )


def _array(items: tuple[str, ...] | None) -> str | None:
    """An event's `outputs` as a text[] literal; itself an element of the column's."""
    return None if items is None else _array_literal(list(items))


#: Columns of skor.log a chunk fills, in the order of `_WRITE`'s parameters.
_COLUMNS = (
    "event_id",
    "captured_at",
    "schema_name",
    "table_name",
    "op",
    "row_key",
    "data",
    "old",
    "outputs",
)

# One statement in autocommit appends a chunk and records how far the slot is done: lock
# the counter, insert at the positions after it, move it on, move skor.wal_state. It was
# BEGIN / SELECT ... FOR UPDATE / COPY / two UPDATEs / COMMIT, each parsed afresh: at a
# steady 1,000 changes/s that cost the database ~500 us per write (a COPY into the
# partitioned log costs ~120 us to set up even for a few rows). Columns travel as text[]
# parameters, unnested together. $9 outputs (text[] literals, each element itself a
# text[] literal), $10 how many events, $11 lsn, $12 partial lsn, $13 partial messages.
_WRITE = """
WITH seq AS (
    SELECT next_pos FROM skor.sequencer FOR UPDATE
), ins AS (
    INSERT INTO skor.log (pos, event_id, captured_at, schema_name, table_name, op, row_key,
                          data, old, outputs)
    SELECT (SELECT next_pos FROM seq) - 1 + u.n, u.event_id::uuid, u.captured_at::timestamptz,
           u.schema_name, u.table_name, u.op, u.row_key, u.data, u.old, u.outputs::text[]
    FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[],
                $7::text[], $8::text[], $9::text[])
         WITH ORDINALITY AS u(event_id, captured_at, schema_name, table_name, op, row_key,
                              data, old, outputs, n)
), bump AS (
    UPDATE skor.sequencer SET next_pos = (SELECT next_pos FROM seq) + $10 WHERE $10 > 0
), state AS (
    UPDATE skor.wal_state SET lsn = greatest(lsn, $11::pg_lsn), partial_lsn = $12::pg_lsn,
           partial_messages = $13, updated_at = now()
)
SELECT next_pos FROM seq
"""

PREPARE_WRITE = (
    "PREPARE skor_wal_write (text[], text[], text[], text[], text[], text[], text[], text[],"
    f" text[], bigint, text, text, int) AS {_WRITE}"
)


def logged_time(captured_at: float) -> float:
    """`captured_at` as the log gives it back (whole microseconds, as `Chunk` writes it), so
    an event served from memory carries the same time as the same event read from the log."""
    return datetime.fromtimestamp(captured_at, UTC).timestamp()


class Chunk:
    """Log rows, sent by COPY or as one array per column; positions are given when the
    chunk is written, after whatever another writer (a backfill) took meanwhile."""

    def __init__(self) -> None:
        self._rows: list[tuple[str | None, ...]] = []
        self._stamp_of = -1.0
        self._stamp = ""

    @property
    def count(self) -> int:
        return len(self._rows)

    def add(
        self,
        event: str,
        captured_at: float,
        schema: str,
        table: str,
        op: str,
        key: str | None,
        data: str,
        outputs: tuple[str, ...] | None = None,
        old: str | None = None,
    ) -> None:
        if captured_at != self._stamp_of:  # one transaction's events share their time
            self._stamp_of = captured_at
            self._stamp = datetime.fromtimestamp(captured_at, UTC).isoformat()
        self._rows.append((event, self._stamp, schema, table, op, key, data, old, _array(outputs)))

    def parameters(self) -> list[str]:
        """One text[] literal per column, in `_WRITE`'s order."""
        if not self._rows:
            return ["{}"] * len(_COLUMNS)
        return [_array_literal(list(column)) for column in zip(*self._rows, strict=True)]

    def copy(self, cur: cursor, base: int) -> None:
        """COPY the rows in at positions from `base`."""
        text = "".join(
            f"{base + n}\t" + "\t".join(map(_copy_field, row)) + "\n"
            for n, row in enumerate(self._rows)
        )
        cur.copy_expert(
            "COPY skor.log (pos, event_id, captured_at, schema_name, table_name, op, row_key,"
            " data, old, outputs) FROM STDIN",
            io.StringIO(text),
        )


#: Chunks of more events than this are written by COPY, in a transaction of several
#: statements: its set-up costs more than the one statement's (~500 against ~320 us of the
#: database's CPU for a few events), but it inserts rows in batches, and a backlog of
#: large chunks is captured ~15% faster than through arrays.
COPY_FROM = 100


def write_chunk(cur: cursor, chunk: Chunk, lsn: int, partial: tuple[int, int] | None) -> int:
    """Append a small chunk after the log's head and record progress, in one statement (the
    session must have PREPARE_WRITE'd and be in autocommit); returns the next position."""
    cur.execute(
        "EXECUTE skor_wal_write (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (
            *chunk.parameters(),
            chunk.count,
            format_lsn(lsn),
            format_lsn(partial[0]) if partial else None,
            partial[1] if partial else 0,
        ),
    )
    row = cur.fetchone()
    assert row is not None
    return int(row[0]) + chunk.count


def copy_chunk(
    cur: cursor, chunk: Chunk, base: int, lsn: int, partial: tuple[int, int] | None
) -> int:
    """Copy a chunk in at positions from `base` and record progress; returns the next
    position. Runs inside the caller's transaction, which holds the counter row."""
    if chunk.count:
        chunk.copy(cur, base)
        cur.execute("UPDATE skor.sequencer SET next_pos = %s", (base + chunk.count,))
    cur.execute(
        "UPDATE skor.wal_state SET lsn = greatest(lsn, %s::pg_lsn), partial_lsn = %s::pg_lsn,"
        " partial_messages = %s, updated_at = now()",
        (
            format_lsn(lsn),
            format_lsn(partial[0]) if partial else None,
            partial[1] if partial else 0,
        ),
    )
    return base + chunk.count
