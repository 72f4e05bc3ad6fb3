"""Capture triggers: triggers.json -> TableSpec -> one SQL script -> installed atomically.

Durable mode (the default) gives each table one function, `skor.capture_<slug>_<hash>()`,
and one AFTER ... FOR EACH ROW trigger per captured operation (`!skor_capture_insert`,
`!skor_capture_update`, `!skor_capture_delete`: the "!" makes them fire before any user
AFTER trigger, see trigger_sql). The function appends the change to skor.outbox inside the
writer's transaction, so a change is captured exactly when it commits. It neither
notifies nor limits sizes, so it cannot fail a write because a row is large; it has no
EXCEPTION block either, since that costs a subtransaction per row.

The functions are SECURITY DEFINER, owned by the installing role, with a fixed
search_path: writers need no privilege on schema skor, so they cannot write the outbox
directly and forge events.

Notify mode installs Skor's own functions, `<schema>.notify_skor_<table>_<op>()`, sending
`pg_notify('skor', json_build_object('table', ..., 'schema', ..., 'op', ..., 'data', ...))`.
That payload is limited to 8000 bytes, and a larger row makes the write fail (as in Skor).

Installing again replaces the previous configuration in place: what did not change is not
touched, changed functions and triggers are replaced (CREATE OR REPLACE), tables dropped
from triggers.json lose their triggers. Locks on the user's tables are taken with a short
lock_timeout and the whole install is retried, so it never queues the application behind
a long transaction for more than a moment.

This module writes the script and runs it; reading triggers.json is trigger_config's job,
the per-table SQL trigger_sql's. Their public names are re-exported here, so callers
import only `skor_bridge.capture.triggers`.
"""

from __future__ import annotations

import json
import time
from typing import TYPE_CHECKING

import psycopg2
import psycopg2.errors

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
from skor_bridge.capture.trigger_modes import durable_block, notify_block
from skor_bridge.capture.trigger_sql import (
    MAX_NAME_BYTES,
    TRIGGER_PREFIX,
    capture_function_name,
    dollar_quote,
    notify_name,
    quote_ident,
    quote_literal,
    sql_comment,
    trigger_name,
)
from skor_bridge.config import MODES, Mode
from skor_bridge.db import connect, describe
from skor_bridge.errors import ConfigError, DatabaseError, StartupError, TriggerError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from psycopg2.extensions import connection, cursor

