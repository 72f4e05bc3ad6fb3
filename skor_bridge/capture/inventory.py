"""What is captured: the capture triggers in the catalog, the configuration `triggers
install` recorded (`skor.captured_tables`), and the problems where they disagree.

    triggers install  -> record()        the installed configuration, in the same transaction
    triggers list     -> captured()      per table: mode, operations, columns, problems
    run               -> nothing_captured()  warns when no table is captured
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Sequence

    from psycopg2.extensions import cursor

    from skor_bridge.capture.trigger_config import TableSpec

#: Row-level trigger type bits (pg_trigger.tgtype) of each operation.
_OP_BITS = {"insert": 4, "update": 16, "delete": 8}

_TRIGGERS = """
SELECT n.nspname, c.relname, t.tgtype, t.tgenabled,
       CASE WHEN pn.nspname = 'skor' THEN 'durable' ELSE 'notify' END
FROM pg_trigger t
JOIN pg_class c ON c.oid = t.tgrelid JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_proc p ON p.oid = t.tgfoid JOIN pg_namespace pn ON pn.oid = p.pronamespace
WHERE NOT t.tgisinternal AND t.tgparentid = 0 AND t.tgtype & 1 = 1
  AND ((pn.nspname = 'skor' AND starts_with(p.proname, 'capture_'))
       OR starts_with(p.proname, 'notify_skor_'))
ORDER BY 1, 2
"""

#: Tables WAL capture publishes (`triggers install --mode wal`).
_WAL = """
SELECT t.schemaname, t.tablename, p.pubinsert, p.pubupdate, p.pubdelete
FROM pg_publication p JOIN pg_publication_tables t USING (pubname)
WHERE p.pubname = 'skor_capture' ORDER BY 1, 2
"""

_RECORDED = """
SELECT r.schema_name, r.table_name, r.mode, r.ops, r.columns, r.update_columns, r.condition,
       r.key_columns, c.oid::regclass::text, n.nspname, c.relname
