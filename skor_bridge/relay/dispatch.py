"""Drive one webhook sink with the records a relay worker owns.

The engine's way, as `run` delivers (`dispatch.delivery`): each record is submitted on its
own (`Sink.submit`) and completes on its own (`Sink.poll`), so a slow request holds only
its row; up to the sink's `max_in_flight` requests at once, adapted to the receiver's
latency and pushback (`AdaptiveLimit`), paused for a receiver's Retry-After. The decisions
are `run`'s too: a record is retried with the same exponential backoff until delivered; a
permanent refusal (4xx but 408/429) or `max_attempts` failed attempts make it a dead
letter. Here a dead letter goes to the dead-letter topic, and only then counts as
finished. Without a dead-letter topic nothing is skipped: the record keeps being retried
(at the backoff cap) and its row's later records wait behind it, as does the partition's
committed offset.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING

from skor_bridge.backoff import backoff_delay
from skor_bridge.dispatch import guarded
from skor_bridge.dispatch.concurrency import AdaptiveLimit
from skor_bridge.errors import SinkError
from skor_bridge.sinks.base import Outcome, Result

if TYPE_CHECKING:
    from skor_bridge.config import OutputConfig
    from skor_bridge.metrics import Metrics
    from skor_bridge.relay.deadletter import DeadLetters
    from skor_bridge.relay.partitions import Partitions, Work
    from skor_bridge.sinks.base import Completion, Sink

log = logging.getLogger(__name__)

#: Longest an idle dispatcher waits before looking at its retries again.
IDLE_WAIT = 0.5
#: While requests are in flight, how long one wait for completions lasts when records
#: could still be started (new ones may arrive from the consumer at any moment)...
SHORT_POLL = 0.005
#: ...and when the in-flight limit is reached (any completion ends the wait).
MAX_POLL = 0.05
#: Longest Retry-After honoured (seconds), as in `run`.
RETRY_AFTER_CAP = 300.0
#: An idle dispatcher polls its sink this often, so connections are kept alive.
KEEPALIVE = 10.0


class Dispatcher:
    """One thread delivering ready records to one sink, at least once, in order per key."""

    def __init__(
        self,
        index: int,
        output: OutputConfig,
        sink: Sink,
        partitions: Partitions,
        dead_letters: DeadLetters | None,
        metrics: Metrics,
        stopping: threading.Event,
    ) -> None:
        self.index = index
        self.output = output
        self.sink = sink
        self.partitions = partitions
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.stopping = stopping
        self.delayed: list[tuple[float, int, Work]] = []
        self.in_flight: dict[int, tuple[Work, float]] = {}
        self._tickets = itertools.count(1)
        self._tiebreak = itertools.count()
        cap = max(1, sink.max_in_flight)
        self.limit = AdaptiveLimit(cap) if sink.adaptive else None
        self._fixed_limit = cap
        self._paused_until = 0.0
        self._last_poll = time.monotonic()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self.run, name=f"relay-{output.name}", daemon=True)

    @property
    def name(self) -> str:
        return self.output.name

    @property
    def concurrency(self) -> int:
        return self.limit.limit if self.limit is not None else self._fixed_limit

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        try:
            self._open_sink()
            while not self.stopping.is_set():
                self.step()
        except SinkError as exc:
            self.failed = exc
            log.error("output %s: %s", self.name, exc)
            self.stopping.set()
        except Exception as exc:
            self.failed = exc
            log.exception("output %s failed", self.name)
            self.stopping.set()
        finally:
            self.sink.close()  # tickets still in flight are abandoned: not committed

    def _open_sink(self) -> None:
        guarded.open_sink(self.sink, self.name, self.stopping)

    def step(self) -> None:
        """One turn: start what may go, wait a little for completions, settle them."""
        now = time.monotonic()
        room = self.concurrency - len(self.in_flight)
        if room > 0 and now >= self._paused_until:
            due: list[Work] = []
            while self.delayed and self.delayed[0][0] <= now and len(due) < room:
                due.append(heapq.heappop(self.delayed)[2])
            started = self.partitions.begin(due)
            idle = not self.in_flight and not started
            wait = min(IDLE_WAIT, self.delayed[0][0] - now) if self.delayed else IDLE_WAIT
            started += self.partitions.take(
                self.index, room - len(started), max(0.0, wait) if idle else 0.0
            )
            for work in started:
                self._submit(work)
        elif not self.in_flight:
            self.stopping.wait(max(0.0, min(IDLE_WAIT, self._paused_until - now)))
        if self.in_flight:
            full = len(self.in_flight) >= self.concurrency
            for ticket, result in self._poll(MAX_POLL if full else SHORT_POLL):
                self._settle(ticket, result)
        elif time.monotonic() - self._last_poll > KEEPALIVE:
            self._poll(0)

    def _submit(self, work: Work) -> None:
        ticket = next(self._tickets)
        self.in_flight[ticket] = (work, time.monotonic())
        if self.limit is not None:
            self.limit.on_submit(len(self.in_flight))
        failed = guarded.submit(self.sink, ticket, work.event, self.name, "record")
        if failed is not None:
            self._settle(ticket, failed)

    def _poll(self, timeout: float) -> list[Completion]:
        self._last_poll = time.monotonic()
        return guarded.poll(self.sink, timeout, self.in_flight, self.name)

    def _settle(self, ticket: int, result: Result) -> None:
        entry = self.in_flight.pop(ticket, None)
        if entry is None:
            return  # abandoned when the sink was closed after raising
        work, submitted = entry
        now = time.monotonic()
        if self.limit is not None:
            self.limit.on_complete(now - submitted, result.backpressure)
        if result.outcome is Outcome.DELIVERED:
            self.metrics.delivered(self.name, work.event)
            work.failing_since[self.index] = None
            self.partitions.settle(work, self.index, finished=True)
            return
        work.attempts[self.index] += 1
        attempts = work.attempts[self.index]
        if work.failing_since[self.index] is None:
            work.failing_since[self.index] = now
        error = result.error or result.outcome.value
        limit = self.output.retry.max_attempts
        permanent = result.outcome is Outcome.REJECTED or (limit is not None and attempts >= limit)
        if permanent and self.dead_letters is not None:
            self._dead_letter(work, error, attempts)
            return
        self.metrics.retried(self.name, work.event)
        policy = self.output.retry
        delay = backoff_delay(attempts, policy.initial_backoff, policy.max_backoff)
        if result.retry_after is not None:
            wait = min(result.retry_after, RETRY_AFTER_CAP)
            delay = max(delay, wait)
            self._paused_until = max(self._paused_until, now + wait)
        if attempts == 1 or attempts % 10 == 0:
            if permanent:
                log.error(
                    "output %s: %s/%d@%d (event %s) failed for good (%s); no "
                    "--dead-letter-topic, so its row waits; retrying in %.1fs",
                    self.name,
                    work.topic,
                    work.partition,
                    work.offset,
                    work.event.id,
                    error,
                    delay,
                )
            else:
                log.warning(
                    "output %s: %s/%d@%d (event %s) attempt %d failed (%s); retrying in %.2fs",
                    self.name,
                    work.topic,
                    work.partition,
                    work.offset,
                    work.event.id,
                    attempts,
                    error,
                    delay,
                )
        self.partitions.settle(work, self.index, finished=False)
        heapq.heappush(self.delayed, (now + delay, next(self._tiebreak), work))

    def _dead_letter(self, work: Work, error: str, attempts: int) -> None:
        assert self.dead_letters is not None
        stored = self.dead_letters.send(
            work, self.name, error, attempts, self.stopping, lambda: self.partitions.live(work)
        )
        if stored:
            self.metrics.dead_lettered(self.name, work.event)
            log.error(
                "output %s: %s/%d@%d (event %s) dead-lettered to %r after %d attempt(s): %s",
                self.name,
                work.topic,
                work.partition,
                work.offset,
                work.event.id,
                self.dead_letters.topic,
                attempts,
                error,
            )
        work.failing_since[self.index] = None
        # Not stored means the partition was revoked or the relay stops: the attempt ends
        # unfinished, and the record's next owner reads it again.
        self.partitions.settle(work, self.index, finished=stored)
