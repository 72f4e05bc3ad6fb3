"""A chunk of changes made ready for the log: `when` applied and every value rendered.

What needs the server is asked once per chunk: one query per table and operation with a
`when`, one per type that only the server can render (composite types, user types with
their own json cast). Both run with the replication session's settings, so the text the
WAL carries reads back as the same values.
"""

from __future__ import annotations

from collections import defaultdict
from typing import TYPE_CHECKING

from skor_bridge.capture.wal.changes import Change, MessageEvent
from skor_bridge.capture.wal.render import PASS_THROUGH, SESSION_SETTINGS, quote

if TYPE_CHECKING:
    from collections.abc import Callable

    from psycopg2.extensions import cursor

    from skor_bridge.capture.wal.changes import Row, Table
    from skor_bridge.capture.wal.render import PgType

_SETTINGS = "; ".join(f"SET {name} = '{value}'" for name, value in SESSION_SETTINGS.items())


def when_sql(table: str, op: str, condition: str) -> str:
    """The query that evaluates a `when` condition for a batch of rows given as JSON.

    OLD and NEW are the rows rebuilt by jsonb_populate_record, so the condition reads
    `NEW.status` as the trigger's WHEN did. An INSERT has no OLD and a DELETE no NEW, as
    in trigger mode, so a condition that uses them fails here, at install.
    """
    lateral = []
    if op != "insert":
        lateral.append(f"CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, u.o) AS old")
    if op != "delete":
        lateral.append(f"CROSS JOIN LATERAL jsonb_populate_record(NULL::{table}, u.n) AS new")
    return (
        "SELECT u.i FROM unnest(%s::jsonb[], %s::jsonb[]) WITH ORDINALITY AS u(o, n, i) "
        + " ".join(lateral)
        + f" WHERE (\n{condition}\n) ORDER BY u.i"
    )


def _row_json(table: Table, row: Row | None) -> str | None:
    if row is None:
        return None
    parts = []
    for label, pg_type, value in zip(table.labels, table.types, row, strict=False):
        if value is None:
            continue
        text = value if isinstance(value, str) else value.decode("utf-8", "replace")
        parts.append(label + (text if pg_type.category == "json" else quote(text)))
    return "{" + ",".join(parts) + "}"


def object_renderer(table: Table, columns: tuple[int, ...]) -> Callable[[Row], str]:
    """A function rendering `columns` of a row as one JSON object, written out for this
    table: one string concatenation, no loop, and no call for values that print as they
    are (integers, json). Every event goes through here; a loop over the columns costs
    about twice as much. Labels and renderers are passed in by name, never pasted into
    the source, so column names cannot change the code."""
    if not columns:
        return lambda row: "{}"
    scope: dict[str, object] = {}
    terms = []
    for n, i in enumerate(columns):
        scope[f"l{n}"] = ("{" if n == 0 else ",") + table.labels[i]
        fn = table.renderers[i]
        if fn in PASS_THROUGH:
            value = "v"
        else:
            scope[f"r{n}"] = fn
            value = f"r{n}(v)"
        terms.append(f"l{n} + ('null' if (v := row[{int(i)}]) is None else {value})")
    source = "def render(row):\n    return " + " + ".join(terms) + " + '}'\n"
    exec(source, scope)  # (the source holds only integers and the names above)
    return scope["render"]  # type: ignore[return-value]


