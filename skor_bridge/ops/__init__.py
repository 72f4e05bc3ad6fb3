"""Operator commands' database side: `status` figures and the `events` list, retry, replay.

Everything here reads or writes the `skor` schema through one short-lived connection that
the command opens; nothing talks to a running bridge directly. A running bridge notices an
operator's work through `skor.redeliveries`, which its workers poll every second.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from skor_bridge.config import check_dsn
from skor_bridge.db import connect
from skor_bridge.errors import ConfigError, DatabaseError

if TYPE_CHECKING:
    from psycopg2.extensions import connection, cursor


def open_database(dsn: str, purpose: str) -> connection:
    """A connection for one command, after checking that the skor schema exists there."""
    check_dsn(dsn)
    conn = connect(dsn, purpose, autocommit=False)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT to_regclass('skor.outputs') IS NOT NULL")
            row = cur.fetchone()
        conn.rollback()
    except BaseException:
        conn.close()
        raise
    if row is None or not row[0]:
        conn.close()
        raise DatabaseError(
            "no skor schema in this database; run `skor-bridge triggers "
            "install` or `skor-bridge run` first"
        )
    return conn


def output_position(cur: cursor, output: str) -> int:
    """The output's delivery position; a name no bridge ever used is bad input."""
    cur.execute("SELECT position FROM skor.outputs WHERE name = %s", (output,))
    row = cur.fetchone()
    if row is None:
        cur.execute("SELECT coalesce(string_agg(name, ', ' ORDER BY name), '') FROM skor.outputs")
        known = cur.fetchone()
        names = known[0] if known and known[0] else "none yet"
        raise ConfigError(f"output: no output named {output!r} (known: {names})")
    return int(row[0])
