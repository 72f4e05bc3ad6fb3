"""Per-key lanes of one partition: a key's records one at a time, in offset order.

The bridge keys every record by the row's primary key, so two records with the same key
are two versions of one row: the second may start only once the first finished. Records
with different keys are independent and may be delivered at the same time.
"""

from __future__ import annotations

from collections import deque
from typing import Generic, TypeVar

T = TypeVar("T")


class Lanes(Generic[T]):
    """Items queued per key; only the head of each lane is out for delivery."""

    def __init__(self) -> None:
        self._lanes: dict[bytes | None, deque[T]] = {}

    def add(self, key: bytes | None, item: T) -> bool:
        """Queue `item`; True when it heads its lane and may be delivered now.

        A record without a key (not written by the bridge) has no row to order by, so all
        of them share one lane: in offset order, as Kafka stored them.
        """
        lane = self._lanes.get(key)
        if lane is None:
            self._lanes[key] = deque([item])
            return True
        lane.append(item)
        return False

    def finish(self, key: bytes | None) -> T | None:
        """The head of `key`'s lane finished; return the next item to deliver, if any."""
        lane = self._lanes[key]
        lane.popleft()
        if lane:
            return lane[0]
        del self._lanes[key]
        return None

    def heads(self) -> list[T]:
        """Items out for delivery (the head of every lane)."""
        return [lane[0] for lane in self._lanes.values()]

    def __len__(self) -> int:
        """Items queued in all lanes, heads included."""
        return sum(len(lane) for lane in self._lanes.values())
