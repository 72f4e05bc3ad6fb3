"""The capture script for one table: a DO block that builds and installs its triggers.

Why the work happens in PostgreSQL, in a DO block, rather than in Python:
- the primary key and the column types are read when the script runs, so the output of
  `triggers generate` applied with psql installs exactly what `install` would;
- config text reaches the server only as string literals. The block hands the `when`
  condition to PostgreSQL's own parser as a one-statement cursor before using it, so a
  condition can never become a second statement, whatever our lexer in trigger_config
  missed;
- it compares what is installed with what it would install and touches only what
  changed, so reinstalling an unchanged config takes no lock on the user's tables.

The function it installs reads the row only as JSON (`row_to_json(NEW)`, then fields by
name), never `NEW.col` in plpgsql: a captured column that is renamed or dropped then just
goes missing from the event instead of failing the user's write (see `capture_problems`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import TYPE_CHECKING

from skor_bridge.sqlquote import (
    MAX_NAME_BYTES,
    dollar_quote,
    qualified,
    quote_ident,
    quote_literal,
    sql_comment,
)

if TYPE_CHECKING:
    from collections.abc import Sequence

    from skor_bridge.capture.trigger_config import Op, TableSpec

__all__ = [
    "MAX_NAME_BYTES",
    "SEARCH_PATH",
    "capture_function_name",
    "data_expr",
    "dollar_quote",
    "durable_block",
    "notify_block",
    "notify_name",
    "quote_ident",
    "quote_literal",
    "row_key_sql",
    "sql_comment",
    "trigger_name",
]

#: Fixed search path of the SECURITY DEFINER capture functions; every name they use is
#: schema-qualified or in pg_catalog, and pg_temp last cannot shadow anything.
SEARCH_PATH = "pg_catalog, pg_temp"

#: AFTER ROW triggers of a table fire in byte order of their names. Ours start with "!"
#: (0x21), below digits, letters and "_", so a change is recorded before any nested change
#: a user's AFTER trigger makes to the same row.
TRIGGER_PREFIX = "!"


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:8]


def capture_function_name(schema: str, table: str) -> str:
    """Durable function name: readable slug plus a hash of the exact names, <= 63 bytes."""
    slug = re.sub(r"[^a-z0-9_]", "_", f"{schema}_{table}".lower())
    return f"capture_{slug[:46]}_{_short_hash(schema, table)}"


def trigger_name(op: str) -> str:
    """Durable trigger name for `op` (insert, update, delete, moves_begin, moves_end)."""
    return f"{TRIGGER_PREFIX}skor_capture_{op}"


def notify_name(schema: str, table: str, op: Op) -> str:
    """Skor's function name, `notify_skor_<table>_<op>`, shortened past 63 bytes."""
    name = f"notify_skor_{table}_{op}"
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES - len(TRIGGER_PREFIX):
        return name
    suffix = f"_{_short_hash(schema, table)}_{op}"
    room = MAX_NAME_BYTES - len(TRIGGER_PREFIX) - len("notify_skor_") - len(suffix)
    prefix = table.encode("utf-8")[:room].decode("utf-8", "ignore")
    return f"notify_skor_{prefix}{suffix}"


# -- the parts every table's block shares --------------------------------------------------


def _checks(spec: TableSpec) -> str:
    """plpgsql raising unless the table and every configured column exist, and the key is
    immediate (a DEFERRABLE key lets a re-inserted key commit before the delete it
    replaces, so the log could hold INSERT before DELETE: refused, see README)."""
    table = spec.qualified
    columns: list[str] = []
    for _, cols in spec.columns:
        columns.extend(col for col in cols or () if col not in columns)
    columns.extend(col for col in spec.update_columns if col not in columns)
    text = f"""\
    IF target IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'undefined_table',
            MESSAGE = {quote_literal(f"table {table} does not exist")};
    END IF;
    SELECT relkind = 'p' INTO partitioned FROM pg_catalog.pg_class
    WHERE oid = target AND relkind IN ('r', 'p');
    IF partitioned IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'wrong_object_type',
            MESSAGE = {quote_literal(f"{table} is not a table")};
    END IF;
    SELECT conname INTO col FROM pg_catalog.pg_constraint
    WHERE conrelid = target AND contype = 'p' AND condeferrable;
    IF FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'feature_not_supported',
            MESSAGE = format('primary key %s of table %s is DEFERRABLE, so changes of one '
                             'row could be logged out of order; make it NOT DEFERRABLE',
                             '"' || replace(col, '"', '""') || '"', {quote_literal(table)});
    END IF;
"""
    if columns:
        text += f"""\
    FOREACH col IN ARRAY ARRAY[{", ".join(map(quote_literal, columns))}]::text[] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_attribute WHERE attrelid = target
                       AND attname = col AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION USING ERRCODE = 'undefined_column',
                MESSAGE = format('column %s of table %s does not exist',
                                 '"' || replace(col, '"', '""') || '"', {quote_literal(table)});
        END IF;
    END LOOP;
"""
    return text