# Includes the re-exports: without them listed, the imports look unused and get pruned.
__all__ = [
    "ENTRY_KEYS",
    "MAX_NAME_BYTES",
    "OPS",
    "Op",
    "TableSpec",
    "capture_function_name",
    "capture_problems",
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
DURABLE_TRIGGER = {op: trigger_name(op) for op in OPS}

#: How long one attempt waits for a lock on a user's table before letting go of all it
#: holds (so the application waits on us at most this long), and how long install keeps
#: retrying by default.
LOCK_TIMEOUT = 0.2
LOCK_WAIT = 60.0


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
    SELECT p.oid::regprocedure AS fn, n.nspname, p.proname
    FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace
    WHERE p.prorettype = 'pg_catalog.trigger'::pg_catalog.regtype
      AND ((n.nspname = 'skor' AND starts_with(p.proname, 'capture_'))
           OR starts_with(p.proname, 'notify_skor_'))"""


def _drop_functions(keep: list[tuple[str, str]]) -> str:
    """Drop the capture functions either mode installed that `keep` does not name, and with
    them their triggers: tables no longer configured stop being captured."""
    schemas = "ARRAY[" + ", ".join(quote_literal(s) for s, _ in keep) + "]::text[]"
    names = "ARRAY[" + ", ".join(quote_literal(f) for _, f in keep) + "]::text[]"
    block = f"""\
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN SELECT installed.fn FROM ({_INSTALLED_FUNCTIONS.strip()}) AS installed
              WHERE NOT EXISTS (SELECT FROM unnest({schemas}, {names}) AS k(s, f)
                                WHERE k.s = installed.nspname AND k.f = installed.proname)
    LOOP
        EXECUTE format('DROP FUNCTION %s CASCADE', fn);
    END LOOP;
END"""
    return f"DO {dollar_quote(block)};\n"


def record_sql(specs: Sequence[TableSpec], mode: Mode) -> str:
    """SQL recording what is installed in skor.captured_tables (read by `inventory`), in
    the script itself, so that an install applied with psql is recorded too. The table's
    OID is recorded with it: a renamed table is still captured and still recognised."""
    keep = ", ".join(f"({quote_literal(s.schema)}, {quote_literal(s.table)})" for s in specs)
    text = (
        "DELETE FROM skor.captured_tables"
        + (f" WHERE (schema_name, table_name) NOT IN ({keep})" if specs else "")
        + ";\n"
    )
    for spec in specs:
        columns = json.dumps(
            {op: list(cols) if cols is not None else None for op, cols in spec.columns},
            ensure_ascii=False,
        )
        update_columns = "ARRAY[" + ", ".join(map(quote_literal, spec.update_columns)) + "]::text[]"
        text += f"""\
INSERT INTO skor.captured_tables AS c (schema_name, table_name, mode, ops, columns,
                                       update_columns, condition, key_columns, relid)
SELECT {quote_literal(spec.schema)}, {quote_literal(spec.table)}, '{mode}',
       ARRAY[{", ".join(f"'{op}'" for op in spec.ops)}]::text[], {quote_literal(columns)}::jsonb,
       {update_columns}, {quote_literal(spec.when) if spec.when is not None else "NULL"},
       ARRAY(SELECT a.attname::text FROM pg_catalog.pg_index i
             CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
             JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
             WHERE i.indrelid = to_regclass({quote_literal(spec.qualified)}) AND i.indisprimary
             ORDER BY k.n),
       to_regclass({quote_literal(spec.qualified)})::oid
ON CONFLICT (schema_name, table_name) DO UPDATE SET
    mode = excluded.mode, ops = excluded.ops, columns = excluded.columns,
    update_columns = excluded.update_columns, condition = excluded.condition,
    key_columns = excluded.key_columns, relid = excluded.relid, installed_at = now()
WHERE (c.mode, c.ops, c.columns, c.update_columns, c.condition, c.key_columns, c.relid)
      IS DISTINCT FROM (excluded.mode, excluded.ops, excluded.columns,
                        excluded.update_columns, excluded.condition, excluded.key_columns,
                        excluded.relid);
"""
    return text


def describe_spec(spec: TableSpec) -> str:
    """One summary line, `public.orders: insert, update, delete` (`; old row on update`
    when the table is captured with "old")."""
    return f"{spec}: {', '.join(spec.ops)}" + ("; old row on update" if spec.old else "")


def _functions(specs: Sequence[TableSpec], mode: Mode) -> list[tuple[str, str]]:
    if mode == "durable":
        return [("skor", capture_function_name(s.schema, s.table)) for s in specs]
    return [(s.schema, notify_name(s.schema, s.table, op)) for s in specs for op in s.ops]


def _steps(specs: Sequence[TableSpec], mode: Mode) -> list[tuple[TableSpec | None, str]]:
    """The script in pieces, each with the table its errors are about (if any)."""
    if mode not in MODES:
        raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {mode!r}")
    seen: set[tuple[str, str]] = set()
    for spec in specs:
        if (spec.schema, spec.table) in seen:
            raise ConfigError(f"table {spec} is configured twice")
        seen.add((spec.schema, spec.table))
    render = durable_block if mode == "durable" else notify_block
    steps: list[tuple[TableSpec | None, str]] = [(None, _drop_functions(_functions(specs, mode)))]
    steps += [(spec, f"\n-- {sql_comment(describe_spec(spec))}\n{render(spec)}") for spec in specs]
    steps.append((None, record_sql(specs, mode)))
    return steps


def generate_sql(specs: Sequence[TableSpec], mode: Mode = "durable") -> str:
    """The whole installation as one script, for `psql --single-transaction`.

    It creates or upgrades the skor schema (notify mode too: dead letters live there),
    drops capture of tables no longer configured, checks that each table and column
    exists, then creates or replaces what changed. Applied outside one transaction, a
    failure would leave a partial installation; `install()` always runs it in one.
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


class _LockBusy(Exception):
    def __init__(self, spec: TableSpec | None) -> None:
        self.spec = spec


def _run_steps(
    conn: connection, steps: list[tuple[TableSpec | None, str]], after: str = ""
) -> None:
    if conn.server_version < 140000:  # CREATE OR REPLACE TRIGGER
        raise TriggerError(
            "triggers install needs PostgreSQL 14 or newer; this server is "
            f"{conn.server_version // 10000}"
        )
    with conn.cursor() as cur:
        spec: TableSpec | None = None
        try:
            cur.execute(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT * 1000)}ms'")
            cur.execute(_PREAMBLE)
            ensure_schema(cur)
            for step_spec, sql in steps:
                spec = step_spec
                cur.execute(sql)
            spec = None
            if after:
                cur.execute(after)
        except psycopg2.errors.LockNotAvailable:
            raise _LockBusy(spec) from None
        except psycopg2.Error as exc:
            raise _failure(exc, spec) from None


def _with_retries(dsn: str, lock_wait: float, attempt: Callable[[connection], None]) -> None:
    """Run `attempt` in one transaction, again after a pause while a lock is busy."""
    deadline = time.monotonic() + lock_wait
    pause = 0.1
    while True:
        conn = _connect(dsn)
        try:
            attempt(conn)
            conn.commit()
            return
        except _LockBusy as busy:
            conn.rollback()
            if time.monotonic() + pause > deadline:
                what = f"table {busy.spec.qualified}" if busy.spec else "a captured table"
                raise TriggerError(
                    f"could not lock {what} within {lock_wait:g} s: other transactions kept "
                    "using it (look for long or idle-in-transaction sessions); nothing was "
                    "changed, install again later"
                ) from None
        finally:
            conn.close()  # without a commit, PostgreSQL rolls everything back
        time.sleep(pause)
        pause = min(pause * 2, 2.0)


