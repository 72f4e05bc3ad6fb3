"""The two trigger modes' DO blocks: durable (skor.outbox) and notify (Skor's pg_notify).

Built from trigger_sql's parts; see there for why the work happens in a DO block.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skor_bridge.capture.trigger_sql import (
    NEW_KEY,
    OLD_KEY,
    TRIGGER_PREFIX,
    capture_function_name,
    drop_unwanted,
    ensure_function,
    ensure_trigger,
    json_data,
    notify_name,
    short_hash,
    splice_keys,
    table_block,
    trigger_name,
    trigger_when,
)
from skor_bridge.sqlquote import qualified, quote_ident, quote_literal

if TYPE_CHECKING:
    from skor_bridge.capture.trigger_config import Op, TableSpec


# -- durable mode --------------------------------------------------------------------------


def _insert(spec: TableSpec, rows: list[tuple[str, str, str]], old: str | None = None) -> str:
    """INSERT of outbox rows (op, key expression, data expression); `old`, the expression
    of an UPDATE's previous row, goes with a single row."""
    assert old is None or len(rows) == 1
    values = ",\n            ".join(
        f"({quote_literal(spec.schema)}, {quote_literal(spec.table)}, '{op}', {key}, {data}"
        + (f", {old})" if old is not None else ")")
        for op, key, data in rows
    )
    columns = "schema_name, table_name, op, row_key, data" + (", old" if old is not None else "")
    return f"INSERT INTO skor.outbox ({columns})\n        VALUES {values};"


def _durable_body(spec: TableSpec, partitioned: bool) -> str:
    """The capture function's plpgsql. It names the configured table itself: triggers on a
    partitioned table are cloned onto its partitions, where TG_TABLE_NAME is the partition.

    A row that moves to another partition fires DELETE on the old partition and INSERT on
    the new one: with the key in the partition key, that is exactly a key change. When the
    config does not capture DELETE or INSERT, those triggers exist anyway on a partitioned
    table and record only moves, which statement triggers mark in a transaction setting.

    With `old` in the config, an UPDATE also records the row before it in `old`, with the
    update's columns, for the envelope format; a key change's DELETE and INSERT do not
    (the DELETE's data is the old row). The OLD row's JSON is built once and serves the
    key, `old` and a key change. Without it the body is what it was before `old` existed,
    so a reinstall of an unchanged config replaces nothing.
    """
    cols = dict(spec.columns)
    update = cols.get("update", cols.get("insert", cols.get("delete")))
    as_delete = cols["delete"] if "delete" in cols else update
    as_insert = cols["insert"] if "insert" in cols else update
    tag = f"{short_hash(spec.schema, spec.table)}@' || pg_trigger_depth() || ';"
    moving = f"strpos(';' || coalesce(current_setting('skor.moving', true), ''), ';{tag}') > 0"
    lines = [
        "DECLARE",
        "    n json;",
        "    o json;",
        "    nk text;",
        "    ok text;",
        "    moves text;",
        "BEGIN",
    ]
    if partitioned and len(cols) < 3 and "update" in cols:
        lines += [
            "    IF TG_LEVEL = 'STATEMENT' THEN",
            "        moves := coalesce(current_setting('skor.moving', true), '');",
            "        IF TG_WHEN = 'BEFORE' THEN",
            f"            PERFORM set_config('skor.moving', moves || '{tag}', true);",
            f"        ELSIF right(moves, length('{tag}')) = '{tag}' THEN",
            f"            PERFORM set_config('skor.moving', left(moves, -length('{tag}')), true);",
            "        END IF;",
            "        RETURN NULL;",
            "    END IF;",
        ]
    branches: list[tuple[str, list[str]]] = []
    if "insert" in cols or partitioned and "update" in cols:
        guard = [] if "insert" in cols else [f"IF NOT {moving} THEN RETURN NULL; END IF;"]
        insert = _insert(spec, [("INSERT", NEW_KEY, json_data("n", as_insert))])
        branches.append(("INSERT", [*guard, "n := row_to_json(NEW);", insert]))
    if "update" in cols:
        if spec.old:
            old_lines = [
                "o := row_to_json(OLD);",
                f"IF nk IS NOT NULL THEN ok := {OLD_KEY}; END IF;",
            ]
            old_data: str | None = json_data("o", update)
        else:
            old_lines = [f"IF nk IS NOT NULL THEN o := row_to_json(OLD); ok := {OLD_KEY}; END IF;"]
            old_data = None
        branches.append(
            (
                "UPDATE",
                [
                    "n := row_to_json(NEW);",
                    f"nk := {NEW_KEY};",
                    *old_lines,
                    "IF nk IS DISTINCT FROM ok THEN",
                    "    "
                    + _insert(
                        spec,
                        [
                            ("DELETE", "ok", json_data("o", as_delete)),
                            ("INSERT", "nk", json_data("n", as_insert)),
                        ],
                    ),
                    "ELSE",
                    "    " + _insert(spec, [("UPDATE", "nk", json_data("n", update))], old_data),
                    "END IF;",
                ],
            )
        )
    if "delete" in cols or partitioned and "update" in cols:
        guard = [] if "delete" in cols else [f"IF NOT {moving} THEN RETURN NULL; END IF;"]
        delete = _insert(spec, [("DELETE", OLD_KEY, json_data("o", as_delete))])
        branches.append(("DELETE", [*guard, "o := row_to_json(OLD);", delete]))
    for index, (op, body_lines) in enumerate(branches):
        lines.append(f"    {'IF' if index == 0 else 'ELSIF'} TG_OP = '{op}' THEN")
        lines += [f"        {line}" for line in body_lines]
    lines += ["    END IF;", "    RETURN NULL;", "END"]
    return "\n".join(lines)


