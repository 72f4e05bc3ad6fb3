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
from typing import TYPE_CHECKING

from skor_bridge.backoff import backoff_delay
from skor_bridge.capture import progress
from skor_bridge.db import CONNECTION_ERRORS, Reconnecting, connect, describe
from skor_bridge.errors import DatabaseError
from skor_bridge.event import ChangeEvent

if TYPE_CHECKING:
    from collections.abc import Callable

    from skor_bridge.config import Config

log = logging.getLogger("skor_bridge.capture")

#: Events held per output before the oldest are dropped (and counted in the log).
MAX_QUEUED = 1_000_000


class NotifySource:
    """Feeds every output each notification received while listening, in arrival order."""

    def __init__(self, config: Config, stopping: threading.Event,
                 fence: Callable[[], bool] = lambda: True) -> None:
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
                self._listening.set()
                log.info("listening on channel %r (notify mode: changes made while no bridge "
                         "listens are lost)", self.config.source.channel)
                while not self._stop_capture.is_set() and not self.stopping.is_set():
                    if select.select([conn], [], [], 0.2)[0]:
                        conn.poll()
                        while conn.notifies:
                            self._dispatch(conn.notifies.pop(0).payload)
            except CONNECTION_ERRORS as exc:
                self._healthy = False
                log.warning("listener: connection lost (%s); notifications sent meanwhile "
                            "are lost", describe(exc))
            finally:
                conn.close()

    def _dispatch(self, payload: str) -> None:
        try:
            parsed = json.loads(payload)
            schema, table, op = parsed["schema"], parsed["table"], parsed["op"]
            if not (isinstance(schema, str) and isinstance(table, str)
                    and ChangeEvent.known_op(op)):
                raise ValueError("not a Skor payload")
        except (ValueError, KeyError, TypeError):
            log.error("listener: ignoring a notification that is not a Skor payload: %.200s",
                      payload)
            return
        self._position += 1
        self.captured += 1
        event = ChangeEvent(
            id=str(uuid.uuid4()), position=self._position, schema=schema, table=table, op=op,
            data=json.dumps(parsed.get("data"), ensure_ascii=False), captured_at=time.time(),
            raw_body=payload.encode("utf-8"),
        )
        for feed in self._feeds:
            feed.push(event)


class MemoryFeed(progress.OutputRecords):
    """An output's queue of notifications; progress is not persisted (nothing to resume),
    and a dead letter is the only copy of its event, since notify mode keeps no log."""

    def __init__(self, source: NotifySource, output: str, kind: str) -> None:
        self.output = output
        self.kind = kind
        self._queue: deque[ChangeEvent] = deque()
        self._arrived = threading.Condition()
        self._db = Reconnecting(source.config.source.dsn,
                                source.config.source.session(f"output {output}"),
                                source.stopping)
        self._source = source
        self.dropped = 0

    def push(self, event: ChangeEvent) -> None:
        with self._arrived:
            if len(self._queue) >= MAX_QUEUED:
                self._queue.popleft()
                self.dropped += 1
                if self.dropped % 1000 == 1:
                    log.error("output %s: %d notifications dropped; the output is too far "
                              "behind (use durable mode to never drop)", self.output,
                              self.dropped)
            self._queue.append(event)
            self._arrived.notify()

    def may_send(self) -> bool:
        return self._source.fence()

    def start_position(self) -> int:
        # Registered so that status and metrics know the output; the position is unused.
        self._db.run(lambda cur: cur.execute(
            "INSERT INTO skor.outputs (name, kind, position) VALUES (%s, %s, 0)"
            " ON CONFLICT (name) DO NOTHING", (self.output, self.kind)))
        return 0

    def fetch(self, after: int, limit: int, wait: float) -> list[ChangeEvent]:
        self.flush(due_only=True)
        with self._arrived:
            if not self._queue and wait > 0:
                self._arrived.wait(wait)
            count = min(limit, len(self._queue))
            return [self._queue.popleft() for _ in range(count)]

    def commit(self, position: int, delivered: int = 0, error: str | None = None) -> None:
        # Notify positions restart with the process: nothing to resume from, only counters.
        self.record(delivered, error)