# The row key is the primary key as compact JSON ({"id":42}, {"a":1,"b":"x"}), taken from
# the row's JSON by name. Values whose text depends on the writer's session or spelling
# are made canonical, so one row has one key whoever writes it: timestamptz in UTC,
# numeric without trailing zeros, citext lower-cased (its equality). Each form falls back
# to the plain value when the JSON is not of the expected shape, so a later change of the
# column's type can never make the expression fail. No backslashes: the function body is
# parsed under the writer's standard_conforming_strings.
_CANONICAL = {
    "plain": "(%1$s -> %2$L)::text",
    "utc": "CASE WHEN (%1$s ->> %2$L) ~ "
           "'^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?[+-][0-9]{2}"
           "(:[0-9]{2}){0,2}$' THEN rtrim(to_json((%1$s ->> %2$L)::timestamptz AT TIME ZONE "
           "'UTC')::text, '\"') || '+00:00\"' ELSE (%1$s -> %2$L)::text END",
    "numeric": "CASE WHEN json_typeof(%1$s -> %2$L) = 'number' THEN "
               "trim_scale((%1$s ->> %2$L)::numeric)::text ELSE (%1$s -> %2$L)::text END",
    "lower": "CASE WHEN json_typeof(%1$s -> %2$L) = 'string' THEN "
             "to_json(lower(%1$s ->> %2$L))::text ELSE (%1$s -> %2$L)::text END",
}

_KEY_LOOP = f"""\
    FOR col, kind IN
        SELECT a.attname, CASE
            WHEN b.oid = 'pg_catalog.timestamptz'::pg_catalog.regtype THEN 'utc'
            WHEN b.oid = 'pg_catalog.numeric'::pg_catalog.regtype THEN 'numeric'
            WHEN b.typname = 'citext' THEN 'lower'
            ELSE 'plain' END
        FROM pg_catalog.pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
        JOIN pg_catalog.pg_type b
          ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
        WHERE i.indrelid = target AND i.indisprimary
        ORDER BY k.n
    LOOP
        sep := CASE WHEN new_key IS NULL THEN '{{' ELSE ',' END || to_json(col)::text || ':';
        new_key := concat_ws(' || ', new_key, quote_literal(sep),
            format(CASE kind {" ".join(f"WHEN {quote_literal(k)} THEN {quote_literal(v)}"
                                       for k, v in _CANONICAL.items())} END, 'n', col));
        old_key := concat_ws(' || ', old_key, quote_literal(sep),
            format(CASE kind {" ".join(f"WHEN {quote_literal(k)} THEN {quote_literal(v)}"
                                       for k, v in _CANONICAL.items())} END, 'o', col));
        key_changed := concat_ws(' OR ', key_changed,
            format('OLD.%I IS DISTINCT FROM NEW.%I', col, col));
    END LOOP;
    new_key := coalesce(new_key || ' || ''}}''', 'NULL');
    old_key := coalesce(old_key || ' || ''}}''', 'NULL');
"""

def key_kind(type_name: str) -> str:
    """The canonical form a key column of this type gets (a `_CANONICAL` key): the type as
    `format_type` or `regtype` writes it, domains resolved by the caller."""
    name = type_name.rsplit(".", 1)[-1].strip('"')
    if name in ("timestamp with time zone", "timestamptz"):
        return "utc"
    if name == "numeric" or name.startswith("numeric("):
        return "numeric"
    return "lower" if name == "citext" else "plain"


