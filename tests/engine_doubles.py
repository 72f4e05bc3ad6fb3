"""In-memory doubles for the delivery engine's unit tests: a feed and a scripted sink.

Like dramatiq's StubBroker: the engine's logic runs for real, without PostgreSQL or a
receiver; the end-to-end tests against real services stay the proof.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from skor_bridge.config import OutputConfig, RetryPolicy, WebhookConfig
from skor_bridge.dispatch.delivery import OutputWorker
from skor_bridge.event import ChangeEvent
from skor_bridge.metrics import Metrics
from skor_bridge.sinks.base import DELIVERED, Completion, Outcome, Result, Sink


def change(position: int, row: int, version: int = 0) -> ChangeEvent:
    return ChangeEvent(
        id=f"e{position}",
        position=position,
        schema="public",
        table="t",
        op="UPDATE",
        data=f'{{"id":{row},"v":{version}}}',
        key=f'{{"id":{row}}}',
    )


@dataclass
class MemoryFeed:
    """The OutputFeed protocol over a list; records what the worker wrote down."""

    events: list[ChangeEvent] = field(default_factory=list)
    committed: int = 0
    dead: list[ChangeEvent] = field(default_factory=list)
    redeliveries: dict[int, tuple[ChangeEvent, bool]] = field(default_factory=dict)
    finished: list[tuple[int, bool]] = field(default_factory=list)
    _next_id: int = 1

    def start_position(self) -> int:
        return self.committed

    def may_send(self) -> bool:
        return True

    def fetch(self, after: int, limit: int, wait: float) -> list[ChangeEvent]:
        found = [e for e in self.events if e.position > after][:limit]
        if not found and wait > 0:
            time.sleep(min(wait, 0.01))
        return found

    def commit(self, position: int, delivered: int = 0, error: str | None = None) -> None:
        assert position >= self.committed, "progress never moves back"
        self.committed = position

    def record(self, delivered: int, error: str | None) -> None:
        pass

    def dead_letter(self, event: ChangeEvent, attempts: int, error: str) -> None:
        self.dead.append(event)

    def fetch_redeliveries(
        self, after_id: int, limit: int, include_parked: bool
    ) -> list[tuple[int, ChangeEvent, bool]]:
        return [
            (i, e, parked)
            for i, (e, parked) in sorted(self.redeliveries.items())
            if i > after_id and (include_parked or not parked)
        ][:limit]

    def park(self, events: list[ChangeEvent]) -> list[int]:
        ids = []
        for event in events:
            self.redeliveries[self._next_id] = (event, True)
            ids.append(self._next_id)
            self._next_id += 1
        return ids

    def fetch_parked(
        self, schema: str, table: str, row_key: str | None, after_id: int, limit: int
    ) -> list[tuple[int, ChangeEvent]]:
        return [
            (i, e)
            for i, (e, parked) in sorted(self.redeliveries.items())
            if parked and i > after_id and (e.schema, e.table, e.key) == (schema, table, row_key)
        ][:limit]

    def finish_redelivery(self, redelivery_id: int, event: ChangeEvent, delivered: bool) -> None:
        del self.redeliveries[redelivery_id]
        self.finished.append((redelivery_id, delivered))

    def close(self) -> None:
        pass


#: Decides one attempt: (result, seconds until it completes), or None to hang until released.
Script = Callable[[ChangeEvent], "tuple[Result, float] | None"]


class ScriptedSink(Sink):
    """Completes each submission as `script` says, after a (virtual) delay, in any order."""

    kind = "webhook"

    def __init__(self, script: Script, max_in_flight: int = 100, adaptive: bool = False):
        super().__init__("scripted")
        self.script = script
        self.max_in_flight = max_in_flight
        self.adaptive = adaptive
        self.due: dict[int, tuple[float, Result]] = {}
        self.hanging: dict[int, ChangeEvent] = {}
        self.attempts: list[ChangeEvent] = []
        self.delivered: list[ChangeEvent] = []
        self.peak = 0
        self._events: dict[int, ChangeEvent] = {}

    def submit(self, ticket: int, event: ChangeEvent) -> None:
        self.attempts.append(event)
        self._events[ticket] = event
        decided = self.script(event)
        if decided is None:
            self.hanging[ticket] = event
        else:
            result, delay = decided
            self.due[ticket] = (time.monotonic() + delay, result)
        self.peak = max(self.peak, len(self.due) + len(self.hanging))

    def release(self, result: Result = DELIVERED) -> None:
        for ticket in list(self.hanging):
            del self.hanging[ticket]
            self.due[ticket] = (time.monotonic(), result)

    def poll(self, timeout: float) -> list[Completion]:
        deadline = time.monotonic() + timeout
        while True:
            now = time.monotonic()
            done = [(t, r) for t, (at, r) in self.due.items() if at <= now]
            if done or now >= deadline:
                break
            time.sleep(min(0.001, deadline - now))
        random.shuffle(done)
        for ticket, result in done:
            del self.due[ticket]
            event = self._events.pop(ticket)
            if result.outcome is Outcome.DELIVERED:
                self.delivered.append(event)
        return done


def make_worker(
    sink: Sink, feed: MemoryFeed, max_in_flight: int = 10_000, max_attempts: int | None = None
) -> OutputWorker:
    output = OutputConfig(
        "out",
        "webhook",
        WebhookConfig(url="http://127.0.0.1:9/"),
        RetryPolicy(max_attempts=max_attempts, initial_backoff=0.01, max_backoff=0.05),
    )
    return OutputWorker(output, sink, feed, Metrics(), threading.Event(), max_in_flight, 500)


def run_until(worker: OutputWorker, done: Callable[[], bool], timeout: float = 20.0) -> None:
    """Drive the worker's loop in this thread until `done()` holds."""
    if not worker._started:
        worker.committed = worker.read_position = worker.feed.start_position()
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "condition not reached"
        worker.step()
