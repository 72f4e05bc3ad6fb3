"""Which offset of a partition may be committed: the end of its contiguous completed prefix.

Records of one partition finish out of order (different keys are delivered concurrently),
but Kafka keeps one committed offset per partition, meaning "everything before this is
done". Committing past an unfinished record would lose it if the worker died, so the
tracker only moves over records that are all finished. Offsets need not be contiguous
(compaction and transaction markers leave gaps): the tracker follows the records it was
given, in the order it was given them.
"""

from __future__ import annotations

from collections import deque


class OffsetTracker:
    """Offsets handed out for delivery, and the next offset safe to commit."""

    def __init__(self) -> None:
        self._order: deque[int] = deque()
        self._done: set[int] = set()
        #: Offset of the next record not known to be finished, once one record finished;
        #: what `commit` hands to Kafka.
        self._next: int | None = None
        self._committed: int | None = None

    def add(self, offset: int) -> None:
        """A record to deliver. Offsets must increase (Kafka hands them out that way)."""
        if self._order and offset <= self._order[-1]:
            raise ValueError(f"offset {offset} added after {self._order[-1]}")
        self._order.append(offset)

    def complete(self, offset: int) -> None:
        """The record at `offset` is finished (delivered or dead-lettered)."""
        self._done.add(offset)
        while self._order and self._order[0] in self._done:
            finished = self._order.popleft()
            self._done.discard(finished)
            self._next = finished + 1

    @property
    def unfinished(self) -> int:
        """Records added and not finished yet."""
        return len(self._order) - len(self._done)

    @property
    def position(self) -> int | None:
        """The offset a new owner should start from: after the finished prefix."""
        return self._next

    def to_commit(self) -> int | None:
        """The offset to commit if it moved since `committed()` was last called, else None."""
        if self._next is None or self._next == self._committed:
            return None
        return self._next

    def committed(self, offset: int) -> None:
        self._committed = offset