def row_key_sql(json_expr: str, key: Sequence[tuple[str, str]]) -> str:
    """SQL for the canonical `row_key` of a row whose JSON `json_expr` evaluates to, with
    `key` the primary key's (column, type) in key order: the same text the capture
    triggers write, for other producers of events (backfill, WAL) to key rows alike."""
    if not key:
        return "NULL"
    parts = []
    for number, (col, type_name) in enumerate(key):
        prefix = ("{" if number == 0 else ",") + json.dumps(col, ensure_ascii=False) + ":"
        template = _CANONICAL[key_kind(type_name)]
        value = template.replace("%1$s", f"({json_expr})").replace("%2$L", quote_literal(col))
        parts += [quote_literal(prefix), value]
    return " || ".join([*parts, "'}'"])


def data_expr(record: str, columns: tuple[str, ...] | None) -> str:
    """Skor's data expression with quoted names: the row, or only `columns` of it."""
    if columns is None:
        return f"row_to_json({record})"
    # The alias must not equal a selected column: PostgreSQL would pick the column.
    alias, number = "r", 0
    while alias in columns:
        number += 1
        alias = f"r{number}"
    picked = ", ".join(f"{record}.{quote_ident(col)}" for col in columns)
    return f"row_to_json((SELECT {alias} FROM (SELECT {picked}) AS {alias}))"


# Placeholders the block replaces in the function body with the key expressions; config
# text cannot hold control characters, so they cannot occur in it otherwise.
_NEW_KEY, _OLD_KEY = "\x01NEW_KEY\x01", "\x01OLD_KEY\x01"


def _data(var: str, columns: tuple[str, ...] | None) -> str:
    """The event's data from the row's JSON in `var`: whole, or the listed fields that
    exist, in the listed order (rendered as row_to_json of those columns would be)."""
    if columns is None:
        return f"{var}::text"
    fields = ", ".join(
        f"{quote_literal(json.dumps(col, ensure_ascii=False) + ':')} || ({var} -> "
        f"{quote_literal(col)})::text"
        for col in columns
    )
    return f"'{{' || concat_ws(',', {fields}) || '}}'"


def _user_when(spec: TableSpec) -> str:
    """plpgsql that checks the `when` condition as one expression of one SELECT.

    A cursor cannot be opened on more than one statement, and PostgreSQL checks that after
    parsing and before running anything, so text that would add a statement is refused
    here; the same text, between the same line breaks, then goes into CREATE TRIGGER.
    """
    if spec.when is None:
        return ""
    return f"""\
    user_when := {quote_literal(spec.when)};
    OPEN probe FOR EXECUTE format('SELECT FROM %s AS "new", %s AS "old" WHERE (' || chr(10)
        || '%s' || chr(10) || ') LIMIT 0', target_name, target_name, user_when);
    CLOSE probe;
"""


def _when(spec: TableSpec, op: str) -> str:
    """plpgsql expression: the trigger's WHEN clause text ('' for none)."""
    parts = []
    if op == "update" and spec.update_columns:
        changed = " OR ".join(
            f"OLD.{quote_ident(col)} IS DISTINCT FROM NEW.{quote_ident(col)}"
            for col in spec.update_columns
        )
        # A key change is always captured: the receiver must learn the old key is gone.
        parts.append(f"'(' || concat_ws(' OR ', {quote_literal(changed)}, key_changed) || ')'")
    if spec.when is not None and op in ("insert", "update", "delete"):
        parts.append("'(' || chr(10) || user_when || chr(10) || ')'")
    if not parts:
        return "''"
    joined = " || ' AND ' || ".join(parts)
    return f"' WHEN (' || {joined} || ')'"


def _trigger(name: str, timing: str, level: str, when: str, call: str) -> str:
    """plpgsql creating or replacing trigger `name` unless it is installed as wanted.

    The definition's hash is the trigger's argument, so comparing it says whether anything
    changed without parsing pg_get_triggerdef; an unchanged trigger takes no lock.
    """
    return f"""\
    def := format('%s ON %s FOR EACH {level}%s EXECUTE FUNCTION %s', {quote_literal(timing)},
                  target_name, {when}, {call});
    fp := left(md5(def), 16);
    wanted := wanted || {quote_literal(name)}::name;
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_trigger WHERE tgrelid = target
                   AND tgname = {quote_literal(name)} AND tgparentid = 0 AND tgenabled = 'O'
                   AND tgnargs = 1
                   AND tgargs = convert_to(fp, 'UTF8') || decode('00', 'hex')) THEN
        EXECUTE format('CREATE OR REPLACE TRIGGER %I %s(%L)', {quote_literal(name)}, def, fp);
    END IF;
"""


