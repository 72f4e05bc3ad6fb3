"""The parts of the capture script's per-table DO block, and the names it installs.

The blocks of each mode are assembled in trigger_modes; the canonical row key comes from
trigger_key.

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

from skor_bridge.capture.trigger_key import KEY_LOOP, key_kind, row_key_sql
from skor_bridge.sqlquote import (
    MAX_NAME_BYTES,
    dollar_quote,
    quote_ident,
    quote_literal,
    sql_comment,
)

if TYPE_CHECKING:
    from skor_bridge.capture.trigger_config import Op, TableSpec

__all__ = [
    "MAX_NAME_BYTES",
    "SEARCH_PATH",
    "capture_function_name",
    "data_expr",
    "dollar_quote",
    "key_kind",
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


def short_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:8]


def capture_function_name(schema: str, table: str) -> str:
    """Durable function name: readable slug plus a hash of the exact names, <= 63 bytes."""
    slug = re.sub(r"[^a-z0-9_]", "_", f"{schema}_{table}".lower())
    return f"capture_{slug[:46]}_{short_hash(schema, table)}"


def trigger_name(op: str) -> str:
    """Durable trigger name for `op` (insert, update, delete, moves_begin, moves_end)."""
    return f"{TRIGGER_PREFIX}skor_capture_{op}"


def notify_name(schema: str, table: str, op: Op) -> str:
    """Skor's function name, `notify_skor_<table>_<op>`, shortened past 63 bytes."""
    name = f"notify_skor_{table}_{op}"
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES - len(TRIGGER_PREFIX):
        return name
    suffix = f"_{short_hash(schema, table)}_{op}"
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
NEW_KEY, OLD_KEY = "\x01NEW_KEY\x01", "\x01OLD_KEY\x01"


def json_data(var: str, columns: tuple[str, ...] | None) -> str:
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


def trigger_when(spec: TableSpec, op: str) -> str:
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


def ensure_trigger(name: str, timing: str, level: str, when: str, call: str) -> str:
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


def drop_unwanted(functions: str) -> str:
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


def ensure_function(function: str, body_expr: str, definer: bool) -> str:
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


def table_block(spec: TableSpec, declare: str, work: str) -> str:
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
{_checks(spec)}{KEY_LOOP}{_user_when(spec)}{work}END"""
    return f"DO {dollar_quote(block)};\n"


def splice_keys(body: str) -> str:
    """plpgsql expression: `body` with the key placeholders replaced by the key SQL.

    Split here rather than replaced in SQL, so the script holds no control characters.
    """
    pieces = re.split(f"({NEW_KEY}|{OLD_KEY})", body)
    return "\n        || ".join(
        {NEW_KEY: "new_key", OLD_KEY: "old_key"}.get(piece) or quote_literal(piece)
        for piece in pieces
        if piece
    )
