"""The table a backfill reads: found in the catalog, checked, and turned into SQL.

A READ must look exactly like the INSERT the capture would write for the same row: the
same `row_key` (so per-row order and the watermark check match it with the row's live
changes; built by the triggers' own `row_key_sql`) and the same `data` (`row_to_json`,
restricted to the configured columns). The configuration is the one `triggers install`
recorded (skor.captured_tables, or skor.wal_state in WAL mode), not a triggers.json the
operator may have edited since: what is installed is what the live stream sends. Names
reach SQL only through `quote_ident`, values only as parameters.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from skor_bridge.capture.trigger_config import TableSpec, parse_config
from skor_bridge.capture.trigger_sql import data_expr, quote_ident, row_key_sql
from skor_bridge.errors import ConfigError

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

#: The alias the chunk query gives the table; nothing depends on it not being a column
#: name, since every reference to it is qualified (`skor_row.*`, `skor_row."col"`).
ROW = "skor_row"

_FIND = """
SELECT c.oid, c.relkind FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = %s AND c.relname = %s
"""

# Which capture, if any, has a trigger on the table: durable (ours) first.
_TRIGGER_MODE = """
SELECT CASE WHEN n.nspname = 'skor' THEN 'durable' ELSE 'notify' END FROM pg_trigger t
JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE t.tgrelid = %s AND NOT t.tgisinternal
  AND ((n.nspname = 'skor' AND starts_with(p.proname, 'capture_'))
       OR starts_with(p.proname, 'notify_skor_'))
ORDER BY n.nspname = 'skor' DESC LIMIT 1
"""

# Key types with domains resolved, as the capture triggers' canonical keys need them.
_KEY = """
SELECT a.attname, format_type(CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END,
                              CASE WHEN t.typtype = 'd' THEN t.typtypmod ELSE a.atttypmod END)
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
JOIN pg_type t ON t.oid = a.atttypid
WHERE i.indrelid = %s AND i.indisprimary
ORDER BY k.n
"""

#: The row's JSON, computed once per row for its key and its data.
ROW_JSON = "skor_json.j"


@dataclass(frozen=True)
class Table:
    schema: str
    name: str
    #: Primary key columns in key order, with their SQL types (to cast a saved key back).
    key: tuple[tuple[str, str], ...]
    #: The columns events carry, or None for the whole row.
    columns: tuple[str, ...] | None
    #: "durable" (capture triggers and the outbox) or "wal" (logical replication).
    mode: str = "durable"

    def __str__(self) -> str:
        return f"{self.schema}.{self.name}"

    @property
    def qualified(self) -> str:
        return f"{quote_ident(self.schema)}.{quote_ident(self.name)}"

    def source(self) -> str:
        """The FROM clause: the table, and its rows' JSON as `row_to_json` renders it."""
        return (
            f"{self.qualified} AS {ROW} CROSS JOIN LATERAL"
            f" (SELECT row_to_json({ROW}.*) AS j) AS skor_json"
        )

    def key_values(self) -> str:
        """The key columns of the current row, comma-separated."""
        return ", ".join(f"{ROW}.{quote_ident(col)}" for col, _ in self.key)

    def after(self) -> str:
        """`(k1, k2) > (saved values cast back)`: keyset paging that uses the key's index."""
        values = ", ".join(
            f"(%(last)s::text[])[{n}]::{kind}" for n, (_, kind) in enumerate(self.key, start=1)
        )
        return f"({self.key_values()}) > ({values})"

    def row_key(self) -> str:
        """The capture triggers' canonical `row_key`, `{"id":42}`, from their own SQL."""
        return row_key_sql(ROW_JSON, self.key)

    def data(self) -> str:
        """The capture triggers' `data`: the row's JSON, or the configured columns of it."""
        if self.columns is None:
            return f"{ROW_JSON}::text"
        return data_expr(ROW, self.columns)


def parse_name(text: str) -> tuple[str, str]:
    """'orders' (schema public, as in triggers.json) or 'sales.orders'."""
    schema, dot, table = text.strip().rpartition(".")
    if not table or (dot and not schema):
        raise ConfigError(f"table: expected TABLE or SCHEMA.TABLE, got {text!r}")
    return schema or "public", table


def resolve(cur: cursor, schema: str, name: str) -> Table:
    """The captured table `schema.name`; a ConfigError saying why it cannot be backfilled."""
    shown = f"{schema}.{name}"
    cur.execute(_FIND, (schema, name))
    found = cur.fetchone()
    if found is None:
        raise ConfigError(f"table: {shown} does not exist")
    oid, kind = found
    if kind not in ("r", "p"):
        raise ConfigError(f"table: {shown} is not a table")
    cur.execute(_TRIGGER_MODE, (oid,))
    row = cur.fetchone()
    if row is not None and row[0] == "notify":
        raise ConfigError(
            f"table: {shown} is captured in notify mode, which keeps no log; "
            "backfill needs durable or wal mode"
        )
    spec = _recorded_spec(cur, schema, name) if row is not None else _wal_spec(cur, schema, name)
    if spec is None and row is None:
        raise ConfigError(
            f"table: {shown} is not captured; add it to triggers.json and run "
            "`skor-bridge triggers install` first"
        )
    if spec is None:
        raise ConfigError(
            f"table: {shown} was captured by an older release, which did not "
            "record its columns; run `skor-bridge triggers install` again"
        )
    cur.execute(_KEY, (oid,))
    key = tuple((str(col), str(kind)) for col, kind in cur.fetchall())
    if not key:
        raise ConfigError(
            f"table: {shown} has no primary key; backfill reads tables in "
            "primary-key order and refuses tables without one"
        )
    # READ shows the row as an INSERT would (or the first captured operation).
    return Table(schema, name, key, spec.columns[0][1], "durable" if row else "wal")


def _recorded_spec(cur: cursor, schema: str, name: str) -> TableSpec | None:
    """The table's entry as `triggers install` recorded it in skor.captured_tables."""
    cur.execute("SELECT to_regclass('skor.captured_tables') IS NOT NULL")
    exists = cur.fetchone()
    if not exists or not exists[0]:
        return None
    cur.execute(
        "SELECT ops, columns FROM skor.captured_tables WHERE schema_name = %s AND table_name = %s",
        (schema, name),
    )
    row = cur.fetchone()
    if row is None:
        return None
    ops, columns = row
    entry = {
        "schema": schema,
        "table": name,
        "columns": {op: "*" if columns.get(op) is None else columns[op] for op in ops},
    }
    return parse_config([entry], source="skor.captured_tables")[0]


def _wal_spec(cur: cursor, schema: str, name: str) -> TableSpec | None:
    """The table's triggers.json entry as `triggers install --mode wal` recorded it."""
    cur.execute("SELECT to_regclass('skor.wal_state') IS NOT NULL")
    row = cur.fetchone()
    if not row or not row[0]:
        return None
    cur.execute("SELECT tables FROM skor.wal_state")
    row = cur.fetchone()
    if row is None:
        return None
    for spec in parse_config(row[0], source="skor.wal_state"):
        if (spec.schema, spec.table) == (schema, name):
            return spec
    return None
