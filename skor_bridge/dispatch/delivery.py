"""Delivery to one output: ordering per row, retries with backoff, dead letters, progress.

Each output has its own worker thread, feed position and retry state, so a webhook that
answers 503 for an hour does not hold up RabbitMQ or Kafka; it catches up, in order,
when it recovers.

Ordering: events are grouped into lanes by ordering key (the row's primary key, or the
table when it has none). Only the head of a lane is ever in flight, and a batch holds at
most one event per lane, so a row's changes are delivered one after the other, in log
order, even while retries happen. A failing event holds back only its own lane.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from skor_bridge.config import redact
from skor_bridge.db import Stopped
from skor_bridge.dispatch.backoff import backoff_delay
from skor_bridge.errors import SinkError
from skor_bridge.sinks.base import Outcome, Result

if TYPE_CHECKING:
    from skor_bridge.capture.base import OutputFeed
    from skor_bridge.config import OutputConfig
    from skor_bridge.event import ChangeEvent
    from skor_bridge.metrics import Metrics
    from skor_bridge.sinks.base import Sink

log = logging.getLogger("skor_bridge.delivery")

#: Longest an idle worker sleeps before looking at the feed again.
IDLE_WAIT = 0.5

#: Bytes of event data an output holds in memory before it stops reading ahead.
MAX_IN_FLIGHT_BYTES = 32 * 1024 * 1024

#: Sends' worth of ready rows past which a worker stops reading ahead of its sink.
READ_AHEAD_BATCHES = 2

#: How often a worker looks for events an operator asked to redeliver.
REDELIVERY_POLL = 1.0

#: Redelivery rows read per query.
REDELIVERY_CHUNK = 1000

#: An idle worker calls `send([])` this often, so sinks can keep connections alive
#: (AMQP heartbeats are serviced only while pika runs).
KEEPALIVE = 10.0


@dataclass(slots=True)
class Pending:
    event: ChangeEvent
    attempts: int = 0
    first_try: float = 0.0
    last_error: str | None = None
    #: Set for an operator's retry or replay, or for a parked event; such events are
    #: outside the position window and are finished by deleting their redelivery row.
    redelivery_id: int | None = None
    parked: bool = False


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
    """Events fetched but not yet finished, and the contiguous finished prefix."""

    order: deque[tuple[int, str]] = field(default_factory=deque)
    finished: set[int] = field(default_factory=set)

    def add(self, position: int, key: str) -> None:
        self.order.append((position, key))

    def oldest(self) -> tuple[int, str] | None:
        return self.order[0] if self.order else None

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


class OutputWorker:
    """Delivers every event of one feed to one sink, at least once, in order per row."""

    def __init__(
        self,
        output: OutputConfig,
        sink: Sink,
        feed: OutputFeed,
        metrics: Metrics,
        stopping: threading.Event,
        max_in_flight: int,
        fetch_size: int,
    ) -> None:
        self.output = output
        self.sink = sink
        self.feed = feed
        self.metrics = metrics
        self.stopping = stopping
        self.max_in_flight = max_in_flight
        self.fetch_size = fetch_size
        self.lanes: dict[str, deque[Pending]] = {}
        self.ready: deque[str] = deque()
        self.delayed: list[tuple[float, int, str]] = []
        self._tiebreak = itertools.count()
        self.window = Window()
        self.window_bytes = 0
        self.read_position = 0
        self.committed = 0
        self.last_error: str | None = None
        self._new_error: str | None = None
        self._delivered_since_commit = 0
        self._redelivery_seen = 0
        self._redelivery_checked = -REDELIVERY_POLL
        #: Positions of parked events loaded at start-up; the log copy is then skipped.
        self._parked_positions: set[int] = set()
        self._started = False
        self._last_send = time.monotonic()
        #: Set when the worker should finish what is in flight and exit (graceful stop).
        self.draining = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"output-{output.name}", daemon=True)
        self.failed: BaseException | None = None

    @property
    def name(self) -> str:
        return self.output.name

    def start(self) -> None:
        self.thread.start()

    def backlog(self, head: int | None) -> Backlog:
        """The worker's backlog, given the source's head; safe to call from any thread.

        Reads the lanes without locking: they change under us, so copy first and accept a
        figure that is a moment old."""
        now_wall, now_mono = time.time(), time.monotonic()
        lanes: list[list[Pending]] = []
        for _ in range(3):
            try:
                lanes = [list(lane) for lane in list(self.lanes.values())]
                break
            except RuntimeError:  # changed size while copied
                continue
        heads = [lane[0] for lane in lanes if lane]
        # Parked events (a stuck row set aside) are finished for the window but not
        # delivered; an operator's retry or replay is extra work, not backlog, and its age
        # is not lag.
        parked = sum(1 for lane in lanes for p in lane if p.parked)
        unfinished = max(0, len(self.window) - len(self.window.finished))
        unread = max(0, head - self.read_position) if head is not None else 0
        captured = [p.event.captured_at for p in heads
                    if (p.redelivery_id is None or p.parked) and p.event.captured_at]
        failing = [now_mono - p.first_try for p in heads if p.attempts > 0 and p.last_error]
        return Backlog(
            pending=unfinished + unread + parked,
            lag_seconds=max(0.0, now_wall - min(captured)) if captured else 0.0,
            failing_seconds=max(failing, default=0.0),
        )

    def run(self) -> None:
        try:
            self._open_sink()
            self.committed = self.read_position = self.feed.start_position()
            while not self.stopping.is_set():
                if self.draining.is_set() and not self.lanes:
                    break
                self._fill()
                self._deliver_ready()
                self._commit()
                if self.draining.is_set() and not self.ready:
                    # Graceful stop: in-flight lanes in backoff are handed back, not waited on;
                    # they stay after the committed position and are delivered next time.
                    break
        except Stopped:
            pass
        except SinkError as exc:
            self.failed = exc
            log.error("output %s: %s", self.name, exc)
            self.stopping.set()
        except Exception as exc:
            self.failed = exc
            log.exception("output %s failed", self.name)
            self.stopping.set()
        finally:
            try:
                self._commit()
            except Stopped:
                pass
            self.sink.close()
            self.feed.close()

    # -- steps ------------------------------------------------------------------------------

    def _open_sink(self) -> None:
        attempt = 0
        while True:
            try:
                self.sink.open()
                return
            except SinkError:
                raise
            except Exception as exc:
                attempt += 1
                delay = backoff_delay(attempt, 0.5, 10.0)
                log.warning("output %s: cannot open (%s); retrying in %.2fs",
                            self.name, str(exc).splitlines()[0] if str(exc) else exc, delay)
                if self.stopping.wait(delay):
                    raise Stopped from None

    def _fill(self) -> None:
        now = time.monotonic()
        if not self._started:
            # Parked events are older than anything after the committed position, so they
            # go into their lanes first.
            self._started = True
            self._load_redeliveries(now, include_parked=True)
        elif now - self._redelivery_checked >= REDELIVERY_POLL:
            self._load_redeliveries(now, include_parked=False)
        full = (len(self.window) >= self.max_in_flight
                or self.window_bytes >= MAX_IN_FLIGHT_BYTES)
        if full and not self.draining.is_set():
            full = not self._park_stuck_lane()
        if full or self.draining.is_set():
            if not self.ready:
                self._sleep_until_due()
            return
        if len(self.ready) >= READ_AHEAD_BATCHES * self.sink.max_batch:
            # The next sends are ready already; reading further ahead would only hold more
            # events in memory (a backlog of a million rows filled the whole window).
            return
        room = self.max_in_flight - len(self.window)
        wait = 0.0 if self.ready else self._idle_wait()
        events = self.feed.fetch(self.read_position, min(room, self.fetch_size), wait)
        now = time.monotonic()
        for event in events:
            self.window.add(event.position, event.ordering_key)
            if event.position in self._parked_positions:
                self._parked_positions.discard(event.position)
                self.window.finish(event.position)
                continue
            if not event.is_for(self.name):  # a backfill meant for other outputs
                self.window.finish(event.position)
                continue
            self.window_bytes += len(event.data)
            self._enqueue(Pending(event, first_try=now))
        if events:
            self.read_position = events[-1].position

    def _load_redeliveries(self, now: float, include_parked: bool) -> None:
        self._redelivery_checked = now
        while True:
            found = self.feed.fetch_redeliveries(
                self._redelivery_seen, REDELIVERY_CHUNK, include_parked)
            for redelivery_id, event, parked in found:
                self._redelivery_seen = max(self._redelivery_seen, redelivery_id)
                if parked:
                    self._parked_positions.add(event.position)
                self._enqueue(Pending(event, first_try=now, redelivery_id=redelivery_id,
                                      parked=parked))
            # Parked rows are read only at start-up (later polls skip them), so that read
            # must go to the end; operators' requests may come in chunks, one per poll.
            if not include_parked or len(found) < REDELIVERY_CHUNK:
                return

    def _park_stuck_lane(self) -> bool:
        """Move the lane holding the oldest unfinished event out of the window.

        The window is full because that event keeps failing. Its lane's events are written
        to skor.redeliveries (so they survive a restart and keep their order) and count as
        finished for the position, so every other row keeps flowing; the lane itself stays
        in memory and goes on retrying in order.
        """
        oldest = self.window.oldest()
        if oldest is None:
            return False
        lane = self.lanes.get(oldest[1])
        if not lane or lane[0].attempts == 0:
            return False
        movable = [p for p in lane if p.redelivery_id is None]
        ids = self.feed.park([p.event for p in movable])
        for pending, redelivery_id in zip(movable, ids, strict=True):
            pending.redelivery_id = redelivery_id
            pending.parked = True
            self.window.finish(pending.event.position)
            self.window_bytes -= len(pending.event.data)
        log.warning("output %s: row %s keeps failing (%s); parked %d of its events so other "
                    "rows keep flowing", self.name, oldest[1], lane[0].last_error, len(movable))
        return True

    def _enqueue(self, pending: Pending) -> None:
        key = pending.event.ordering_key
        lane = self.lanes.get(key)
        if lane is None:
            self.lanes[key] = deque([pending])
            self.ready.append(key)
        else:
            lane.append(pending)

    def _idle_wait(self) -> float:
        if not self.delayed:
            return IDLE_WAIT
        return max(0.0, min(IDLE_WAIT, self.delayed[0][0] - time.monotonic()))

    def _sleep_until_due(self) -> None:
        if self.delayed:
            self.stopping.wait(max(0.0, self.delayed[0][0] - time.monotonic()))
        else:
            self.stopping.wait(0.05)

    def _deliver_ready(self) -> None:
        now = time.monotonic()
        while self.delayed and self.delayed[0][0] <= now:
            _, _, key = heapq.heappop(self.delayed)
            self.ready.append(key)
        if not self.ready:
            if now - self._last_send > KEEPALIVE:
                self.sink.send([])
                self._last_send = now
            return
        if not self.feed.may_send():
            # Fenced: this instance cannot prove it still leads (it was frozen past its
            # lease); send nothing until a heartbeat decides (see `leader`).
            self.stopping.wait(0.05)
            return
        self._last_send = now
        keys = [self.ready.popleft() for _ in range(min(len(self.ready), self.sink.max_batch))]
        batch = [self.lanes[key][0] for key in keys]
        results = self._send([p.event for p in batch])
        if len(results) != len(batch):
            raise RuntimeError(f"sink {self.sink.kind} returned {len(results)} results "
                               f"for {len(batch)} events")
        for key, pending, result in zip(keys, batch, results, strict=True):
            self._settle(key, pending, result)

    def _send(self, events: list[ChangeEvent]) -> list[Result]:
        """A sink that raises (a bug, or a library surprise) fails the batch, not the bridge."""
        try:
            return self.sink.send(events)
        except SinkError:
            raise
        except Exception as exc:
            log.exception("output %s: sink raised; retrying the batch", self.name)
            self.sink.close()
            error = redact(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
            return [Result(Outcome.RETRY, error)] * len(events)

    def _settle(self, key: str, pending: Pending, result: Result) -> None:
        pending.attempts += 1
        event = pending.event
        if result.outcome is Outcome.DELIVERED:
            self.metrics.delivered(self.name, event)
            self._delivered_since_commit += 1
            self._finish(key, delivered=True)
            return
        error = result.error or result.outcome.value
        pending.last_error = self.last_error = self._new_error = error
        limit = self.output.retry.max_attempts
        if result.outcome is Outcome.REJECTED or (limit is not None and pending.attempts >= limit):
            self.feed.dead_letter(event, pending.attempts, error)
            self.metrics.dead_lettered(self.name, event)
            log.error("output %s: event %s (%s %s) dead-lettered after %d attempt(s): %s",
                      self.name, event.id, event.op, event.qualified_table, pending.attempts,
                      error)
            self._finish(key, delivered=False)
            return
        self.metrics.retried(self.name, event)
        delay = backoff_delay(pending.attempts, self.output.retry.initial_backoff,
                              self.output.retry.max_backoff)
        if pending.attempts == 1 or pending.attempts % 10 == 0:
            log.warning("output %s: event %s attempt %d failed (%s); retrying in %.2fs",
                        self.name, event.id, pending.attempts, error, delay)
        heapq.heappush(self.delayed, (time.monotonic() + delay, next(self._tiebreak), key))

    def _finish(self, key: str, delivered: bool) -> None:
        lane = self.lanes[key]
        done = lane.popleft()
        if done.redelivery_id is None:
            self.window.finish(done.event.position)
            self.window_bytes -= len(done.event.data)
        else:
            self.feed.finish_redelivery(done.redelivery_id, done.event, delivered)
        if lane:
            self.ready.append(key)
        else:
            del self.lanes[key]

    def _commit(self) -> None:
        position = self.window.advance()
        delivered, error = self._delivered_since_commit, self._new_error
        if position is not None and position > self.committed:
            self.feed.commit(position, delivered, error)
            self.committed = position
        elif delivered or error:
            self.feed.record(delivered, error)
        else:
            return
        self._delivered_since_commit, self._new_error = 0, None
