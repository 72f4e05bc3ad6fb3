"""Durable capture, the default source: the capture triggers write an outbox in the
user's transaction, the sequencer (`capture.sequencer`) moves committed rows into the
log, and each output reads the log from its own position."""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING

from skor_bridge.capture import progress
from skor_bridge.capture.log_rows import EVENT_COLUMNS, event_from_row
from skor_bridge.capture.sequencer import Sequencer
from skor_bridge.db import Reconnecting

if TYPE_CHECKING:
    from collections.abc import Callable

    from psycopg2.extensions import connection, cursor

    from skor_bridge.config import Config
    from skor_bridge.event import ChangeEvent

log = logging.getLogger(__name__)

#: Bytes of row data (`data` and `old`) one fetch returns at most (always at least one
#: event), so a run of huge rows cannot balloon the bridge's memory.
FETCH_BYTES = 8 * 1024 * 1024

# The running sum streams under the LIMIT, so the scan still stops after `limit` rows.
_SELECT_EVENTS = f"""
SELECT {EVENT_COLUMNS}, outputs FROM (
    SELECT *, octet_length(data) + coalesce(octet_length(old), 0) AS size,
           sum(octet_length(data) + coalesce(octet_length(old), 0)) OVER (ORDER BY pos)
               AS running
    FROM skor.log WHERE pos > $1 ORDER BY pos LIMIT $2
) fetched WHERE running - size < $3 ORDER BY pos
"""


class DurableSource:
    """Capture through the outbox the triggers write in the user's transaction.

    Guarantee: every committed change gets exactly one log position, in an order that keeps
    each row's changes in commit order; nothing is lost while the bridge is down, and
    rolled-back changes never appear (they never commit to the outbox).
    """

    def __init__(
        self, config: Config, stop: threading.Event, fence: Callable[[], bool] = lambda: True
    ) -> None:
        self.config = config
        self.stopping = stop
        #: True while outputs may send (the leadership's lease, see `leader`).
        self.fence = fence
        self.sequencer = Sequencer(config, stop)

    def start(self) -> None:
        self.sequencer.start()

    def stop_capture(self) -> None:
        """Stop moving new events; outputs keep draining what is already in the log."""
        self.sequencer.stop()

    def close(self) -> None:
        self.sequencer.close()

    def healthy(self) -> bool:
        return self.sequencer.healthy()

    @property
    def head(self) -> int:
        """The newest log position this instance has moved."""
        return self.sequencer.head

    @property
    def captured(self) -> int:
        """Events moved so far by this process; fed to metrics."""
        return self.sequencer.captured

    def feed(self, output: str, kind: str) -> LogFeed:
        return LogFeed(self, output, kind)


class LogFeed(progress.OutputRecords):
    """One output's cursor over the log. Used from that output's worker thread only."""

    def __init__(self, source: DurableSource, output: str, kind: str) -> None:
        self.source = source
        self.output = output
        self.kind = kind
        self._db = Reconnecting(
            source.config.source.dsn,
            source.config.source.session(f"output {output}"),
            source.stopping,
        )
        self._prepared: connection | None = None

    def may_send(self) -> bool:
        return self.source.fence()

    def start_position(self) -> int:
        return self._db.run(self._start_position)

    def _start_position(self, cur: cursor) -> int:
        cur.execute("SELECT position FROM skor.outputs WHERE name = %s", (self.output,))
        row = cur.fetchone()
        if row is not None:
            return int(row[0])
        if self.source.config.start_from == "latest":
            cur.execute("SELECT next_pos - 1 FROM skor.sequencer")
        else:
            cur.execute(
                "SELECT coalesce((SELECT min(pos) - 1 FROM skor.log),"
                " (SELECT next_pos - 1 FROM skor.sequencer))"
            )
        position = _first(cur)
        cur.execute(
            "INSERT INTO skor.outputs (name, kind, position) VALUES (%s, %s, %s)"
            " ON CONFLICT (name) DO NOTHING",
            (self.output, self.kind, position),
        )
        log.info("output %s is new; starting after position %d", self.output, position)
        return position

    def fetch(self, after: int, limit: int, wait: float) -> list[ChangeEvent]:
        self.flush(due_only=True)
        writer = self.source.sequencer
        if writer.caught_up(after):
            # Caught up: wait in memory for the sequencer rather than asking the database.
            if wait <= 0 or not self.wait_saving(
                lambda seconds: writer.wait_beyond(after, seconds), wait
            ):
                return []
        events = writer.recent(after, limit)
        if events is None:
            events = self._db.run(lambda cur: self._select(cur, after, limit))
        return events

    def _select(self, cur: cursor, after: int, limit: int) -> list[ChangeEvent]:
        if cur.connection is not self._prepared:
            cur.execute(f"PREPARE skor_fetch (bigint, int, bigint) AS {_SELECT_EVENTS}")
            self._prepared = cur.connection
        cur.execute("EXECUTE skor_fetch (%s, %s, %s)", (after, limit, FETCH_BYTES))
        return [event_from_row(row[:-1], row[-1]) for row in cur.fetchall()]


def _first(cur: cursor) -> int:
    row = cur.fetchone()
    assert row is not None
    return int(row[0])
