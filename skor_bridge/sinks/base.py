"""The sink contract.

A sink turns a batch of events into outcomes. It never sleeps and never retries:
`dispatch.delivery` owns backoff, ordering and dead letters. A batch never holds two
events with the same ordering key, so a sink may send a batch's events concurrently.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

    from skor_bridge.event import ChangeEvent


class Outcome(enum.Enum):
    DELIVERED = "delivered"
    #: A transient failure (timeout, 5xx, broker down): try the same event again later.
    RETRY = "retry"
    #: A permanent failure (4xx, message too large): dead-letter it at once.
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class Result:
    outcome: Outcome
    #: One line for logs and the dead-letter table; never contains a secret.
    error: str | None = None


DELIVERED = Result(Outcome.DELIVERED)


class Sink:
    """Base class for outputs: `open()`, `send(batch)`, `close()`, usable with `with`.

    `send` returns one Result per event, in the batch's order. It must not raise for a
    delivery failure; it may raise only for programming errors.
    """

    #: Kind, as in `sinks.SINKS` (webhook, amqp, kafka).
    kind: str = "base"
    #: Most events delivery hands to one `send` call.
    max_batch: int = 500

    def __init__(self, name: str) -> None:
        self.name = name

    def open(self) -> None:
        """Connect. May raise; the caller retries with backoff."""

    def send(self, batch: Sequence[ChangeEvent]) -> list[Result]:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections. Must not raise."""

    def __enter__(self) -> Sink:
        self.open()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
