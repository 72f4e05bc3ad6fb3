"""The table a backfill reads: found in the catalog, checked, and turned into SQL.

A READ must look exactly like the INSERT the capture trigger would write for the same row:
the same `row_key` (so per-row order and the watermark check match it with the row's live
changes) and the same `data` (`row_to_json`, restricted to the configured columns). The
configured columns are read back from the installed capture function rather than from a
triggers.json the operator may have edited since: what is installed is what the live
stream sends. Names reach SQL only through `quote_ident`, values only as parameters.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from skor_bridge.capture.trigger_config import TableSpec, parse_config
from skor_bridge.capture.trigger_sql import data_expr, quote_ident, quote_literal
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

# The capture function's source, in the order the trigger generator writes its branches.
_CAPTURE = """
SELECT p.prosrc, p.proname FROM pg_trigger t
JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace n ON n.oid = p.pronamespace
WHERE t.tgrelid = %s AND NOT t.tgisinternal
  AND ((n.nspname = 'skor' AND starts_with(p.proname, 'capture_'))
       OR starts_with(p.proname, 'notify_skor_'))
ORDER BY n.nspname = 'skor' DESC LIMIT 1
"""

_KEY = """
SELECT a.attname, format_type(a.atttypid, a.atttypmod)
FROM pg_index i
CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
WHERE i.indrelid = %s AND i.indisprimary
ORDER BY k.n
"""

# The first data expression of the durable capture function: `row_to_json(NEW)` for every
# column, or `row_to_json((SELECT r FROM (SELECT NEW."a", NEW."b") AS r))` for some.
_DATA_LINE = re.compile(r"^\s*(row_to_json\(.*\))::text\);\s*$", re.MULTILINE)
_COLUMN = re.compile(r'(?:NEW|OLD)\.("(?:[^"]|"")*")')


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

    def key_values(self) -> str:
        """The key columns of the current row, comma-separated."""
        return ", ".join(f"{ROW}.{quote_ident(col)}" for col, _ in self.key)

    def after(self) -> str:
        """`(k1, k2) > (saved values cast back)`: keyset paging that uses the key's index."""
        values = ", ".join(f"(%(last)s::text[])[{n}]::{kind}"
                           for n, (_, kind) in enumerate(self.key, start=1))
        return f"({self.key_values()}) > ({values})"

    def row_key(self) -> str:
        """The trigger's `row_key` for the current row: `{"id":42}`, built the same way."""
        parts = []
        for n, (col, _) in enumerate(self.key):
            # The name is JSON-escaped by PostgreSQL, as in the trigger, not by Python.
            parts.append(f"'{'{' if n == 0 else ','}' || to_json({quote_literal(col)}::text)::text"
                         f" || ':' || to_json({ROW}.{quote_ident(col)})::text")
        return " || ".join(parts) + " || '}'"

    def data(self) -> str:
        """The trigger's `data` expression for the current row."""
        if self.columns is None:
            return f"row_to_json({ROW}.*)"
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
    cur.execute(_CAPTURE, (oid,))
    capture = cur.fetchone()
    mode = "durable"
    if capture is not None:
        source, function = capture
        if not function.startswith("capture_"):
            raise ConfigError(f"table: {shown} is captured in notify mode, which keeps no "
                              "log; backfill needs durable or wal mode")
        columns = captured_columns(source)
    else:
        spec = _wal_spec(cur, schema, name)
        if spec is None:
            raise ConfigError(f"table: {shown} is not captured; add it to triggers.json and "
                              "run `skor-bridge triggers install` first")
        mode, columns = "wal", spec.columns[0][1]
    cur.execute(_KEY, (oid,))
    key = tuple((str(col), str(kind)) for col, kind in cur.fetchall())
    if not key:
        raise ConfigError(f"table: {shown} has no primary key; backfill reads tables in "
                          "primary-key order and refuses tables without one")
    return Table(schema, name, key, columns, mode)


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


def captured_columns(source: str) -> tuple[str, ...] | None:
    """The columns the capture function's first branch sends (its INSERT when captured)."""
    match = _DATA_LINE.search(source)
    if match is None:
        raise ConfigError("table: the installed capture function has an unknown shape; run "
                          "`skor-bridge triggers install` again with this version")
    expr = match[1]
    if expr in ("row_to_json(NEW)", "row_to_json(OLD)"):  # OLD: only deletes are captured
        return None
    return tuple(quoted[1:-1].replace('""', '"') for quoted in _COLUMN.findall(expr))

