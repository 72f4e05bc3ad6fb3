"""Drive one webhook sink with the records a relay worker owns.

The decisions are those `run` makes (`dispatch.delivery`): a record is retried with the
same exponential backoff until delivered; a permanent refusal (4xx but 408/429) or
`max_attempts` failed attempts make it a dead letter. Here a dead letter goes to the
dead-letter topic, and only then counts as finished. Without a dead-letter topic nothing is
skipped: the record keeps being retried (at the backoff cap) and its row's later records
wait behind it, as does the partition's committed offset.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from typing import TYPE_CHECKING

from skor_bridge.config import redact
from skor_bridge.dispatch.backoff import backoff_delay
from skor_bridge.errors import SinkError
from skor_bridge.sinks.base import Outcome, Result

if TYPE_CHECKING:
    from skor_bridge.config import OutputConfig
    from skor_bridge.metrics import Metrics
    from skor_bridge.relay.deadletter import DeadLetters
    from skor_bridge.relay.partitions import Partitions, Work
    from skor_bridge.sinks.base import Sink

log = logging.getLogger("skor_bridge.relay")

#: Longest an idle dispatcher waits before looking at its retries again.
IDLE_WAIT = 0.5


class Dispatcher:
    """One thread delivering ready records to one sink, at least once, in order per key."""

    def __init__(self, index: int, output: OutputConfig, sink: Sink, partitions: Partitions,
                 dead_letters: DeadLetters | None, metrics: Metrics,
                 stopping: threading.Event) -> None:
        self.index = index
        self.output = output
        self.sink = sink
        self.partitions = partitions
        self.dead_letters = dead_letters
        self.metrics = metrics
        self.stopping = stopping
        self.delayed: list[tuple[float, int, Work]] = []
        self._tiebreak = itertools.count()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self.run, name=f"relay-{output.name}",
                                       daemon=True)

    @property
    def name(self) -> str:
        return self.output.name

    def start(self) -> None:
        self.thread.start()

    def run(self) -> None:
        try:
            self.sink.open()
            while not self.stopping.is_set():
                self._round()
        except SinkError as exc:
            self.failed = exc
            log.error("output %s: %s", self.name, exc)
            self.stopping.set()
        except Exception as exc:
            self.failed = exc
            log.exception("output %s failed", self.name)
            self.stopping.set()
        finally:
            self.sink.close()

    def _round(self) -> None:
        now = time.monotonic()
        due: list[Work] = []
        while self.delayed and self.delayed[0][0] <= now and len(due) < self.sink.max_batch:
            due.append(heapq.heappop(self.delayed)[2])
        batch = self.partitions.begin(due)
        wait = 0.0 if batch else (
            min(IDLE_WAIT, self.delayed[0][0] - now) if self.delayed else IDLE_WAIT)
        batch += self.partitions.take(self.index, self.sink.max_batch - len(batch), wait)
        if not batch:
            return
        results = self._send(batch)
        for work, result in zip(batch, results, strict=True):
            self._settle(work, result)

    def _send(self, batch: list[Work]) -> list[Result]:
        """A sink that raises (a bug, a library surprise) fails the batch, not the relay."""
        try:
            results = self.sink.send([w.event for w in batch])
        except SinkError:
            raise
        except Exception as exc:
            log.exception("output %s: sink raised; retrying the batch", self.name)
            self.sink.close()
            text = str(exc).splitlines()[0] if str(exc) else ""
            return [Result(Outcome.RETRY, redact(f"{type(exc).__name__}: {text}"))] * len(batch)
        if len(results) != len(batch):
            raise RuntimeError(f"sink {self.sink.kind} returned {len(results)} results "
                               f"for {len(batch)} events")
        return results

    def _settle(self, work: Work, result: Result) -> None:
        if result.outcome is Outcome.DELIVERED:
            self.metrics.delivered(self.name, work.event)
            work.failing_since[self.index] = None
            self.partitions.settle(work, self.index, finished=True)
            return
        work.attempts[self.index] += 1
        attempts = work.attempts[self.index]
        if work.failing_since[self.index] is None:
            work.failing_since[self.index] = time.monotonic()
        error = result.error or result.outcome.value
        limit = self.output.retry.max_attempts
        permanent = result.outcome is Outcome.REJECTED or (limit is not None and attempts >= limit)
        if permanent and self.dead_letters is not None:
            self._dead_letter(work, error, attempts)
            return
        self.metrics.retried(self.name, work.event)
        policy = self.output.retry
        delay = backoff_delay(attempts, policy.initial_backoff, policy.max_backoff)
        if permanent and attempts == 1 or (permanent and attempts % 10 == 0):
            log.error("output %s: %s/%d@%d (event %s) failed for good (%s); no "
                      "--dead-letter-topic, so its row waits; retrying in %.1fs",
                      self.name, work.topic, work.partition, work.offset, work.event.id, error,
                      delay)
        elif attempts == 1 or attempts % 10 == 0:
            log.warning("output %s: %s/%d@%d (event %s) attempt %d failed (%s); retrying in "
                        "%.2fs", self.name, work.topic, work.partition, work.offset,
                        work.event.id, attempts, error, delay)
        self.partitions.settle(work, self.index, finished=False)
        heapq.heappush(self.delayed, (time.monotonic() + delay, next(self._tiebreak), work))

    def _dead_letter(self, work: Work, error: str, attempts: int) -> None:
        assert self.dead_letters is not None
        stored = self.dead_letters.send(work, self.name, error, attempts, self.stopping,
                                        lambda: self.partitions.live(work))
        if stored:
            self.metrics.dead_lettered(self.name, work.event)
            log.error("output %s: %s/%d@%d (event %s) dead-lettered to %r after %d "
                      "attempt(s): %s", self.name, work.topic, work.partition, work.offset,
                      work.event.id, self.dead_letters.topic, attempts, error)
        work.failing_since[self.index] = None
        # Not stored means the partition was revoked or the relay stops: the attempt ends
        # unfinished, and the record's next owner reads it again.
        self.partitions.settle(work, self.index, finished=stored)
