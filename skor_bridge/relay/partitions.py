"""The partitions a relay worker owns, shared by its consumer loop and its dispatchers.

The consumer thread adds records and handles rebalances; each dispatcher thread (one per
webhook) takes records that may be delivered now and reports how each attempt ended.
One lock guards it all: every operation is a few dictionary steps, far cheaper than the
HTTP request each record costs.

A record is finished when every webhook settled it (delivered or dead-lettered); then the
next record of its key is released and the partition's commit offset may move. Each
assignment of a partition gets a new generation, so a dispatcher's late report about a
record of a partition since revoked (and perhaps assigned again) is recognised and ignored.
"""

from __future__ import annotations

import itertools
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from skor_bridge.relay.lanes import Lanes
from skor_bridge.relay.offsets import OffsetTracker

if TYPE_CHECKING:
    from collections.abc import Iterable

    from skor_bridge.event import ChangeEvent

TopicPartition = tuple[str, int]


@dataclass(eq=False, slots=True)
class Work:
    """One Kafka record on its way to the webhooks."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    event: ChangeEvent
    #: The original record, kept for the dead-letter topic.
    value: bytes | None
    headers: list[tuple[str, bytes]]
    generation: int = 0
    #: Webhooks that have not settled this record yet.
    waiting: int = 0
    #: Failed attempts per webhook (index of its dispatcher).
    attempts: list[int] = field(default_factory=list)
    #: When the first attempt failed, per webhook (monotonic), for readiness.
    failing_since: list[float | None] = field(default_factory=list)

    @property
    def tp(self) -> TopicPartition:
        return (self.topic, self.partition)


@dataclass(eq=False)
class _Partition:
    generation: int
    tracker: OffsetTracker = field(default_factory=OffsetTracker)
    lanes: Lanes[Work] = field(default_factory=Lanes)
    #: Attempts running right now (a record inside a sink call, for any webhook).
    sending: int = 0
    #: Revoked: nothing new starts; the consumer waits for `sending` to reach zero.
    revoking: bool = False
    #: Offset of the first record seen, the start of lag until something finished.
    first_offset: int | None = None


class Partitions:
    """Owned partitions: their lanes, offset trackers and the records ready to deliver."""

    def __init__(self, sinks: int) -> None:
        self.sinks = sinks
        self._cond = threading.Condition()
        self._owned: dict[TopicPartition, _Partition] = {}
        self._inboxes: list[deque[Work]] = [deque() for _ in range(sinks)]
        self._generations = itertools.count(1)
        self._unfinished = 0

    # -- consumer side ----------------------------------------------------------------------

    def assign(self, tps: Iterable[TopicPartition]) -> None:
        with self._cond:
            for tp in tps:
                self._owned[tp] = _Partition(next(self._generations))

    def owned(self) -> list[TopicPartition]:
        with self._cond:
            return [tp for tp, p in self._owned.items() if not p.revoking]

    def add(self, work: Work) -> bool:
        """Track a record of an owned partition; False (and ignored) for any other."""
        with self._cond:
            part = self._owned.get(work.tp)
            if part is None or part.revoking:
                return False
            work.generation = part.generation
            work.waiting = self.sinks
            work.attempts = [0] * self.sinks
            work.failing_since = [None] * self.sinks
            part.tracker.add(work.offset)
            if part.first_offset is None:
                part.first_offset = work.offset
            self._unfinished += 1
            if part.lanes.add(work.key, work):
                self._release(work)
            return True

    @property
    def unfinished(self) -> int:
        """Records taken from Kafka and not finished, over every owned partition."""
        return self._unfinished

    def revoke(self, tps: Iterable[TopicPartition]) -> None:
        """Stop starting records of `tps`; those not started are dropped (the next owner
        reads them again from the committed offset)."""
        with self._cond:
            revoked = {tp for tp in tps if tp in self._owned}
            for tp in revoked:
                self._owned[tp].revoking = True
            for inbox in self._inboxes:
                kept = [w for w in inbox if w.tp not in revoked]
                inbox.clear()
                inbox.extend(kept)
            self._cond.notify_all()

    def wait_idle(
        self, tps: Iterable[TopicPartition], timeout: float, give_up: threading.Event | None = None
    ) -> bool:
        """Wait until no attempt of `tps` is running; False if `timeout` passed first."""
        wanted = list(tps)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                busy = sum(self._owned[tp].sending for tp in wanted if tp in self._owned)
                left = deadline - time.monotonic()
                if busy == 0:
                    return True
                if left <= 0 or (give_up is not None and give_up.is_set()):
                    return False
                self._cond.wait(min(left, 0.1))

    def forget(self, tps: Iterable[TopicPartition]) -> None:
        with self._cond:
            for tp in tps:
                part = self._owned.pop(tp, None)
                if part is not None:
                    self._unfinished -= part.tracker.unfinished
            self._cond.notify_all()

    def to_commit(self, tps: Iterable[TopicPartition] | None = None) -> dict[TopicPartition, int]:
        """Offsets that moved since last committed, for `tps` or every owned partition."""
        with self._cond:
            chosen = (
                self._owned
                if tps is None
                else {tp: self._owned[tp] for tp in tps if tp in self._owned}
            )
            found = {tp: p.tracker.to_commit() for tp, p in chosen.items()}
            return {tp: offset for tp, offset in found.items() if offset is not None}

    def committed(self, offsets: dict[TopicPartition, int | None]) -> None:
        """Record a commit's outcome: an offset, or None when it failed (try again)."""
        with self._cond:
            for tp, offset in offsets.items():
                part = self._owned.get(tp)
                if part is not None:
                    part.tracker.committed(offset)  # type: ignore[arg-type]

    def positions(self) -> dict[TopicPartition, int | None]:
        """Per owned partition, the first offset not finished (None: nothing seen yet)."""
        with self._cond:
            return {
                tp: p.tracker.position if p.tracker.position is not None else p.first_offset
                for tp, p in self._owned.items()
                if not p.revoking
            }

    def failing_for(self) -> float:
        """Seconds the longest-failing record has been failing, over every webhook."""
        now = time.monotonic()
        with self._cond:
            starts = [
                since
                for part in self._owned.values()
                for w in part.lanes.heads()
                for since in w.failing_since
                if since is not None
            ]
        return max((now - s for s in starts), default=0.0)

    # -- dispatcher side --------------------------------------------------------------------

    def take(self, sink: int, limit: int, timeout: float) -> list[Work]:
        """Up to `limit` records ready for webhook number `sink`, marked as sending;
        waits up to `timeout` for the first one."""
        inbox = self._inboxes[sink]
        with self._cond:
            if not inbox and timeout > 0:
                self._cond.wait_for(lambda: bool(inbox), timeout)
            taken = [inbox.popleft() for _ in range(min(limit, len(inbox)))]
            for work in taken:
                self._owned[work.tp].sending += 1
            return taken

    def begin(self, works: Iterable[Work]) -> list[Work]:
        """Mark retried records as sending again, dropping those whose partition was
        revoked since (their next owner delivers them)."""
        with self._cond:
            started = [w for w in works if self._live(w)]
            for work in started:
                self._owned[work.tp].sending += 1
            return started

    def settle(self, work: Work, sink: int, finished: bool) -> None:
        """End of one attempt by webhook number `sink`; `finished` when it will not be
        tried again (delivered or dead-lettered)."""
        with self._cond:
            part = self._owned.get(work.tp)
            if part is None or part.generation != work.generation:
                return  # revoked and given up on; the next owner delivers it again
            part.sending -= 1
            if finished:
                work.waiting -= 1
                if work.waiting == 0:
                    part.tracker.complete(work.offset)
                    self._unfinished -= 1
                    following = part.lanes.finish(work.key)
                    if following is not None and not part.revoking:
                        self._release(following)
            self._cond.notify_all()

    def live(self, work: Work) -> bool:
        with self._cond:
            return self._live(work)

    def wake(self) -> None:
        with self._cond:
            self._cond.notify_all()

    def _live(self, work: Work) -> bool:
        part = self._owned.get(work.tp)
        return part is not None and part.generation == work.generation and not part.revoking

    def _release(self, work: Work) -> None:
        for inbox in self._inboxes:
            inbox.append(work)
        self._cond.notify_all()
