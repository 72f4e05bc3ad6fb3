"""Skor's original capture: LISTEN on a channel that `pg_notify` triggers publish to.

Lossy by design, as Skor was: changes made while no bridge listens are never seen, and
PostgreSQL refuses a payload over 8000 bytes (the user's write fails). Kept for users who
want exactly Skor's triggers; the durable mode is the default.
"""

from __future__ import annotations

import json
import logging
import select
import threading
import time
import uuid
from collections import deque
from typing import TYPE_CHECKING, Any

import psycopg2

from skor_bridge.backoff import backoff_delay
from skor_bridge.capture import progress
from skor_bridge.capture.notify_payload import row_key, top_level_texts
from skor_bridge.db import CONNECTION_ERRORS, Reconnecting, connect, describe
from skor_bridge.errors import DatabaseError
from skor_bridge.event import ChangeEvent
from skor_bridge.sqlquote import quote_ident

if TYPE_CHECKING:
    from collections.abc import Callable

    from skor_bridge.config import Config

log = logging.getLogger(__name__)

#: Bytes of events held per output before the oldest are dropped (and counted in the log):
#: a bound in bytes, since a count of 8 kB rows could hold gigabytes.
MAX_QUEUED_BYTES = 64 * 1024 * 1024

# The primary key's columns, in key order; none for a table without one.
_KEY_COLUMNS = """
SELECT coalesce(array_agg(a.attname::text ORDER BY array_position(i.indkey, a.attnum)), '{}')
FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
WHERE i.indrelid = to_regclass(%s) AND i.indisprimary
"""


class NotifySource:
    """Feeds every output each notification received while listening, in arrival order."""

    def __init__(
        self, config: Config, stopping: threading.Event, fence: Callable[[], bool] = lambda: True
    ) -> None:
        self.config = config
        self.stopping = stopping
        #: True while outputs may send (the leadership's lease, see `leader`).
        self.fence = fence
        self._feeds: list[MemoryFeed] = []
        self._position = 0
        self._listening = threading.Event()
        self._stop_capture = threading.Event()
        self._thread = threading.Thread(target=self._run, name="listener", daemon=True)
        self._healthy = True
        self._keys: dict[tuple[str, str], tuple[str, ...]] = {}
        self._conn: Any = None
        self.captured = 0

    def start(self) -> None:
        self._thread.start()
        self._listening.wait(timeout=15)

    def feed(self, output: str, kind: str) -> MemoryFeed:
        feed = MemoryFeed(self, output, kind)
        self._feeds.append(feed)
        return feed

    def stop_capture(self) -> None:
        self._stop_capture.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def close(self) -> None:
        self.stop_capture()

    def healthy(self) -> bool:
        return self._healthy

    @property
    def head(self) -> int:
        """The newest notification's position (positions restart with the process)."""
        return self._position

    def _run(self) -> None:
        attempt = 0
        while not self._stop_capture.is_set() and not self.stopping.is_set():
            try:
                conn = connect(self.config.source.dsn, self.config.source.session("listener"))
            except DatabaseError as exc:
                attempt += 1
                self._healthy = False
                log.warning("listener: %s", exc)
                self._stop_capture.wait(backoff_delay(attempt, 0.2, 5.0))
                continue
            try:
                with conn.cursor() as cur:
                    cur.execute(f'LISTEN "{self.config.source.channel}"')
                self._healthy, attempt = True, 0
                self._conn = conn
                self._listening.set()
                log.info(
                    "listening on channel %r (notify mode: changes made while no bridge "
                    "listens are lost)",
                    self.config.source.channel,
                )
                while not self._stop_capture.is_set() and not self.stopping.is_set():
                    if select.select([conn], [], [], 0.2)[0]:
                        conn.poll()
                        while conn.notifies:
                            self._dispatch(conn.notifies.pop(0).payload)
            except CONNECTION_ERRORS as exc:
                self._healthy = False
                log.warning(
                    "listener: connection lost (%s); notifications sent meanwhile are lost",
                    describe(exc),
                )
            finally:
                conn.close()

    def _dispatch(self, payload: str) -> None:
        try:
            texts = top_level_texts(payload)
            schema, table, op = (json.loads(texts[k]) for k in ("schema", "table", "op"))
            if not (
                isinstance(schema, str) and isinstance(table, str) and ChangeEvent.known_op(op)
            ):
                raise ValueError("not a Skor payload")
            data = texts.get("data", "null")
            key = row_key(data, self._key_columns(schema, table))
        except (ValueError, KeyError, TypeError):
            log.error(
                "listener: ignoring a notification that is not a Skor payload: %.200s", payload
            )
            return
        self._position += 1
        self.captured += 1
        # `data` is the payload's own text (numerics exact, for dead letters and retries),
        # and the key puts each row in its own lane, as in durable mode.
        event = ChangeEvent(
            id=str(uuid.uuid4()),
            position=self._position,
            schema=schema,
            table=table,
            op=op,
            data=data,
            key=key,
            captured_at=time.time(),
            raw_body=payload.encode("utf-8"),
        )
        for feed in self._feeds:
            feed.push(event)

    def _key_columns(self, schema: str, table: str) -> tuple[str, ...]:
        """The table's primary key columns, looked up once per table on the listening
        connection (between notifications, so nothing waits on it)."""
        found = self._keys.get((schema, table))
        if found is None:
            try:
                with self._conn.cursor() as cur:
                    cur.execute(_KEY_COLUMNS, (quote_ident(schema) + "." + quote_ident(table),))
                    row = cur.fetchone()
                found = tuple(row[0]) if row else ()
            except (psycopg2.Error, AttributeError):
                found = ()  # no key known: the whole table is one lane, as before
            self._keys[(schema, table)] = found
        return found


