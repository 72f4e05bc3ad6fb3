"""Active/standby: one instance delivers, the others wait to take over.

The active instance holds a session advisory lock on a dedicated connection. When its
process dies, PostgreSQL drops the connection and the lock at once, and a standby polling
every `POLL` seconds takes over. When its host vanishes without closing the socket, the
lock would outlive it, so the active instance also refreshes a heartbeat row, and a
standby that finds the heartbeat older than the failover timeout terminates the stale
backend, which frees the lock.

Fencing (an instance frozen by SIGSTOP, a GC pause or a VM stall, that resumes after a
standby took over, must not deliver anything): every session of an instance carries the
instance's tag in its application_name, and
- an instance sends only while it can prove it still leads: `may_send()` holds for
  `lease` seconds (half the failover timeout, on the monotonic clock) after the start of
  its last successful heartbeat. A standby takes over only once the heartbeat is a whole
  failover timeout old, so a resumed instance finds its lease expired before it could
  collide, and sends nothing until a heartbeat proves it still leads (it does not: the
  heartbeat fails and it stands by);
- the instance taking over cuts off every session of the one it replaces (sequencer,
  outputs, retention, not only the one holding the lock), found by that instance's tag.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time

import psycopg2
import psycopg2.extensions

from skor_bridge.db import CONNECTION_ERRORS, SchemaGone, connect, describe, schema_gone
from skor_bridge.errors import DatabaseError

log = logging.getLogger(__name__)

#: pg_advisory_lock key of the active instance ("skor" in ASCII, plus one).
LEADER_LOCK = 0x736B6F73

#: How often a standby tries to become active.
POLL = 0.5

# Every session whose application_name starts with this and the old instance's tag.
_CUT_OFF = """
SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
WHERE datname = current_database() AND pid <> pg_backend_pid()
  AND starts_with(application_name, 'skor-bridge [' || %s || ']')
"""


def instance_tag(instance: str) -> str:
    """A short tag of an instance name, carried in its sessions' application_name (which
    PostgreSQL truncates to 63 bytes, so not the name itself)."""
    return hashlib.md5(instance.encode(), usedforsecurity=False).hexdigest()[:12]


class Leadership:
    def __init__(self, dsn: str, instance: str, failover_timeout: float) -> None:
        self.dsn = dsn
        self.instance = instance
        self.failover_timeout = failover_timeout
        self.tag = instance_tag(instance)
        #: How long after a heartbeat started this instance may still send (see docstring).
        self.lease = failover_timeout / 2
        #: How often the active instance should call `heartbeat()` to keep its lease.
        self.heartbeat_interval = min(1.0, failover_timeout / 5)
        self._conn: psycopg2.extensions.connection | None = None
        self._announced_standby = False
        self._renewed: float | None = None

    def may_send(self) -> bool:
        """True while this instance can prove it leads; cheap, called before every send."""
        renewed = self._renewed
        return renewed is not None and time.monotonic() - renewed < self.lease

    def acquire(self, stop: threading.Event) -> bool:
        """Block until this instance is active (True) or `stop` is set (False)."""
        while not stop.is_set():
            try:
                if self._try_acquire():
                    return True
            except (DatabaseError, *CONNECTION_ERRORS) as exc:
                log.warning("leader election: database unavailable (%s)", describe(exc))
                self.release()
            stop.wait(POLL)
        return False

    def _try_acquire(self) -> bool:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn, f"[{self.tag}] leader {self.instance}")
        with self._conn.cursor() as cur:
            self._register(cur, "standby")
            started = time.monotonic()
            cur.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK,))
            row = cur.fetchone()
            if row is not None and row[0]:
                cur.execute("SELECT instance FROM skor.leader")
                previous = cur.fetchone()
                if previous is not None and previous[0] != self.instance:
                    self._cut_off(cur, str(previous[0]))
                cur.execute(
                    "INSERT INTO skor.leader (instance, backend_pid, heartbeat)"
                    " VALUES (%s, pg_backend_pid(), now()) ON CONFLICT (singleton) DO UPDATE"
                    " SET instance = excluded.instance, backend_pid = excluded.backend_pid,"
                    " heartbeat = excluded.heartbeat",
                    (self.instance,),
                )
                self._register(cur, "active")
                self._renewed = started
                log.info("instance %s is now active", self.instance)
                self._announced_standby = False
                return True
            cur.execute(
                "SELECT instance, backend_pid, extract(epoch FROM now() - heartbeat)"
                " FROM skor.leader"
            )
            holder = cur.fetchone()
        if not self._announced_standby:
            log.info(
                "instance %s is standing by (active: %s)",
                self.instance,
                holder[0] if holder else "unknown",
            )
            self._announced_standby = True
        if holder is not None and holder[2] > self.failover_timeout:
            log.warning(
                "active instance %s missed heartbeats for %.0fs; taking over", holder[0], holder[2]
            )
            with self._conn.cursor() as cur:
                self._cut_off(cur, str(holder[0]))
                # The lock holder itself, whatever its name says (an older release's).
                cur.execute("SELECT pg_terminate_backend(%s)", (holder[1],))
        return False

    def _cut_off(self, cur: psycopg2.extensions.cursor, instance: str) -> None:
        """Terminate every session of `instance` (another instance, never this one)."""
        cur.execute(_CUT_OFF, (instance_tag(instance),))
        row = cur.fetchone()
        if row is not None and row[0]:
            log.warning(
                "cut off %d database session(s) of instance %s, which led before", row[0], instance
            )

    def heartbeat(self) -> bool:
        """Refresh the heartbeat; False means leadership is lost and work must stop."""
        if self._conn is None or self._conn.closed:
            self._renewed = None
            return False
        try:
            with self._conn.cursor() as cur:
                started = time.monotonic()
                cur.execute(
                    "UPDATE skor.leader SET heartbeat = now() WHERE backend_pid = pg_backend_pid()"
                )
                if cur.rowcount != 1:
                    self._renewed = None
                    return False
                # The lease runs from before the statement: PostgreSQL's now() of this
                # heartbeat, which a standby measures from, is no earlier than that.
                self._renewed = started
                self._register(cur, "active")
                return True
        except (psycopg2.Error, *CONNECTION_ERRORS) as exc:
            self._renewed = None
            if schema_gone(exc):
                raise SchemaGone from None
            log.warning("lost leadership: %s", describe(exc))
            return False

    def _register(self, cur: psycopg2.extensions.cursor, role: str) -> None:
        """Keep this instance visible to `skor-bridge status`; rows of instances silent for
        a day are removed so the table does not collect every pod that ever ran."""
        cur.execute(
            "INSERT INTO skor.instances (instance, role) VALUES (%s, %s)"
            " ON CONFLICT (instance) DO UPDATE SET role = excluded.role, heartbeat = now()",
            (self.instance, role),
        )
        cur.execute("DELETE FROM skor.instances WHERE heartbeat < now() - interval '1 day'")

    def leave(self) -> None:
        """A clean stop: forget this instance so `status` does not show it for 30 s."""
        try:
            if self._conn is None or self._conn.closed:
                self._conn = connect(self.dsn, f"[{self.tag}] leader {self.instance}")
            with self._conn.cursor() as cur:
                cur.execute("DELETE FROM skor.instances WHERE instance = %s", (self.instance,))
        except (DatabaseError, psycopg2.Error):
            pass  # the row ages out; status treats silent instances as gone
        self.release()

    def release(self) -> None:
        """Closing the connection frees the lock, so a standby takes over at once."""
        self._renewed = None
        if self._conn is not None:
            try:
                self._conn.close()
            except psycopg2.Error:
                pass
            self._conn = None