def _drop_unwanted(functions: str) -> str:
    """plpgsql dropping triggers of ours on the table that the config no longer wants
    (operations no longer captured, names of an earlier release)."""
    return f"""\
    FOR trig IN SELECT tgname FROM pg_catalog.pg_trigger
                WHERE tgrelid = target AND tgparentid = 0 AND NOT tgisinternal
                  AND tgfoid IN (SELECT p.oid FROM pg_catalog.pg_proc p WHERE {functions})
                  AND tgname <> ALL (wanted)
    LOOP
        EXECUTE format('DROP TRIGGER %I ON %s', trig, target_name);
    END LOOP;
"""


def _function(function: str, body_expr: str, definer: bool) -> str:
    """plpgsql creating or replacing `function` unless its text and settings match."""
    settings = f"SECURITY DEFINER SET search_path = {SEARCH_PATH} " if definer else ""
    config = f"ARRAY[{quote_literal('search_path=' + SEARCH_PATH)}]" if definer else "NULL"
    return f"""\
    body := {body_expr};
    IF NOT EXISTS (SELECT FROM pg_catalog.pg_proc
                   WHERE oid = to_regprocedure({quote_literal(function + "()")})
                   AND prosrc = body AND prosecdef = {"true" if definer else "false"}
                   AND proconfig IS NOT DISTINCT FROM {config}) THEN
        EXECUTE format('CREATE OR REPLACE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql '
                       '{settings}AS %L', {quote_literal(function)}, body);
    END IF;
"""


def _block(spec: TableSpec, declare: str, work: str) -> str:
    block = f"""\
DECLARE
    target regclass := to_regclass({quote_literal(spec.qualified)});
    target_name text := {quote_literal(spec.qualified)};
    partitioned boolean;
    col text;
    kind text;
    sep text;
    new_key text;
    old_key text;
    key_changed text;
    user_when text;
    probe refcursor;
    def text;
    fp text;
    body text;
    trig name;
    wanted name[] := ARRAY[]::name[];
{declare}BEGIN
{_checks(spec)}{_KEY_LOOP}{_user_when(spec)}{work}END"""
    return f"DO {dollar_quote(block)};\n"


def _splice_keys(body: str) -> str:
    """plpgsql expression: `body` with the key placeholders replaced by the key SQL.

    Split here rather than replaced in SQL, so the script holds no control characters.
    """
    pieces = re.split(f"({_NEW_KEY}|{_OLD_KEY})", body)
    return "\n        || ".join(
        {_NEW_KEY: "new_key", _OLD_KEY: "old_key"}.get(piece) or quote_literal(piece)
        for piece in pieces if piece)


# -- durable mode --------------------------------------------------------------------------


def _insert(spec: TableSpec, rows: list[tuple[str, str, str]]) -> str:
    values = ",\n            ".join(
        f"({quote_literal(spec.schema)}, {quote_literal(spec.table)}, '{op}', {key}, {data})"
        for op, key, data in rows
    )
    return ("INSERT INTO skor.outbox (schema_name, table_name, op, row_key, data)\n"
            f"        VALUES {values};")


def _durable_body(spec: TableSpec, partitioned: bool) -> str:
    """The capture function's plpgsql. It names the configured table itself: triggers on a
    partitioned table are cloned onto its partitions, where TG_TABLE_NAME is the partition.

    A row that moves to another partition fires DELETE on the old partition and INSERT on
    the new one: with the key in the partition key, that is exactly a key change. When the
    config does not capture DELETE or INSERT, those triggers exist anyway on a partitioned
    table and record only moves, which statement triggers mark in a transaction setting.
    """
    cols = dict(spec.columns)
    update = cols.get("update", cols.get("insert", cols.get("delete")))
    as_delete = cols["delete"] if "delete" in cols else update
    as_insert = cols["insert"] if "insert" in cols else update
    tag = f"{_short_hash(spec.schema, spec.table)}@' || pg_trigger_depth() || ';"
    moving = (f"strpos(';' || coalesce(current_setting('skor.moving', true), ''), "
              f"';{tag}') > 0")
    lines = ["DECLARE", "    n json;", "    o json;", "    nk text;", "    ok text;",
             "    moves text;", "BEGIN"]
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
        branches.append(("INSERT", [*guard, "n := row_to_json(NEW);",
                                    _insert(spec, [("INSERT", _NEW_KEY, _data("n", as_insert))])]))
    if "update" in cols:
        branches.append(("UPDATE", [
            "n := row_to_json(NEW);",
            f"nk := {_NEW_KEY};",
            f"IF nk IS NOT NULL THEN o := row_to_json(OLD); ok := {_OLD_KEY}; END IF;",
            "IF nk IS DISTINCT FROM ok THEN",
            "    " + _insert(spec, [("DELETE", "ok", _data("o", as_delete)),
                                   ("INSERT", "nk", _data("n", as_insert))]),
            "ELSE",
            "    " + _insert(spec, [("UPDATE", "nk", _data("n", update))]),
            "END IF;",
        ]))
    if "delete" in cols or partitioned and "update" in cols:
        guard = [] if "delete" in cols else [f"IF NOT {moving} THEN RETURN NULL; END IF;"]
        branches.append(("DELETE", [*guard, "o := row_to_json(OLD);",
                                    _insert(spec, [("DELETE", _OLD_KEY, _data("o", as_delete))])]))
    for index, (op, body_lines) in enumerate(branches):
        lines.append(f"    {'IF' if index == 0 else 'ELSIF'} TG_OP = '{op}' THEN")
        lines += [f"        {line}" for line in body_lines]
    lines += ["    END IF;", "    RETURN NULL;", "END"]
    return "\n".join(lines)