class MemoryFeed(progress.OutputRecords):
    """An output's queue of notifications; progress is not persisted (nothing to resume),
    and a dead letter is the only copy of its event, since notify mode keeps no log."""

    def __init__(self, source: NotifySource, output: str, kind: str) -> None:
        self.output = output
        self.kind = kind
        self._queue: deque[ChangeEvent] = deque()
        self._queued_bytes = 0
        self._arrived = threading.Condition()
        self._db = Reconnecting(
            source.config.source.dsn,
            source.config.source.session(f"output {output}"),
            source.stopping,
        )
        self._source = source
        self.dropped = 0

    def push(self, event: ChangeEvent) -> None:
        with self._arrived:
            self._queue.append(event)
            self._queued_bytes += _size(event)
            while self._queued_bytes > MAX_QUEUED_BYTES and len(self._queue) > 1:
                self._queued_bytes -= _size(self._queue.popleft())
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    log.error(
                        "output %s: %d notifications dropped; the output is too far "
                        "behind (use durable mode to never drop)",
                        self.output,
                        self.dropped,
                    )
            self._arrived.notify()

    def may_send(self) -> bool:
        return self._source.fence()

    def start_position(self) -> int:
        # Registered so that status and metrics know the output; the position is unused.
        self._db.run(
            lambda cur: cur.execute(
                "INSERT INTO skor.outputs (name, kind, position) VALUES (%s, %s, 0)"
                " ON CONFLICT (name) DO NOTHING",
                (self.output, self.kind),
            )
        )
        return 0

    def fetch(self, after: int, limit: int, wait: float) -> list[ChangeEvent]:
        self.flush(due_only=True)
        with self._arrived:
            if not self._queue and wait > 0:
                self._arrived.wait(wait)
            count = min(limit, len(self._queue))
            events = [self._queue.popleft() for _ in range(count)]
            self._queued_bytes -= sum(_size(e) for e in events)
            return events

    def commit(self, position: int, delivered: int = 0, error: str | None = None) -> None:
        # Notify positions restart with the process: nothing to resume from, only counters.
        self.record(delivered, error)


def _size(event: ChangeEvent) -> int:
    return len(event.data) + len(event.raw_body or b"")
