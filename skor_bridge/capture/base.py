"""The capture contract: what delivery needs from a source, per output."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from skor_bridge.event import ChangeEvent


class OutputFeed(Protocol):
    """One output's view of the captured events.

    Events come in position order. `commit(p)` records that every event at or before `p`
    was delivered or dead-lettered; after a restart the feed resumes after the last commit,
    so an event is lost only if it was committed, and it is committed only when its fate is
    written down.
    """

    def start_position(self) -> int: ...

    def may_send(self) -> bool:
        """False once this instance cannot prove it still leads: nothing may be sent then
        (fencing, see `leader`). Cheap: called before every send."""
        ...

    def fetch(self, after: int, limit: int, wait: float) -> list[ChangeEvent]:
        """Events with position > `after`; waits up to `wait` seconds when there are none."""
        ...

    def commit(self, position: int, delivered: int = 0, error: str | None = None) -> None:
        """Save progress, with the deliveries and last error since the previous commit."""
        ...

    def record(self, delivered: int, error: str | None) -> None:
        """Count deliveries that did not move the position (redeliveries, retries)."""
        ...

    def dead_letter(self, event: ChangeEvent, attempts: int, error: str) -> None: ...

    def fetch_redeliveries(
        self, after_id: int, limit: int, include_parked: bool
    ) -> list[tuple[int, ChangeEvent, bool]]:
        """Events to deliver outside position order, oldest first: (id, event, parked)."""
        ...

    def park(self, events: list[ChangeEvent]) -> list[int]:
        """Persist a stuck row's events outside the position window; their new ids."""
        ...

    def fetch_parked(
        self, schema: str, table: str, row_key: str | None, after_id: int, limit: int
    ) -> list[tuple[int, ChangeEvent]]:
        """A parked row's next events after `after_id`, oldest first: (id, event)."""
        ...

    def finish_redelivery(
        self, redelivery_id: int, event: ChangeEvent, delivered: bool
    ) -> None: ...

    def close(self) -> None: ...


class Source(Protocol):
    """A capture method (durable outbox or Skor's NOTIFY) feeding every output."""

    def start(self) -> None: ...

    def feed(self, output: str, kind: str) -> OutputFeed: ...

    def stop_capture(self) -> None:
        """Take no new events; feeds keep serving what was already captured."""
        ...

    def close(self) -> None: ...

    def healthy(self) -> bool: ...

    @property
    def head(self) -> int:
        """The newest position captured so far."""
        ...
