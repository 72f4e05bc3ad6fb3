"""Capture triggers: triggers.json -> TableSpec -> one SQL script -> installed atomically.

Durable mode (the default) gives each table one function, `skor.capture_<slug>_<hash>()`,
and one AFTER ... FOR EACH ROW trigger per captured operation (`skor_capture_insert`,
`skor_capture_update`, `skor_capture_delete`). The function appends the change to
skor.outbox inside the writer's transaction, so a change is captured exactly when it
commits. It neither notifies nor limits sizes, so it cannot fail a write because a row is
large; it has no EXCEPTION block either, since that costs a subtransaction per row.

Notify mode installs Skor's own triggers: `<schema>.notify_skor_<table>_<op>()` sending
`pg_notify('skor', json_build_object('table', ..., 'schema', ..., 'op', ..., 'data', ...))`.
That payload is limited to 8000 bytes, and a larger row makes the write fail (as in Skor).

Every script first drops what either mode installed before, so running `install` again
replaces the previous configuration, and tables dropped from triggers.json stop being
captured. Names from the config reach SQL only as quoted identifiers or string literals.

The functions run with the writer's privileges, as Skor's did: a role that writes a
captured table needs USAGE on schema skor and INSERT on skor.outbox. Primary keys are
read when the script runs, so install again after changing a table's primary key.

This module writes the script and runs it. Reading triggers.json is trigger_config's job,
quoting and naming trigger_sql's; their public names are re-exported here, so callers
import only `skor_bridge.capture.triggers`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import psycopg2

from skor_bridge.capture import inventory
from skor_bridge.capture.schema import _DDL_LOCK, DDL, ensure_schema
from skor_bridge.capture.trigger_config import (
    ENTRY_KEYS,
    OPS,
    Op,
    TableSpec,
    load_config,
    parse_config,
)
from skor_bridge.capture.trigger_sql import (
    MAX_NAME_BYTES,
    capture_function_name,
    data_expr,
    dollar_quote,
    notify_name,
    quote_ident,
    quote_literal,
    row_record,
    sql_comment,
    when_clause,
)
from skor_bridge.config import MODES, Mode
from skor_bridge.db import connect, describe
from skor_bridge.errors import ConfigError, DatabaseError, StartupError, TriggerError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from psycopg2.extensions import connection

# Includes the re-exports: without them listed, the imports look unused and get pruned.
__all__ = [
    "ENTRY_KEYS",
    "MAX_NAME_BYTES",
    "OPS",
    "Op",
    "TableSpec",
    "capture_function_name",
    "describe_spec",
    "dollar_quote",
    "ensure_schema",
    "generate_sql",
    "install",
    "load_config",
    "notify_name",
    "parse_config",
    "quote_ident",
    "quote_literal",
    "uninstall",
]

#: Name of the durable trigger for each operation; trigger names are per table.
DURABLE_TRIGGER = {op: f"skor_capture_{op}" for op in OPS}


# -- SQL script ----------------------------------------------------------------------------


# Fixed settings make the script read the same in any session (the literals are UTF-8 and
# written for standard strings), and the lock serialises it with the bridge's own
# ensure_schema and with a concurrent install.
_PREAMBLE = f"""\
SET LOCAL client_encoding = 'UTF8';
SET LOCAL standard_conforming_strings = on;
SET LOCAL client_min_messages = warning;
DO $skor$ BEGIN PERFORM pg_advisory_xact_lock({_DDL_LOCK}); END $skor$;
"""

#: Trigger functions either mode installed: ours in schema skor, Skor's anywhere.
_INSTALLED_FUNCTIONS = """
    SELECT p.oid::regprocedure
    FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
    WHERE p.prorettype = 'trigger'::regtype
      AND ((n.nspname = 'skor' AND starts_with(p.proname, 'capture_'))
           OR starts_with(p.proname, 'notify_skor_'))"""

_DROP_INSTALLED = f"""\
-- Drop the capture functions either mode installed before, and with them their triggers:
-- tables no longer configured stop being captured.
DO $skor$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN {_INSTALLED_FUNCTIONS.strip()}
    LOOP
        EXECUTE format('DROP FUNCTION %s CASCADE', fn);
    END LOOP;
END
$skor$;
"""


def _checks(spec: TableSpec) -> str:
    """plpgsql that raises unless the table and every configured column exist.

    It runs in the script itself, so `psql` on generated output checks as much as install.
    """
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
    IF (SELECT relkind FROM pg_class WHERE oid = target) NOT IN ('r', 'p') THEN
        RAISE EXCEPTION USING ERRCODE = 'wrong_object_type',
            MESSAGE = {quote_literal(f"{table} is not a table")};
    END IF;
"""
    if columns:
        text += f"""\
    FOREACH col IN ARRAY ARRAY[{", ".join(map(quote_literal, columns))}]::text[] LOOP
        IF NOT EXISTS (SELECT FROM pg_attribute WHERE attrelid = target AND attname = col
                       AND attnum > 0 AND NOT attisdropped) THEN
            RAISE EXCEPTION USING ERRCODE = 'undefined_column',
                MESSAGE = format('column %s of table %s does not exist',
                                 '"' || replace(col, '"', '""') || '"', {quote_literal(table)});
        END IF;
    END LOOP;
"""
    return text


