"""`triggers install --mode wal` and its undoing: publication, REPLICA IDENTITY, slot.

Nothing is installed on a server that cannot do it (wal_level not logical, a database not
in UTF-8, a `when` the bridge cannot evaluate): each is one line. The order matters:
1. one transaction: the skor schema, REPLICA IDENTITY FULL on each table and its
   partitions (DELETE events carry the whole old row, and unchanged TOASTed values come
   from it), the publication (`publish_via_partition_root`, so partitions are named by the
   configured root), and skor.wal_state with the triggers.json entries;
2. the slot, created after the publication: decoding looks the publication up as of each
   transaction, and one created later would not exist for the slot's first changes. A
   slot that already exists is kept, so reinstalling loses nothing in between.
If step 2 fails, step 1 is undone. Trigger capture installed before is removed after.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

import psycopg2

from skor_bridge.capture.schema import _DDL_LOCK, ensure_schema
from skor_bridge.capture.trigger_sql import quote_ident
from skor_bridge.capture.triggers import record_sql
from skor_bridge.capture.wal.batch import when_sql
from skor_bridge.capture.wal.slot import PUBLICATION, slot_name
from skor_bridge.db import connect, describe
from skor_bridge.errors import DatabaseError, StartupError, TriggerError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from psycopg2.extensions import connection, cursor

    from skor_bridge.capture.trigger_config import TableSpec


class WalLevelError(TriggerError):
    """The server's wal_level is not logical."""


def _connect(dsn: str) -> connection:
    try:
        conn = connect(dsn, "triggers", autocommit=False)
    except DatabaseError as exc:
        raise StartupError(str(exc)) from None
    conn.set_client_encoding("UTF8")
    return conn


def _one(cur: cursor, sql: str, params: Sequence[object] | None = None) -> object:
    cur.execute(sql, params)
    row = cur.fetchone()
    return row[0] if row else None


def check_server(cur: cursor) -> None:
    level = _one(cur, "SHOW wal_level")
    if level != "logical":
        raise WalLevelError(
            f"wal_level is '{level}' on this server; WAL capture needs 'logical': run "
            "ALTER SYSTEM SET wal_level = logical and restart PostgreSQL (on a managed "
            "service, turn on its logical replication setting), or use --mode durable"
        )
    encoding = _one(
        cur,
        "SELECT pg_encoding_to_char(encoding) FROM pg_database WHERE datname = current_database()",
    )
    if encoding != "UTF8":
        raise TriggerError(
            f"the database's encoding is {encoding}; WAL capture reads values "
            "as the server stores them and needs UTF8 (use --mode durable)"
        )


def _check_table(cur: cursor, spec: TableSpec) -> None:
    kind = _one(
        cur, "SELECT relkind::text FROM pg_class WHERE oid = to_regclass(%s)", (spec.qualified,)
    )
    if kind is None:
        raise TriggerError(f"table {spec.qualified} does not exist")
    if kind not in ("r", "p"):
        raise TriggerError(f"{spec.qualified} is not a table")
    wanted: list[str] = [c for _, cols in spec.columns for c in cols or ()]
    wanted += spec.update_columns
    cur.execute(
        "SELECT attname FROM pg_attribute WHERE attrelid = to_regclass(%s)"
        " AND attnum > 0 AND NOT attisdropped",
        (spec.qualified,),
    )
    present = {row[0] for row in cur.fetchall()}
    for column in wanted:
        if column not in present:
            raise TriggerError(
                f"column {quote_ident(column)} of table {spec.qualified} does not exist"
            )
    if spec.when is not None:
        for op in spec.ops:
            cur.execute("SAVEPOINT skor_when")
            try:
                cur.execute("EXPLAIN " + when_sql(spec.qualified, op, spec.when), ([], []))
            except psycopg2.Error as exc:
                cur.execute("ROLLBACK TO SAVEPOINT skor_when")
                reason = " ".join((exc.diag.message_primary or describe(exc)).split())
                raise TriggerError(
                    f'{spec.qualified}: "when" cannot be evaluated in WAL mode for {op} '
                    f"({reason}); it may use OLD and NEW columns, constants and functions"
                ) from None
            cur.execute("RELEASE SAVEPOINT skor_when")


def _replica_identity(cur: cursor, spec: TableSpec) -> None:
    # The partitions' own setting is what their WAL records follow.
    cur.execute(
        "SELECT relid::regclass::text FROM pg_partition_tree(%s::regclass)"
        " WHERE relid <> %s::regclass",
        (spec.qualified, spec.qualified),
    )
    for member in [spec.qualified] + [row[0] for row in cur.fetchall()]:
        cur.execute(f"ALTER TABLE {member} REPLICA IDENTITY FULL")


def _publication(cur: cursor, specs: Sequence[TableSpec]) -> None:
    tables = ", ".join(spec.qualified for spec in specs)
    exists = _one(
        cur, "SELECT EXISTS (SELECT FROM pg_publication WHERE pubname = %s)", (PUBLICATION,)
    )
    options = "publish = 'insert, update, delete, truncate', publish_via_partition_root = true"
    if exists:
        cur.execute(f"ALTER PUBLICATION {PUBLICATION} SET TABLE {tables}")
        cur.execute(f"ALTER PUBLICATION {PUBLICATION} SET ({options})")
    else:
        cur.execute(f"CREATE PUBLICATION {PUBLICATION} FOR TABLE {tables} WITH ({options})")