class Renderer:
    """Renders chunks of changes; `run(op)` runs `op(cursor)` on the bridge's connection."""

    def __init__(self, run: Callable[[Callable[[cursor], object]], object]) -> None:
        self._run = run
        self._server: dict[tuple[int, str], str] = {}

    def prepare(self, items: list[Change | MessageEvent]) -> list[Change | MessageEvent]:
        """The changes `when` keeps, with server-rendered values fetched; events made of
        messages pass through in their place."""
        changes = [item for item in items if isinstance(item, Change)]
        kept = self._apply_when(changes)
        self._fetch_server_values(kept)
        if len(changes) == len(items) and len(kept) == len(changes):
            return list(items)
        keep = {id(change) for change in kept}
        return [item for item in items if not isinstance(item, Change) or id(item) in keep]

    # -- when ------------------------------------------------------------------------------

    def _apply_when(self, changes: list[Change]) -> list[Change]:
        groups: dict[tuple[int, str], list[int]] = defaultdict(list)
        for i, change in enumerate(changes):
            if change.table.spec.when is not None and change.sub == 0:
                groups[(id(change.table), change.when_op)].append(i)
        if not groups:
            return changes
        dropped: set[int] = set()
        for indexes in groups.values():
            first = changes[indexes[0]]
            sql = when_sql(first.table.spec.qualified, first.when_op, first.table.spec.when or "")
            olds = [_row_json(changes[i].table, changes[i].old) for i in indexes]
            news = [_row_json(changes[i].table, changes[i].new) for i in indexes]

            def evaluate(
                cur: cursor,
                sql: str = sql,
                olds: list[str | None] = olds,
                news: list[str | None] = news,
            ) -> set[int]:
                cur.execute(_SETTINGS)
                cur.execute(sql, (olds, news))
                return {int(row[0]) - 1 for row in cur.fetchall()}

            passed = self._run(evaluate)
            assert isinstance(passed, set)
            dropped.update(i for n, i in enumerate(indexes) if n not in passed)
        # The second event of a key change follows the fate of the first.
        kept: list[Change] = []
        keep = True
        for i, change in enumerate(changes):
            if change.sub == 0:
                keep = i not in dropped
            if keep:
                kept.append(change)
        return kept

    # -- values only the server renders ----------------------------------------------------

    def _fetch_server_values(self, changes: list[Change]) -> None:
        wanted: dict[int, tuple[PgType, set[str]]] = {}
        for change in changes:
            table = change.table
            if not table.server_columns:
                continue
            rows = [change.row]
            if change.op == "UPDATE" and change.old is not None and table.spec.old:
                rows.append(change.old)  # rendered too, as the event's `old`
            for i in table.server_columns:
                pg_type = table.types[i]
                if pg_type.category != "server":
                    continue
                for row in rows:
                    value = row[i]
                    if isinstance(value, str) and (pg_type.oid, value) not in self._server:
                        wanted.setdefault(pg_type.oid, (pg_type, set()))[1].add(value)
        if len(self._server) > 100_000:  # a cache, not a store: keep it small
            self._server.clear()
        for pg_type, texts in wanted.values():
            values = sorted(texts)

            def ask(
                cur: cursor, pg_type: PgType = pg_type, values: list[str] = values
            ) -> list[str]:
                cur.execute(_SETTINGS)
                cur.execute(
                    f"SELECT to_json(v::{pg_type.name})::text FROM unnest(%s::text[])"
                    " WITH ORDINALITY AS u(v, i) ORDER BY i",
                    (values,),
                )
                return [row[0] for row in cur.fetchall()]

            answers = self._run(ask)
            assert isinstance(answers, list)
            for text, answer in zip(values, answers, strict=True):
                self._server[(pg_type.oid, text)] = answer

    def server_value(self, pg_type: PgType, text: str) -> str:
        """A value only the server renders, fetched by `prepare` for this chunk."""
        return self._server[(pg_type.oid, text)]

    # -- rendering -------------------------------------------------------------------------

    @staticmethod
    def _object(table: Table, row: Row, columns: tuple[int, ...]) -> str:
        """The JSON object of `columns` of `row`, by a function made once per table and
        column list (see `object_renderer`); the general loop for a row holding binary
        values, which pgoutput sends only when asked to (we never ask)."""
        render = table.object_renderers.get(columns)
        if render is None:
            render = table.object_renderers[columns] = object_renderer(table, columns)
        try:
            return render(row)
        except TypeError:  # a bytes value: the slow path decodes it
            pass
        labels, render_fns = table.labels, table.renderers
        parts = []
        for i in columns:
            value = row[i]
            if value is None:
                parts.append(labels[i] + "null")
            else:
                text = value if isinstance(value, str) else value.decode("utf-8", "replace")
                parts.append(labels[i] + render_fns[i](text))
        return "{" + ",".join(parts) + "}"

    def data(self, change: Change) -> str:
        """The event's `data`, as row_to_json writes it."""
        return self._object(change.table, change.row, change.table.columns_for(change.op))

    def old(self, change: Change) -> str | None:
        """An UPDATE's row before the change, with the update's columns, rendered like
        `data`, for a table configured with "old"; None for other events, and when the WAL
        did not carry the whole old row (REPLICA IDENTITY changed from FULL after install).
        Under FULL the old row is complete: PostgreSQL logs its TOASTed values inline."""
        if change.op != "UPDATE" or change.old is None or not change.table.spec.old:
            return None
        return self._object(change.table, change.old, change.table.columns_for("UPDATE"))

    def key(self, change: Change) -> str | None:
        """The primary key as compact JSON, `{"id":42}`, as trigger mode builds it."""
        table = change.table
        return self._object(table, change.row, table.key) if table.key else None