# The row key is the primary key as compact JSON ({"id":42}, {"a":1,"b":"x"}), built by
# concatenating JSON-escaped names (to_json of the name, as json.dumps would write them)
# with to_json(NEW.col)::text. The primary key is read from pg_index by the script itself,
# while it runs, rather than by Python beforehand: `triggers generate` needs no database,
# and the psql-applied output is exactly what `install` runs. Only the key is dynamic; the
# rest of the function body is fixed text from Python, passed in as string literals.
_KEY_LOOP = """\
    FOR col IN
        SELECT a.attname
        FROM pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        WHERE i.indrelid = target AND i.indisprimary
        ORDER BY k.n
    LOOP
        sep := CASE WHEN new_key IS NULL THEN '{' ELSE ',' END || to_json(col)::text || ':';
        new_key := concat_ws(' || ', new_key, quote_literal(sep),
                             format('to_json(NEW.%I)::text', col));
        old_key := concat_ws(' || ', old_key, quote_literal(sep),
                             format('to_json(OLD.%I)::text', col));
    END LOOP;
    new_key := coalesce(new_key || ' || ''}''', 'NULL');
    old_key := coalesce(old_key || ' || ''}''', 'NULL');
"""

# Markers where the DO block splices in the key expressions; no name can hold a NUL.
_NEW_KEY, _OLD_KEY = "\x00NEW\x00", "\x00OLD\x00"


def _durable_body(spec: TableSpec) -> str:
    lines = ["BEGIN"]
    for index, (op, cols) in enumerate(spec.columns):
        record = row_record(op)
        key = _OLD_KEY if op == "delete" else _NEW_KEY
        lines += [
            f"    {'IF' if index == 0 else 'ELSIF'} TG_OP = '{op.upper()}' THEN",
            "        INSERT INTO skor.outbox (schema_name, table_name, op, row_key, data)",
            f"        VALUES (TG_TABLE_SCHEMA, TG_TABLE_NAME, TG_OP, {key},",
            f"                {data_expr(record, cols)}::text);",
        ]
    lines += ["    END IF;", "    RETURN NULL;", "END"]
    return "\n".join(lines)


def _durable_table(spec: TableSpec) -> str:
    function = f"skor.{quote_ident(capture_function_name(spec.schema, spec.table))}"
    pieces = re.split(f"({_NEW_KEY}|{_OLD_KEY})", _durable_body(spec))
    body_expr = "\n        || ".join(
        {_NEW_KEY: "new_key", _OLD_KEY: "old_key"}.get(piece) or quote_literal(piece)
        for piece in pieces
        if piece
    )
    block = f"""\
DECLARE
    target regclass := to_regclass({quote_literal(spec.qualified)});
    col text;
    sep text;
    new_key text;
    old_key text;
BEGIN
{_checks(spec)}{_KEY_LOOP}    EXECUTE format(
        'CREATE FUNCTION %s() RETURNS trigger LANGUAGE plpgsql AS %L',
        {quote_literal(function)},
        {body_expr});
END"""
    triggers = "".join(
        f"CREATE TRIGGER {DURABLE_TRIGGER[op]} AFTER {op.upper()} ON {spec.qualified}\n"
        f"    FOR EACH ROW{when_clause(spec, op)}\n"
        f"    EXECUTE FUNCTION {function}();\n"
        for op in spec.ops
    )
    return f"DO {dollar_quote(block)};\n{triggers}"


def _notify_table(spec: TableSpec) -> str:
    checks = f"""\
DECLARE
    target regclass := to_regclass({quote_literal(spec.qualified)});
    col text;
BEGIN
{_checks(spec)}END"""
    parts = [f"DO {dollar_quote(checks)};\n"]
    for op, cols in spec.columns:
        name = notify_name(spec.schema, spec.table, op)
        function = f"{quote_ident(spec.schema)}.{quote_ident(name)}"
        body = f"""\
BEGIN
    PERFORM pg_notify('skor', json_build_object(
        'table', TG_TABLE_NAME,
        'schema', TG_TABLE_SCHEMA,
        'op', TG_OP,
        'data', {data_expr(row_record(op), cols)}
    )::text);
    RETURN NULL;
END"""
        parts.append(
            f"CREATE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS "
            f"{dollar_quote(body)};\n"
            f"CREATE TRIGGER {quote_ident(name)} AFTER {op.upper()} ON {spec.qualified}\n"
            f"    FOR EACH ROW{when_clause(spec, op)}\n"
            f"    EXECUTE FUNCTION {function}();\n"
        )
    return "".join(parts)


