"""Writing a chunk of WAL changes into skor.log, together with how far the slot is done.

One database transaction takes positions from the sequencer's counter (so outputs,
retention and status see WAL events exactly like trigger events), copies the events in,
and moves `skor.wal_state`: either to the end LSN of the last whole transaction written,
or, for a transaction written in chunks, to how many of its row messages are in.
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


def _array(items: tuple[str, ...] | None) -> str | None:
    """A text[] literal."""
    if items is None:
        return None
    return (
        "{" + ",".join('"' + i.replace("\\", "\\\\").replace('"', '\\"') + '"' for i in items) + "}"
    )


class Chunk:
    """Log rows encoded for COPY as they are made, so a chunk is held once, as bytes.

    Positions are numbered from `base`, the next position when the chunk was started; if
    another writer took positions meanwhile, `renumber` shifts them.
    """

    def __init__(self, base: int) -> None:
        self.base = base
        self.count = 0
        self._buffer = io.BytesIO()
        #: Whether an event carries `outputs` (a column backfill's migration adds).
        self._outputs = False
        self._stamp_of = -1.0
        self._stamp = ""

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
        stamp = self._stamp
        line = "\t".join(
            (
                str(self.base + self.count),
                event,
                stamp,
                _copy_field(schema),
                _copy_field(table),
                op,
                _copy_field(key),
                _copy_field(data),
                _copy_field(old),
            )
        )
        if outputs is not None and not self._outputs:
            self._with_outputs()
        if self._outputs:
            line += "\t" + _copy_field(_array(outputs))
        self._buffer.write(line.encode())
        self._buffer.write(b"\n")
        self.count += 1

    def _with_outputs(self) -> None:
        """Add an `outputs` column (NULL: every output) to the rows so far."""
        self._outputs = True
        lines = self._buffer.getvalue().split(b"\n")[:-1]
        self._buffer = io.BytesIO()
        for line in lines:
            self._buffer.write(line + b"\t\\N\n")

    def renumber(self, base: int) -> None:
        delta = base - self.base
        lines = self._buffer.getvalue().split(b"\n")[:-1]
        self._buffer = io.BytesIO()
        for line in lines:
            pos, rest = line.split(b"\t", 1)
            self._buffer.write(str(int(pos) + delta).encode() + b"\t" + rest + b"\n")
        self.base = base

    def copy(self, cur: cursor) -> None:
        self._buffer.seek(0)
        extra = ", outputs" if self._outputs else ""
        cur.copy_expert(
            "COPY skor.log (pos, event_id, captured_at, schema_name, table_name, op, row_key,"
            f" data, old{extra}) FROM STDIN",
            self._buffer,
        )


def write_chunk(
    cur: cursor, chunk: Chunk, base: int, lsn: int, partial: tuple[int, int] | None
) -> int:
    """Copy the chunk in at positions from `base` on, record progress; returns the next
    position. Runs inside the caller's transaction, which holds the sequencer row."""
    if chunk.count:
        if base != chunk.base:
            chunk.renumber(base)
        chunk.copy(cur)
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
