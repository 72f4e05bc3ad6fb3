"""PostgreSQL connections: one place that sets timeouts and keeps passwords out of errors."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, TypeVar

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from skor_bridge.backoff import backoff_delay
from skor_bridge.config import redact
from skor_bridge.errors import DatabaseError

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Errors that mean "the connection is gone", as opposed to a bug in our SQL.
CONNECTION_ERRORS = (psycopg2.OperationalError, psycopg2.InterfaceError)

#: Seconds libpq waits for a server before giving up; keeps start-up failures under 30 s.
CONNECT_TIMEOUT = 10


class Stopped(Exception):
    """Raised inside a retry loop when the bridge is shutting down."""


class SchemaGone(Stopped):
    """The skor schema (or one of its tables) vanished under a running bridge, as after
    `triggers uninstall --purge`: nothing can be delivered or recorded any more. A Stopped,
    so every thread ends quietly; the bridge says it once, in one line, and exits."""

    def __init__(self) -> None:
        super().__init__(
            "the skor schema was dropped while the bridge ran (skor-bridge "
            "triggers uninstall --purge?); stopping. Install the triggers again "
            "before restarting: a restart does not recreate it"
        )


#: Errors that mean the skor schema or one of its tables is gone.
SCHEMA_ERRORS = (psycopg2.errors.UndefinedTable, psycopg2.errors.InvalidSchemaName)


def schema_gone(exc: BaseException) -> bool:
    return isinstance(exc, SCHEMA_ERRORS) and "skor" in str(exc)


def connect(dsn: str, purpose: str, autocommit: bool = True) -> psycopg2.extensions.connection:
    """Open a connection, or raise DatabaseError with a one-line, password-free message."""
    try:
        conn = psycopg2.connect(
            dsn,
            connect_timeout=CONNECT_TIMEOUT,
            application_name=f"skor-bridge {purpose}",
            # Keepalives let a half-open connection (server gone, no FIN) fail in ~15 s
            # instead of hanging until the kernel's two-hour default.
            keepalives=1,
            keepalives_idle=5,
            keepalives_interval=2,
            keepalives_count=3,
            # A bridge frozen inside a transaction (SIGSTOP, a paused VM) would keep the
            # sequencer row locked and block the instance that took over; PostgreSQL ends
            # such sessions. Our transactions never wait on the client for this long.
            options="-c idle_in_transaction_session_timeout=5000",
        )
    except psycopg2.Error as exc:
        raise DatabaseError(f"cannot connect to PostgreSQL: {describe(exc)}") from None
    conn.autocommit = autocommit
    return conn


def describe(exc: BaseException) -> str:
    """The first line of a database error, with any password removed; says EMFILE when the
    cause is this process running out of file descriptors (libpq only says "Too many open
    files", which reads like a server problem)."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else type(exc).__name__
    if "Too many open files" in first:
        first += " (EMFILE: this process is out of file descriptors; raise its limit, ulimit -n)"
    return redact(first)


class Reconnecting:
    """A connection that comes back: `run(op)` retries `op` on a fresh connection, with
    backoff, for as long as it takes, and raises `Stopped` once `stop` is set.

    Each user of the database owns one of these and uses it from one thread only.
    """

    def __init__(self, dsn: str, purpose: str, stop: threading.Event) -> None:
        self.dsn = dsn
        self.purpose = purpose
        self.stop = stop
        self._conn: psycopg2.extensions.connection | None = None
        self.healthy = True

    def run(self, op: Callable[[psycopg2.extensions.cursor], T]) -> T:
        attempt = 0
        while True:
            if self.stop.is_set() and attempt > 0:
                raise Stopped
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = connect(self.dsn, self.purpose)
                with self._conn.cursor() as cur:
                    result = op(cur)
                self.healthy = True
                return result
            except SCHEMA_ERRORS as exc:
                if schema_gone(exc):
                    self.stop.set()
                    raise SchemaGone from None
                raise
            except (DatabaseError, *CONNECTION_ERRORS) as exc:
                attempt += 1
                self.healthy = False
                self.close()
                delay = backoff_delay(attempt, 0.2, 5.0)
                log.warning(
                    "%s: database unavailable (%s); retrying in %.1fs",
                    self.purpose,
                    describe(exc),
                    delay,
                )
                if self.stop.wait(delay):
                    raise Stopped from None

    def close(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None