def _entries(specs: Sequence[TableSpec]) -> str:
    """The specs back as triggers.json entries, for `run` to read."""
    entries = []
    for spec in specs:
        entry: dict[str, object] = {
            "table": spec.table,
            "schema": spec.schema,
            "columns": {op: list(cols) if cols else "*" for op, cols in spec.columns},
        }
        if spec.update_columns:
            entry["update_columns"] = list(spec.update_columns)
        if spec.when is not None:
            entry["when"] = spec.when
        if spec.old:
            entry["old"] = True
        entries.append(entry)
    return json.dumps(entries)


def install(dsn: str, specs: Sequence[TableSpec]) -> str:
    """Install WAL capture of `specs`; returns the slot's name. See the module docstring."""
    if not specs:
        raise TriggerError("WAL capture needs at least one table in the configuration")
    conn = _connect(dsn)
    try:
        with conn.cursor() as cur:
            check_server(cur)
            database = str(_one(cur, "SELECT current_database()"))
            slot = slot_name(database)
            try:
                cur.execute("SET LOCAL client_min_messages = warning")
                cur.execute("SELECT pg_advisory_xact_lock(%s)", (_DDL_LOCK,))
                ensure_schema(cur)
                for spec in specs:
                    _check_table(cur, spec)
                for spec in specs:
                    _replica_identity(cur, spec)
                _publication(cur, specs)
                cur.execute(
                    "INSERT INTO skor.wal_state (slot_name, publication, system_identifier,"
                    " timeline, tables, lsn) VALUES (%s, %s, '', 0, %s, '0/0')"
                    " ON CONFLICT (singleton) DO UPDATE SET tables = EXCLUDED.tables,"
                    " publication = EXCLUDED.publication, updated_at = now()",
                    (slot, PUBLICATION, _entries(specs)),
                )
                # What `triggers list` shows, and each table's OID: the reader knows a
                # table renamed while the bridge was down by it.
                cur.execute(record_sql(specs, "wal"))
            except psycopg2.Error as exc:
                raise _failure(exc) from None
        conn.commit()
        conn.autocommit = True
        try:
            _create_slot(conn, slot)
        except BaseException:
            _drop(conn, slot, drop_slot=False)
            raise
    finally:
        conn.close()
    return slot


def _failure(exc: psycopg2.Error) -> DatabaseError | TriggerError:
    if exc.pgcode is None:
        return DatabaseError(f"PostgreSQL connection failed: {describe(exc)}")
    return TriggerError(" ".join((exc.diag.message_primary or describe(exc)).split()))


def _create_slot(conn: connection, slot: str) -> None:
    from skor_bridge.capture.wal.source import identify

    with conn.cursor() as cur:
        existing = _one(
            cur,
            "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = %s",
            (slot,),
        )
        if existing is None:
            failover = ", false, false, true" if conn.server_version >= 170000 else ""
            try:
                cur.execute(
                    "SELECT lsn::text FROM pg_create_logical_replication_slot("
                    f"%s, 'pgoutput'{failover})",
                    (slot,),
                )
            except psycopg2.Error as exc:
                reason = " ".join((exc.diag.message_primary or describe(exc)).split())
                hint = (
                    " (the installing role needs REPLICATION: ALTER ROLE ... REPLICATION)"
                    if exc.pgcode == "42501"
                    else ""
                )
                raise TriggerError(
                    f"cannot create replication slot {slot}: {reason}{hint}"
                ) from None
            row = cur.fetchone()
            assert row is not None
            start = row[0]
        else:
            start = existing
        system_id, timeline = identify(conn.dsn)
        # A slot kept from before keeps its recorded position; a new one starts at its own.
        cur.execute(
            "UPDATE skor.wal_state SET system_identifier = %s, timeline = %s,"
            " lsn = CASE WHEN system_identifier = %s AND slot_name = %s AND %s"
            " THEN lsn ELSE %s::pg_lsn END, partial_lsn = CASE WHEN %s THEN partial_lsn END,"
            " updated_at = now()",
            (
                system_id,
                timeline,
                system_id,
                slot,
                existing is not None,
                start,
                existing is not None,
            ),
        )


def _drop(conn: connection, slot: str, drop_slot: bool = True) -> None:
    with conn.cursor() as cur:
        if drop_slot:
            active = _one(
                cur, "SELECT active_pid FROM pg_replication_slots WHERE slot_name = %s", (slot,)
            )
            if active is not None:
                raise TriggerError(
                    f"replication slot {slot} is in use (by process {active}, "
                    "a running bridge?): stop the bridge first"
                )
            cur.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE slot_name = %s",
                (slot,),
            )
        cur.execute(f"DROP PUBLICATION IF EXISTS {PUBLICATION}")
        cur.execute(
            "DO $$ BEGIN IF to_regclass('skor.wal_state') IS NOT NULL THEN"
            " DELETE FROM skor.wal_state; END IF;"
            " IF to_regclass('skor.captured_tables') IS NOT NULL THEN"
            " DELETE FROM skor.captured_tables WHERE mode = 'wal'; END IF; END $$"
        )


def uninstall(dsn: str) -> str | None:
    """Drop the slot, the publication and the WAL state; returns the slot's name, or None
    when WAL capture was not installed."""
    conn = _connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            slot = None
            if _one(cur, "SELECT to_regclass('skor.wal_state') IS NOT NULL"):
                slot = _one(cur, "SELECT slot_name FROM skor.wal_state")
            if slot is None:
                database = str(_one(cur, "SELECT current_database()"))
                if _one(
                    cur,
                    "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s",
                    (slot_name(database),),
                ):
                    slot = slot_name(database)
        try:
            _drop(conn, str(slot) if slot else "", drop_slot=slot is not None)
        except psycopg2.Error as exc:
            raise _failure(exc) from None
    finally:
        conn.close()
    return str(slot) if slot else None