def _durable_triggers(spec: TableSpec, partitioned: bool, call: str) -> str:
    ops = list(spec.ops)
    if partitioned and "update" in ops:
        ops = ["insert", "update", "delete"]
    text = "".join(_trigger(trigger_name(op), f"AFTER {op.upper()}", "ROW", _when(spec, op), call)
                   if op in spec.ops else
                   _trigger(trigger_name(op), f"AFTER {op.upper()}", "ROW", "''", call)
                   for op in ops)
    if partitioned and "update" in spec.ops and len(spec.ops) < 3:
        text += _trigger(trigger_name("moves_begin"), "BEFORE UPDATE", "STATEMENT", "''", call)
        text += _trigger(trigger_name("moves_end"), "AFTER UPDATE", "STATEMENT", "''", call)
    return text


def durable_block(spec: TableSpec) -> str:
    """The DO block installing durable capture of one table."""
    function = f"skor.{quote_ident(capture_function_name(spec.schema, spec.table))}"
    work = f"""\
    IF partitioned THEN
{_function(function, _splice_keys(_durable_body(spec, True)), definer=True)}\
{_durable_triggers(spec, True, quote_literal(function))}\
    ELSE
{_function(function, _splice_keys(_durable_body(spec, False)), definer=True)}\
{_durable_triggers(spec, False, quote_literal(function))}\
    END IF;
{_drop_unwanted(f"p.oid = to_regprocedure({quote_literal(function + '()')})")}"""
    return _block(spec, "", work)


# -- notify mode ---------------------------------------------------------------------------


def _notify_body(spec: TableSpec, op: Op, cols: tuple[str, ...] | None) -> str:
    """Skor's pg_notify payload, naming the configured table; a key change is told as
    DELETE of the old row and INSERT of the new one, as in durable mode."""

    def notify(event_op: str, var: str) -> str:
        data = f"{var}" if cols is None else f"({_data(var, cols)})::json"
        return (f"PERFORM pg_notify('skor', json_build_object('table', "
                f"{quote_literal(spec.table)}, 'schema', {quote_literal(spec.schema)}, "
                f"'op', '{event_op}', 'data', {data})::text);")

    lines = ["DECLARE", "    n json;", "    o json;", "BEGIN"]
    if op == "insert":
        lines += ["    n := row_to_json(NEW);", "    " + notify("INSERT", "n")]
    elif op == "delete":
        lines += ["    o := row_to_json(OLD);", "    " + notify("DELETE", "o")]
    else:
        lines += [
            "    n := row_to_json(NEW);",
            "    o := row_to_json(OLD);",
            f"    IF ({_NEW_KEY}) IS DISTINCT FROM ({_OLD_KEY}) THEN",
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
        work += _function(function, _splice_keys(_notify_body(spec, op, cols)), definer=False)
        work += _trigger(TRIGGER_PREFIX + name, f"AFTER {op.upper()}", "ROW", _when(spec, op),
                         quote_literal(function))
    matches = " OR ".join(f"p.oid = to_regprocedure({quote_literal(f)})" for f in functions)
    return _block(spec, "", work + _drop_unwanted(matches))
