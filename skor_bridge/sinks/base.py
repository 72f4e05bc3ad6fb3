"""The sink contract: submit events one by one, collect their outcomes as they complete.

    sink.open()                      connect (may raise; the engine retries with backoff)
    sink.submit(ticket, event)       start delivering one event; never blocks for long
    sink.poll(timeout) -> [(ticket, Result), ...]
                                     drive I/O up to `timeout` seconds, return what finished
    sink.close()                     release connections; unfinished tickets are abandoned

Everything is called from one thread (the output's worker). Every submitted ticket comes
back from `poll()` exactly once, within a bound the sink guarantees (request timeout,
confirm timeout, delivery report timeout), unless `close()` abandons it first; the engine
then treats it as not delivered. Completions come back in any order: a slow request holds
only its own ticket. The engine never submits two events of one row at once, so a sink
may deliver whatever it holds concurrently.

A sink reports what happened. It never sleeps between attempts and never retries:
`dispatch.delivery` owns backoff, ordering, concurrency and dead letters.
"""

from __future__ import annotations

import datetime
import enum
import functools
import math
import time
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
    #: The receiver asked us to slow down (429, 503, a timeout): the engine lowers its
    #: concurrency.
    backpressure: bool = False
    #: Seconds the receiver asked us to wait (Retry-After), if it said.
    retry_after: float | None = None


DELIVERED = Result(Outcome.DELIVERED)


def captured_at_text(event: ChangeEvent) -> str:
    """The event's capture time as RFC 3339 in UTC with microseconds ("" when unknown).

    Sent with the log position on every output, so a receiver can keep the newest version
    of a row when a retried dead letter arrives after newer changes."""
    if not event.captured_at:
        return ""
    # As datetime.fromtimestamp rounds (half to even, to the microsecond), at a fraction of
    # its cost: the seconds' text is shared by every event of that second.
    fraction, seconds = math.modf(event.captured_at)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        seconds, micro = seconds + 1, micro - 1_000_000
    elif micro < 0:
        seconds, micro = seconds - 1, micro + 1_000_000
    return f"{_second_text(int(seconds))}.{micro:06d}Z"


@functools.lru_cache(maxsize=16)
def _second_text(seconds: int) -> str:
    return datetime.datetime.fromtimestamp(seconds, datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S")


#: What `poll()` returns: the ticket given to `submit()` and how that event fared.
Completion = tuple[int, Result]


class Sink:
    """Base class for outputs; usable with `with` (open/close).

    Subclasses implement `submit` and `poll`. `submit` must not raise for a delivery
    failure: it completes the ticket with a RETRY or REJECTED result instead.
    """

    #: Kind, as in `sinks.SINKS` (webhook, amqp, kafka).
    kind: str = "base"
    #: Most events in flight at once.
    max_in_flight: int = 1000
    #: True when the engine should adapt concurrency to latency and backpressure (AIMD)
    #: between 1 and `max_in_flight`; False keeps `max_in_flight` (brokers batch internally).
    adaptive: bool = False
    #: Longest a submitted event may take to come back from `poll()`; `send()` relies on it.
    completion_bound: float = 60.0
    #: Most events a caller of `send()` should hand over at once (the relay batches by it).
    max_batch: int = 1000

    def __init__(self, name: str) -> None:
        self.name = name

    def open(self) -> None:
        """Connect. May raise; the caller retries with backoff."""

    def submit(self, ticket: int, event: ChangeEvent) -> None:
        raise NotImplementedError

    def poll(self, timeout: float) -> list[Completion]:
        """Drive I/O for up to `timeout` seconds; return as soon as something finished.

        With nothing in flight it may return at once; a zero timeout only serves what is
        ready (and keeps connections alive: AMQP heartbeats run only while pika runs)."""
        raise NotImplementedError

    def close(self) -> None:
        """Release connections. Must not raise."""

    def send(self, batch: Sequence[ChangeEvent]) -> list[Result]:
        """Deliver a batch and wait for every outcome, in the batch's order.

        A convenience over submit/poll for tests and tools; the engine does not use it."""
        results: dict[int, Result] = {}
        for ticket, event in enumerate(batch):
            self.submit(ticket, event)
        deadline = time.monotonic() + self.completion_bound + 5.0
        while len(results) < len(batch):
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"sink {self.kind}: no outcome within its bound")
            results.update(self.poll(min(left, 0.5)))
        if not batch:
            self.poll(0)
        return [results[i] for i in range(len(batch))]

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