def _durable_triggers(spec: TableSpec, partitioned: bool, call: str) -> str:
    ops = list(spec.ops)
    if partitioned and "update" in ops:
        ops = ["insert", "update", "delete"]
    # Operations not captured here have triggers only to record moves: no WHEN.
    text = "".join(
        ensure_trigger(
            trigger_name(op),
            f"AFTER {op.upper()}",
            "ROW",
            trigger_when(spec, op) if op in spec.ops else "''",
            call,
        )
        for op in ops
    )
    if partitioned and "update" in spec.ops and len(spec.ops) < 3:
        for name, timing in (("moves_begin", "BEFORE UPDATE"), ("moves_end", "AFTER UPDATE")):
            text += ensure_trigger(trigger_name(name), timing, "STATEMENT", "''", call)
    return text


def durable_block(spec: TableSpec) -> str:
    """The DO block installing durable capture of one table."""
    function = f"skor.{quote_ident(capture_function_name(spec.schema, spec.table))}"
    work = f"""\
    IF partitioned THEN
{ensure_function(function, splice_keys(_durable_body(spec, True)), definer=True)}\
{_durable_triggers(spec, True, quote_literal(function))}\
    ELSE
{ensure_function(function, splice_keys(_durable_body(spec, False)), definer=True)}\
{_durable_triggers(spec, False, quote_literal(function))}\
    END IF;
{drop_unwanted(f"p.oid = to_regprocedure({quote_literal(function + '()')})")}"""
    return table_block(spec, "", work)


# -- notify mode ---------------------------------------------------------------------------


def _notify_body(spec: TableSpec, op: Op, cols: tuple[str, ...] | None) -> str:
    """Skor's pg_notify payload, naming the configured table; a key change is told as
    DELETE of the old row and INSERT of the new one, as in durable mode."""

    def notify(event_op: str, var: str) -> str:
        data = f"{var}" if cols is None else f"({json_data(var, cols)})::json"
        return (
            f"PERFORM pg_notify('skor', json_build_object('table', "
            f"{quote_literal(spec.table)}, 'schema', {quote_literal(spec.schema)}, "
            f"'op', '{event_op}', 'data', {data})::text);"
        )

    lines = ["DECLARE", "    n json;", "    o json;", "BEGIN"]
    if op == "insert":
        lines += ["    n := row_to_json(NEW);", "    " + notify("INSERT", "n")]
    elif op == "delete":
        lines += ["    o := row_to_json(OLD);", "    " + notify("DELETE", "o")]
    else:
        lines += [
            "    n := row_to_json(NEW);",
            "    o := row_to_json(OLD);",
            f"    IF ({NEW_KEY}) IS DISTINCT FROM ({OLD_KEY}) THEN",
            "        " + notify("DELETE", "o"),
            "        " + notify("INSERT", "n"),
            "    ELSE",
            "        " + notify("UPDATE", "n"),
            "    END IF;",
        ]
    lines += ["    RETURN NULL;", "END"]
    return "\n".join(lines)


def notify_block(spec: TableSpec) -> str:
    """The DO block installing Skor's notify-mode triggers on one table."""
    work = ""
    functions = []
    for op, cols in spec.columns:
        name = notify_name(spec.schema, spec.table, op)
        function = qualified(spec.schema, name)
        functions.append(function + "()")
        work += ensure_function(function, splice_keys(_notify_body(spec, op, cols)), definer=False)
        work += ensure_trigger(
            TRIGGER_PREFIX + name,
            f"AFTER {op.upper()}",
            "ROW",
            trigger_when(spec, op),
            quote_literal(function),
        )
    matches = " OR ".join(f"p.oid = to_regprocedure({quote_literal(f)})" for f in functions)
    return table_block(spec, "", work + drop_unwanted(matches))
