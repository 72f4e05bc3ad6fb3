"""Events outside the position window, read from skor.redeliveries a page at a time.

Two kinds: a *parked* lane (a row that keeps failing, set aside so the window and every
other row keep moving) and operators' retries and replays. Either can be far larger than
memory should hold (a failing row receiving heavy updates; a replay of a week), so:

* a parked lane keeps at most `PAGE` events in memory; the rest stay in the database, and
  later log events of that row are parked there directly, behind them, keeping its order;
  the next page is read when the lane in memory runs short;
* start-up reads parked rows in chunks and keeps at most `PAGE` per row;
* operators' requests are read only while fewer than `HELD` of them are in memory, so a
  replay is read at the pace the sink drains it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from skor_bridge.dispatch.window import Pending

if TYPE_CHECKING:
    from collections import deque
    from collections.abc import Callable

    from skor_bridge.capture.base import OutputFeed
    from skor_bridge.event import ChangeEvent

#: Events of one parked lane held in memory.
PAGE = 100

#: Operators' redeliveries held in memory at most (and read per query).
HELD = 1000


@dataclass
class _Paged:
    """Where a parked lane continues in the database: rows after `after_id` of this row."""

    after_id: int
    schema: str
    table: str
    row_key: str | None


class Redeliveries:
    """The parked lanes and operators' requests of one output; used by its worker only."""

    def __init__(self, feed: OutputFeed, enqueue: Callable[[Pending], None]) -> None:
        self.feed = feed
        self.enqueue = enqueue
        #: Lane key -> where its parked rows continue in the database.
        self.paged: dict[str, _Paged] = {}
        #: Positions (after the saved one) whose log copy was parked: skipped when read.
        self.parked_positions: set[int] = set()
        self.held = 0
        self._seen = 0

    # -- start-up and operators' requests ---------------------------------------------------

    def start(self, now: float, committed: int, lanes: dict[str, deque[Pending]]) -> None:
        """Read parked rows (they are older than anything after the saved position, so they
        go into their lanes first), keeping at most PAGE per row in memory."""
        after = 0
        while True:
            found = self.feed.fetch_redeliveries(after, HELD, True)
            for redelivery_id, event, parked in found:
                after = max(after, redelivery_id)
                if not parked:
                    continue  # operators' requests come through poll(), paced
                if event.position > committed:
                    self.parked_positions.add(event.position)
                key = event.ordering_key
                if key in self.paged:
                    continue
                lane = lanes.get(key)
                if lane is not None and len(lane) >= PAGE:
                    self.paged[key] = _Paged(
                        lane[-1].redelivery_id or 0, event.schema, event.table, event.key
                    )
                    continue
                self.enqueue(
                    Pending(event, first_try=now, redelivery_id=redelivery_id, parked=True)
                )
            if len(found) < HELD:
                return

    def poll(self, now: float) -> None:
        """Read operators' new requests, while few enough are in memory."""
        if self.held >= HELD:
            return
        found = self.feed.fetch_redeliveries(self._seen, HELD - self.held, False)
        for redelivery_id, event, _parked in found:
            self._seen = max(self._seen, redelivery_id)
            self.held += 1
            self.enqueue(Pending(event, first_try=now, redelivery_id=redelivery_id))

    # -- parked lanes -----------------------------------------------------------------------

    def park(self, key: str, lane: deque[Pending]) -> list[Pending]:
        """Persist the lane's log events; keep at most PAGE of its events in memory.

        Returns the events that were persisted (they are finished for the window)."""
        movable = [p for p in lane if p.redelivery_id is None]
        ids = self.feed.park([p.event for p in movable])
        for pending, redelivery_id in zip(movable, ids, strict=True):
            pending.redelivery_id = redelivery_id
            pending.parked = True
        # Trim a tail of parked events past the page: they are in the database, in order.
        while len(lane) > PAGE and lane[-1].parked:
            dropped = lane.pop()
            if key not in self.paged:
                self.paged[key] = _Paged(
                    0, dropped.event.schema, dropped.event.table, dropped.event.key
                )
        if key in self.paged and lane:
            self.paged[key].after_id = max(p.redelivery_id or 0 for p in lane if p.parked)
        return movable

    def absorb(self, events: list[ChangeEvent]) -> set[int]:
        """Park log events of paged lanes directly, behind their rows in the database;
        return their positions (finished for the window)."""
        behind = [e for e in events if e.ordering_key in self.paged]
        if behind:
            self.feed.park(behind)
        return {e.position for e in behind}

    def refill(self, key: str, lane: deque[Pending], now: float) -> None:
        """Read the next page of a paged lane once memory holds little of it."""
        paged = self.paged.get(key)
        if paged is None or len(lane) > PAGE // 4:
            return
        found = self.feed.fetch_parked(
            paged.schema, paged.table, paged.row_key, paged.after_id, PAGE
        )
        for redelivery_id, event in found:
            paged.after_id = redelivery_id
            lane.append(Pending(event, first_try=now, redelivery_id=redelivery_id, parked=True))
        if len(found) < PAGE:
            del self.paged[key]  # all of it is in memory now; new events may join it there

    def finished(self, pending: Pending) -> None:
        if pending.redelivery_id is not None and not pending.parked:
            self.held -= 1