FROM skor.captured_tables r
LEFT JOIN pg_class c ON c.oid = r.relid LEFT JOIN pg_namespace n ON n.oid = c.relnamespace
ORDER BY 1, 2
"""


@dataclass
class Captured:
    schema: str
    table: str
    mode: str
    #: Operations whose trigger is installed (and enabled).
    ops: list[str] = field(default_factory=list)
    #: Columns per operation as installed; None means every column; {} when unknown.
    columns: dict[str, list[str] | None] = field(default_factory=dict)
    condition: str | None = None
    problems: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def record(cur: cursor, specs: Sequence[TableSpec], mode: str) -> None:
    """Replace the recorded configuration with `specs` (caller's transaction)."""
    cur.execute("DELETE FROM skor.captured_tables")
    for spec in specs:
        columns = {op: (list(cols) if cols is not None else None) for op, cols in spec.columns}
        cur.execute(
            "INSERT INTO skor.captured_tables (schema_name, table_name, mode, ops, columns,"
            " update_columns, condition) VALUES (%s, %s, %s, %s, %s, %s, %s)",
            (
                spec.schema,
                spec.table,
                mode,
                list(spec.ops),
                json.dumps(columns),
                list(spec.update_columns),
                spec.when,
            ),
        )


def captured(cur: cursor) -> list[Captured]:
    """Every captured table, from the catalog and the record, with its problems.

    A table renamed since install (found by its recorded OID) is listed under its
    configured name, the name its events carry, with the rename as a problem."""
    tables: dict[tuple[str, str], Captured] = {}
    disabled: dict[tuple[str, str], list[str]] = {}
    cur.execute(_TRIGGERS)
    for schema, table, tgtype, enabled, mode in cur.fetchall():
        entry = tables.setdefault((schema, table), Captured(schema, table, mode))
        for op, bit in _OP_BITS.items():
            if tgtype & bit:
                (entry.ops if enabled != "D" else disabled.setdefault((schema, table), [])).append(
                    op
                )
    cur.execute(_WAL)
    published = {
        (schema, table): [op for op, on in zip(_OP_BITS, flags, strict=True) if on]
        for schema, table, *flags in cur.fetchall()
    }
    cur.execute("SELECT to_regclass('skor.captured_tables') IS NOT NULL")
    row = cur.fetchone()
    recorded = []
    if row and row[0]:
        cur.execute(_RECORDED)
        recorded = cur.fetchall()
    seen = set()
    for schema, table, mode, ops, columns, _update_columns, condition, key, rel, *now in recorded:
        # What the catalog shows under the table's current name is this table.
        current = (now[0], now[1]) if now[0] is not None else (schema, table)
        seen.update({(schema, table), current})
        found = tables.pop(current, None)
        entry = tables.setdefault((schema, table), Captured(schema, table, mode))
        if found is not None:
            entry.ops, entry.mode = found.ops, found.mode
        entry.columns, entry.condition = dict(columns), condition
        if current != (schema, table):
            entry.problems.append(
                f"table was renamed to {current[0]}.{current[1]}: still captured, its events "
                f"keep the name {schema}.{table}; update triggers.json and install again"
            )
        if mode == "wal":
            in_publication = published.pop(current, None)
            entry.ops = [op for op in ops if in_publication and op in in_publication]
            if rel is None:
                entry.problems.append(_GONE)
            elif in_publication is None:
                entry.problems.append(
                    "not in publication skor_capture (removed by hand?): nothing is "
                    "captured; install again"
                )
            continue
        entry.problems += _problems(cur, entry, rel, list(ops), disabled.get(current, []))
        if key is not None and _GONE not in entry.problems:
            entry.problems += _key_problems(cur, entry, rel, list(key))
    for (schema, table), ops in published.items():
        entry = tables.setdefault((schema, table), Captured(schema, table, "wal"))
        entry.ops = ops
    for key, entry in tables.items():
        if key not in seen:
            entry.problems.append(
                "not installed by this release's `triggers install` "
                "(columns unknown): install again to record them"
            )
        entry.ops.sort(key=list(_OP_BITS).index)
    return sorted(tables.values(), key=lambda e: (e.schema, e.table))


def _problems(
    cur: cursor, entry: Captured, rel: str | None, ops: list[str], disabled: list[str]
) -> list[str]:
    if rel is None:  # recorded before OIDs were: by name
        cur.execute(
            "SELECT to_regclass(format('%%I.%%I', %s::text, %s::text))::text",
            (entry.schema, entry.table),
        )
        row = cur.fetchone()
        rel = row[0] if row else None
    if rel is None:
        return [_GONE]
    problems = [f"{op} trigger is disabled" for op in disabled]
    problems += [
        f"{op} trigger is missing" for op in ops if op not in entry.ops and op not in disabled
    ]
    cur.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
        " AND NOT attisdropped",
        (rel,),
    )
    existing = {name for (name,) in cur.fetchall()}
    wanted = sorted({c for cols in entry.columns.values() if cols for c in cols} - existing)
    problems += [
        f"column {name} does not exist any more (renamed or dropped?): events "
        "leave it out until triggers.json is updated and installed again"
        for name in wanted
    ]
    return problems


_GONE = "table does not exist any more (dropped or renamed?): nothing is captured"

_KEY = """
SELECT ARRAY(SELECT a.attname::text FROM pg_index i
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = %(rel)s::regclass AND i.indisprimary ORDER BY k.n),
       (SELECT conname::text FROM pg_constraint
        WHERE conrelid = %(rel)s::regclass AND contype = 'p' AND condeferrable)
"""


def _key_problems(cur: cursor, entry: Captured, rel: str | None, key: list[str]) -> list[str]:
    """The primary key changed since install (events stay keyed by the old one), or was
    made DEFERRABLE (per-row order no longer holds)."""
    if rel is None:
        rel = (
            f'"{entry.schema.replace(chr(34), chr(34) * 2)}".'
            f'"{entry.table.replace(chr(34), chr(34) * 2)}"'
        )
    cur.execute(_KEY, {"rel": rel})
    row = cur.fetchone()
    assert row is not None
    current, deferrable = list(row[0]), row[1]
    problems = []
    if current != key:
        problems.append(
            f"primary key changed from ({', '.join(key) or 'none'}) to "
            f"({', '.join(current) or 'none'}): events are keyed by the old one "
            "until triggers are installed again"
        )
    if deferrable:
        problems.append(
            f"primary key {deferrable} is DEFERRABLE now: per-row order is not "
            "guaranteed; make it NOT DEFERRABLE"
        )
    return problems


def nothing_captured(cur: cursor) -> bool:
    cur.execute(_TRIGGERS)
    return cur.fetchone() is None


def summary(entries: Sequence[Captured]) -> dict[str, list[str]]:
    """{"schema.table": [ops]}, to compare before and after an install."""
    return {f"{e.schema}.{e.table}": list(e.ops) for e in entries}