def describe_spec(spec: TableSpec) -> str:
    """One summary line, `public.orders: insert, update, delete`."""
    return f"{spec}: {', '.join(spec.ops)}"


def _steps(specs: Sequence[TableSpec], mode: Mode) -> list[tuple[TableSpec | None, str]]:
    """The script in pieces, each with the table its errors are about (if any)."""
    if mode not in MODES:
        raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        if (spec.schema, spec.table) in seen:
            raise ConfigError(f"table {spec} is configured twice")
        seen.add((spec.schema, spec.table))
    render = _durable_table if mode == "durable" else _notify_table
    steps: list[tuple[TableSpec | None, str]] = [(None, _DROP_INSTALLED)]
    steps += [(spec, f"\n-- {sql_comment(describe_spec(spec))}\n{render(spec)}") for spec in specs]
    return steps


def generate_sql(specs: Sequence[TableSpec], mode: Mode = "durable") -> str:
    """The whole installation as one script, for `psql --single-transaction`.

    It creates the skor schema if needed (notify mode too: dead letters live there), drops
    every capture trigger installed before, checks that each table and column exists, then
    creates the functions and triggers. Applied outside one transaction, a failure would
    leave a partial installation; `install()` always runs it in one.
    """
    header = (
        f"-- skor-bridge capture triggers, {mode} mode, {len(specs)} table(s).\n"
        '-- Apply with: psql "$DSN" --single-transaction -v ON_ERROR_STOP=1 -f FILE\n'
    )
    steps = "".join(sql for _, sql in _steps(specs, mode))
    return f"{header}{_PREAMBLE}{DDL.strip()}\n\n{steps}"


# -- database ------------------------------------------------------------------------------


def _connect(dsn: str) -> connection:
    try:
        conn = connect(dsn, "triggers", autocommit=False)
    except DatabaseError as exc:
        raise StartupError(str(exc)) from None
    conn.set_client_encoding("UTF8")
    return conn


def _failure(exc: psycopg2.Error, spec: TableSpec | None) -> DatabaseError | TriggerError:
    if exc.pgcode is None:  # no server answer: the connection itself failed
        return DatabaseError(f"PostgreSQL connection failed: {describe(exc)}")
    message = exc.diag.message_primary or describe(exc)
    message = " ".join(message.split())
    if spec is not None and spec.qualified not in message:
        message = f"{spec.qualified}: {message}"
    return TriggerError(message)


def install(dsn: str, specs: Sequence[TableSpec], mode: Mode = "durable",
            grant_to: Sequence[str] = ()) -> None:
    """Replace the installed capture triggers with `specs`, in one transaction.

    `grant_to` names roles that write to the captured tables without owning schema skor:
    the capture functions run with the writer's privileges (as Skor's did), so those roles
    need to insert into the outbox, and nothing more.

    Raises TriggerError when a table or column is missing or PostgreSQL rejects a `when`
    condition, StartupError when the database cannot be reached. On any error nothing
    changes.
    """
    steps = _steps(specs, mode)
    conn = _connect(dsn)
    try:
        with conn.cursor() as cur:
            try:
                cur.execute(_PREAMBLE)
                ensure_schema(cur)
            except psycopg2.Error as exc:
                raise _failure(exc, None) from None
            for spec, sql in steps:
                try:
                    cur.execute(sql)
                except psycopg2.Error as exc:
                    raise _failure(exc, spec) from None
            inventory.record(cur, specs, mode)
            for role in grant_to:
                try:
                    cur.execute(f"GRANT USAGE ON SCHEMA skor TO {quote_ident(role)};"
                                f" GRANT INSERT ON skor.outbox TO {quote_ident(role)}")
                except psycopg2.Error as exc:
                    raise _failure(exc, None) from None
        conn.commit()
    finally:
        conn.close()  # without a commit, PostgreSQL rolls everything back


def uninstall(dsn: str, purge: bool = False) -> int:
    """Drop every capture trigger and function of both modes (Skor's included).

    With `purge`, also drop schema skor and everything in it: outbox, log, dead letters.
    Returns how many trigger functions were dropped.
    """
    conn = _connect(dsn)
    try:
        with conn.cursor() as cur:
            try:
                cur.execute(_PREAMBLE)
                cur.execute(f"SELECT count(*) FROM ({_INSTALLED_FUNCTIONS}) AS installed")
                row = cur.fetchone()
                cur.execute(_DROP_INSTALLED)
                cur.execute("DO $$ BEGIN IF to_regclass('skor.captured_tables') IS NOT NULL"
                            " THEN DELETE FROM skor.captured_tables; END IF; END $$")
                if purge:
                    cur.execute("DROP SCHEMA IF EXISTS skor CASCADE")
            except psycopg2.Error as exc:
                raise _failure(exc, None) from None
        conn.commit()
    finally:
        conn.close()
    return int(row[0]) if row else 0
