"""From pgoutput row messages to the changes the log receives, with triggers.json applied.

What trigger mode does in SQL, WAL mode does here, on the rows the WAL carries:
- column lists per operation pick (and order) the columns of `data`, as Skor's
  `row_to_json((SELECT r FROM (SELECT NEW.a, NEW.b) r))` does;
- `update_columns` keeps an UPDATE only when one of them changed, compared by their text
  form (as the trigger's `IS DISTINCT FROM` would, but for types whose equal values print
  differently, such as numeric 1.0 and 1.00, which then count as changed);
- `when` is evaluated by the server, batched (see `filters`);
- an UPDATE that changes the primary key becomes a DELETE of the old row then an INSERT
  of the new one (BOARD.md), each with its own operation's column list;
- an unchanged TOASTed value, which the WAL leaves out of the new row, is taken from the
  old row that REPLICA IDENTITY FULL logs whole.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from skor_bridge.capture.wal.protocol import UNCHANGED, Delete, Insert, Relation, Update
from skor_bridge.capture.wal.render import quote

if TYPE_CHECKING:
    from collections.abc import Callable

    from skor_bridge.capture.trigger_config import Op, TableSpec
    from skor_bridge.capture.wal.protocol import Tuple, Value
    from skor_bridge.capture.wal.render import PgType

log = logging.getLogger(__name__)

#: A row with every value present: text, bytes (binary) or None.
Row = tuple["Value", ...]


@dataclass(eq=False)
class Table:
    """A captured table as the stream last described it (its latest Relation message)."""

    relation: Relation
    spec: TableSpec
    types: tuple[PgType, ...]
    #: Indexes of the primary key's columns, in key order; empty without a primary key.
    key: tuple[int, ...]
    #: Per captured operation (INSERT...), the indexes of the columns its events carry.
    picks: dict[str, tuple[int, ...]] = field(default_factory=dict)
    #: `"name":` for every column, escaped once.
    labels: tuple[str, ...] = ()
    #: Per column, the function rendering a value's text as JSON (see render.renderer).
    renderers: tuple[Callable[[str], str], ...] = ()
    #: The captured operations (lower case), and the columns only the server renders.
    ops: frozenset[str] = frozenset()
    server_columns: tuple[int, ...] = ()
    #: Column list -> the function rendering those columns as JSON (batch.object_renderer),
    #: made on first use: they belong to this description of the table.
    object_renderers: dict[tuple[int, ...], Callable[[Row], str]] = field(default_factory=dict)

    @classmethod
    def build(
        cls,
        relation: Relation,
        spec: TableSpec,
        types: tuple[PgType, ...],
        key_names: tuple[str, ...],
        renderers: tuple[Callable[[str], str], ...] = (),
    ) -> Table:
        names = [c.name for c in relation.columns]
        index = {name: i for i, name in enumerate(names)}
        picks: dict[str, tuple[int, ...]] = {}
        for op, cols in spec.columns:
            if cols is None:
                picks[op.upper()] = tuple(range(len(names)))
                continue
            missing = [c for c in cols if c not in index]
            if missing:
                log.warning(
                    "%s has no column %s any more; its %s events leave it out",
                    spec,
                    ", ".join(missing),
                    op,
                )
            picks[op.upper()] = tuple(index[c] for c in cols if c in index)
        key = tuple(index[k] for k in key_names if k in index)
        if len(key) != len(key_names):
            key = ()
        return cls(
            relation,
            spec,
            types,
            key,
            picks,
            tuple(quote(name) + ":" for name in names),
            renderers,
            frozenset(spec.ops),
            tuple(i for i, t in enumerate(types) if t.category == "server"),
        )

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.relation.columns]

    def columns_for(self, op: str) -> tuple[int, ...]:
        """The columns an `op` event (INSERT, UPDATE, DELETE) carries; a key change uses
        the update's list when its own operation is not captured."""
        return self.picks.get(op) or self.picks.get("UPDATE", ())


@dataclass(slots=True)
class Change:
    """One event before rendering. `message` numbers the transaction's row messages and
    `sub` the events one message gave (a key change gives two): with the commit LSN they
    make the event id, the same however often the transaction is read."""

    table: Table
    op: str
    row: Row
    #: The operation whose `when` decides, and the rows it sees as OLD and NEW.
    when_op: Op
    old: Row | None
    new: Row | None
    message: int
    sub: int = 0
    #: The transaction's commit LSN and time (Unix seconds).
    commit: tuple[int, float] = (0, 0.0)


@dataclass(slots=True)
class MessageEvent:
    """An event a message handler made of a logical decoding message (a backfill's READ
    rows): written to the log at the message's place in the transaction, like a change.
    `data` and `key` are already JSON; without `event_id` one is derived as for changes.
    `outputs` limits the event to those outputs (None: every output)."""

    schema: str
    table: str
    op: str
    data: str
    key: str | None = None
    event_id: str | None = None
    outputs: tuple[str, ...] | None = None
    message: int = 0
    sub: int = 0
    commit: tuple[int, float] = (0, 0.0)


def _fill(new: Tuple, old: Tuple | None) -> Row:
    if UNCHANGED not in new:
        return new  # type: ignore[return-value]
    if old is None:
        # Only without REPLICA IDENTITY FULL (changed after install): nothing to fill from.
        return tuple(None if v is UNCHANGED else v for v in new)  # type: ignore[misc]
    return tuple(o if n is UNCHANGED else n for n, o in zip(new, old, strict=False))  # type: ignore[misc]


def _plain(row: Tuple) -> Row:
    return tuple(None if v is UNCHANGED else v for v in row)  # type: ignore[misc]


def changes_of(message: Insert | Update | Delete, table: Table, number: int) -> list[Change]:
    """The changes one row message gives, before `when` is applied."""
    ops = table.ops
    if isinstance(message, Insert):
        if "insert" not in ops:
            return []
        row: Row = message.new  # type: ignore[assignment]  # an INSERT has every value
        return [Change(table, "INSERT", row, "insert", None, row, number)]
    if isinstance(message, Delete):
        if "delete" not in ops:
            return []
        row = _plain(message.old)
        return [Change(table, "DELETE", row, "delete", row, None, number)]
    if "update" not in ops:
        return []
    old = _plain(message.old) if message.old is not None and message.old_kind == "O" else None
    new = _fill(message.new, message.old if message.old_kind == "O" else None)
    if old is not None and table.spec.update_columns:
        names = table.names
        watched = [names.index(c) for c in table.spec.update_columns if c in names]
        if all(old[i] == new[i] for i in watched):
            return []
    if old is not None and table.key and any(old[i] != new[i] for i in table.key):
        return [
            Change(table, "DELETE", old, "update", old, new, number, 0),
            Change(table, "INSERT", new, "update", old, new, number, 1),
        ]
    return [Change(table, "UPDATE", new, "update", old, new, number)]