def install(
    dsn: str,
    specs: Sequence[TableSpec],
    mode: Mode = "durable",
    grant_to: Sequence[str] = (),
    lock_wait: float = LOCK_WAIT,
) -> list[str]:
    """Install `specs` in one transaction, replacing what was installed before in place.

    Returns notes for the user: other AFTER ROW triggers on captured tables, and what
    `grant_to` no longer does (writers need no privilege: the capture functions run as
    their owner; the roles' old INSERT on skor.outbox is revoked).

    Raises TriggerError when a table or column is missing, PostgreSQL rejects a `when`
    condition, a key is DEFERRABLE, or a table stayed locked for `lock_wait` seconds;
    StartupError when the database cannot be reached. On any error nothing changes.
    """
    steps = _steps(specs, mode)
    revoke = "".join(f"REVOKE ALL ON skor.outbox FROM {quote_ident(role)};\n" for role in grant_to)
    _with_retries(dsn, lock_wait, lambda conn: _run_steps(conn, steps, revoke))
    notes = [
        f"note: --grant {role}: writers need no privilege any more (capture runs as "
        "the installing role); its access to skor.outbox was revoked"
        for role in grant_to
    ]
    return notes + _other_triggers(dsn, specs)


_OTHER_TRIGGERS = """
SELECT t.tgname
FROM pg_catalog.pg_trigger t
WHERE t.tgrelid = to_regclass(%s) AND NOT t.tgisinternal AND t.tgparentid = 0
  AND t.tgtype & 1 = 1 AND t.tgtype & 2 = 0 AND t.tgtype & 64 = 0
  AND NOT starts_with(t.tgname, %s)
ORDER BY t.tgname
"""


def _other_triggers(dsn: str, specs: Sequence[TableSpec]) -> list[str]:
    """A note per captured table that has AFTER ROW triggers of the user's."""
    conn = _connect(dsn)
    notes = []
    try:
        with conn.cursor() as cur:
            for spec in specs:
                cur.execute(_OTHER_TRIGGERS, (spec.qualified, TRIGGER_PREFIX))
                names = [row[0] for row in cur.fetchall()]
                if not names:
                    continue
                first = [n for n in names if n.encode() < TRIGGER_PREFIX.encode()]
                order = (
                    f"{', '.join(map(quote_ident, first))} fire(s) BEFORE capture: "
                    "rename to keep each change recorded before the changes it causes"
                    if first
                    else "capture fires first, so a change is recorded before the changes they make"
                )
                notes.append(
                    f"note: {spec.qualified} has other AFTER ROW triggers: "
                    f"{', '.join(map(quote_ident, names))}; {order}"
                )
    finally:
        conn.close()
    return notes


def uninstall(dsn: str, purge: bool = False, lock_wait: float = LOCK_WAIT) -> int:
    """Drop every capture trigger and function of both modes (Skor's included).

    With `purge`, also drop schema skor and everything in it: outbox, log, dead letters.
    Returns how many trigger functions were dropped.
    """
    counted: list[int] = []

    def attempt(conn: connection) -> None:
        with conn.cursor() as cur:
            try:
                cur.execute(f"SET LOCAL lock_timeout = '{int(LOCK_TIMEOUT * 1000)}ms'")
                cur.execute(_PREAMBLE)
                cur.execute(f"SELECT count(*) FROM ({_INSTALLED_FUNCTIONS}) AS installed")
                row = cur.fetchone()
                counted[:] = [int(row[0]) if row else 0]
                cur.execute(_drop_functions([]))
                if purge:
                    cur.execute("DROP SCHEMA IF EXISTS skor CASCADE")
                else:
                    cur.execute(
                        # WAL capture's rows go with its slot (wal.install.uninstall).
                        "DO $skor$ BEGIN IF to_regclass('skor.captured_tables') IS NOT"
                        " NULL THEN DELETE FROM skor.captured_tables WHERE mode <> 'wal';"
                        " END IF; END $skor$"
                    )
            except psycopg2.errors.LockNotAvailable:
                raise _LockBusy(None) from None
            except psycopg2.Error as exc:
                raise _failure(exc, None) from None

    _with_retries(dsn, lock_wait, attempt)
    return counted[0] if counted else 0


# -- what needs a look -----------------------------------------------------------------


def capture_problems(cur: cursor) -> list[str]:
    """One line per problem of an installed capture, `schema.table: what and what to do`.

    For `status` and the bridge's log (`triggers list` shows the same per table, from
    `inventory.captured`): a captured column renamed or dropped, the primary key changed or
    made DEFERRABLE, the table gone, a capture trigger dropped or disabled. Writes never
    fail because of these; events carry what exists.
    """
    return [
        f"{entry.schema}.{entry.table}: {problem}"
        for entry in inventory.captured(cur)
        for problem in entry.problems
    ]
