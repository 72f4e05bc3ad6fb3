"""What a worker holds: pending events, and the window that turns completions into progress."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from skor_bridge.event import ChangeEvent


@dataclass(slots=True)
class Pending:
    """One event on its way to one output."""

    event: ChangeEvent
    attempts: int = 0
    #: Monotonic time the worker took the event up (its failing time counts from here).
    first_try: float = 0.0
    last_error: str | None = None
    #: Set for an operator's retry or replay, or for a parked event; such events are
    #: outside the position window and are finished by deleting their redelivery row.
    redelivery_id: int | None = None
    parked: bool = False
    #: Monotonic time of the current attempt's submission (for latency).
    submitted: float = 0.0


@dataclass(frozen=True)
class Backlog:
    """One output's backlog as its worker reports it (see `OutputWorker.backlog`)."""

    #: Events in the worker's window not finished yet, log events it has not read, and
    #: parked events.
    pending: int
    #: Age of the oldest event the worker holds; 0 when it holds none.
    lag_seconds: float
    #: How long the oldest failing in-flight event has been failing; 0 when none fails.
    failing_seconds: float


@dataclass
class Window:
    """Events fetched but not yet finished, and the contiguous finished prefix.

    Completions arrive in any order; progress may only move over a prefix in which every
    event is finished, so a crash at any moment loses nothing (it may repeat some)."""

    order: deque[tuple[int, str]] = field(default_factory=deque)
    finished: set[int] = field(default_factory=set)

    def add(self, position: int, key: str) -> None:
        self.order.append((position, key))

    def oldest(self) -> tuple[int, str] | None:
        """The oldest event not finished yet."""
        return next((entry for entry in self.order if entry[0] not in self.finished), None)

    def finish(self, position: int) -> None:
        self.finished.add(position)

    def advance(self) -> int | None:
        """Drop the finished prefix; return the last position dropped, if any."""
        last = None
        while self.order and self.order[0][0] in self.finished:
            last = self.order.popleft()[0]
            self.finished.discard(last)
        return last

    def __len__(self) -> int:
        return len(self.order)
