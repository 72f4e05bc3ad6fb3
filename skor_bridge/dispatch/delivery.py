"""Delivery to one output: each event completes on its own, in order per row.

Each output has its own worker thread, feed position and retry state, so a webhook that
answers 503 for an hour does not hold up RabbitMQ or Kafka; it catches up, in order,
when it recovers.

Ordering: events are grouped into lanes by ordering key (the row's primary key, or the
table when it has none). Only the head of a lane is ever in flight, so a row's changes
are delivered one after the other, in log order, even while retries happen. Every other
lane is submitted as soon as its previous event completes: a request that is slow, hangs
until its timeout or backs off holds only its own row, never a batch.

Progress: completions arrive in any order; the saved position is the end of the
contiguous prefix of finished events (`Window`), so a crash loses nothing.

Concurrency: up to the sink's `max_in_flight` requests at once, adapted to the receiver's
latency and pushback for webhooks (`AdaptiveLimit`), paused for a receiver's Retry-After;
a receiver down as a whole is probed one event at a time (`Outage`).
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections import deque
from typing import TYPE_CHECKING

from skor_bridge.backoff import backoff_delay
from skor_bridge.db import Stopped
from skor_bridge.dispatch import guarded
from skor_bridge.dispatch.concurrency import AdaptiveLimit
from skor_bridge.dispatch.outage import Outage
from skor_bridge.dispatch.parked import Redeliveries
from skor_bridge.dispatch.window import Backlog, Pending, Window
from skor_bridge.errors import SinkError
from skor_bridge.event import OPS
from skor_bridge.sinks.base import Outcome, Result

if TYPE_CHECKING:
    from skor_bridge.capture.base import OutputFeed
    from skor_bridge.config import OutputConfig
    from skor_bridge.metrics import Metrics
    from skor_bridge.sinks.base import Completion, Sink

__all__ = ["Backlog", "OutputWorker", "Pending", "Window"]

log = logging.getLogger(__name__)

#: Longest an idle worker sleeps before looking at the feed again.
IDLE_WAIT = 0.5

#: Bytes of event data an output holds in memory before it stops reading ahead.
MAX_IN_FLIGHT_BYTES = 32 * 1024 * 1024

#: Ready rows, in multiples of the concurrency limit, past which a worker stops reading
#: ahead of its sink (a backlog of a million rows would otherwise fill the whole window).
READ_AHEAD = 2

#: While requests are in flight the worker cannot block on the feed, so it looks for
#: new events at most this often (seconds) once the feed came back empty.
FETCH_INTERVAL = 0.003

#: Longest single wait for completions, so due retries and the feed are not left waiting.
MAX_POLL = 0.05

#: Progress is saved at most this often while requests are in flight (one write each).
COMMIT_INTERVAL = 0.05

#: How often a worker looks for events an operator asked to redeliver.
REDELIVERY_POLL = 1.0

#: An idle worker polls its sink this often, so sinks can keep connections alive
#: (AMQP heartbeats are serviced only while pika runs).
KEEPALIVE = 10.0

#: Longest Retry-After honoured (seconds); a receiver asking for more is retried sooner.
RETRY_AFTER_CAP = 300.0

#: Failed attempts are logged at most this often per output; outages are logged apart.
FAILURE_LOG_INTERVAL = 10.0


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
        #: Lanes whose head may be submitted now; a lane is in at most one of `ready`,
        #: `delayed` (backing off) and `in_flight` (its head is with the sink).
        self.ready: deque[str] = deque()
        self.delayed: list[tuple[float, int, str]] = []
        self.in_flight: dict[int, tuple[str, Pending, bool]] = {}
        self._tickets = itertools.count(1)
        self._tiebreak = itertools.count()
        cap = max(1, sink.max_in_flight)
        self.limit = AdaptiveLimit(cap) if sink.adaptive else None
        self._fixed_limit = cap
        self.outage = Outage(output.name)
        self._paused_until = 0.0
        self.window = Window()
        self.window_bytes = 0
        self.read_position = 0
        self.committed = 0
        self.last_error: str | None = None
        self._new_error: str | None = None
        self._delivered_since_commit = 0
        #: Deliveries, and their capture-to-delivery latencies, not yet in the metrics
        #: (fed with each commit, not per event: every metric update takes a lock).
        self._unmetered = 0
        self._latencies: list[float] = []
        self._last_commit = 0.0
        self._last_empty_fetch = -FETCH_INTERVAL
        self._redelivery_checked = -REDELIVERY_POLL
        self.redeliveries = Redeliveries(feed, self._enqueue)
        self._started = False
        self._last_poll = time.monotonic()
        self._failure_logged = -FAILURE_LOG_INTERVAL
        self._failures_unlogged = 0
        #: Set when the worker should finish what is in flight and exit (graceful stop).
        self.draining = threading.Event()
        self.thread = threading.Thread(target=self.run, name=f"output-{output.name}", daemon=True)
        self.failed: BaseException | None = None

    @property
    def name(self) -> str:
        return self.output.name

    @property
    def concurrency(self) -> int:
        """The current in-flight limit (adaptive for webhooks)."""
        return self.limit.limit if self.limit is not None else self._fixed_limit

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
        captured = [
            p.event.captured_at
            for p in heads
            if (p.redelivery_id is None or p.parked) and p.event.captured_at
        ]
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
                if self.draining.is_set() and not self.in_flight:
                    # Graceful stop: what is in flight is finished; lanes in backoff or not
                    # yet sent stay after the committed position and go out next time.
                    break
                self.step()
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
                self._commit(force=True)
            except Stopped:
                pass
            self.sink.close()
            self.feed.close()

    def step(self) -> None:
        """One turn: read, submit what may go, wait a little for completions, save progress."""
        draining = self.draining.is_set()
        waited = False
        if not draining:
            waited = self._fill()
            self._release_due(time.monotonic())
            self._dispatch(time.monotonic())
        if self.in_flight:
            for ticket, result in self._poll(self._poll_timeout()):
                self._settle(ticket, result)
        elif not waited and not draining:
            self.stopping.wait(self._next_wake(time.monotonic()))
        if not self.in_flight and time.monotonic() - self._last_poll > KEEPALIVE:
            self._poll(0)
        self._commit(force=not self.in_flight)

    # -- reading ----------------------------------------------------------------------------

    def _open_sink(self) -> None:
        if not guarded.open_sink(self.sink, self.name, self.stopping):
            raise Stopped

    def _fill(self) -> bool:
        """Read new events into their lanes; True when it blocked waiting for the feed."""
        now = time.monotonic()
        if not self._started:
            self._started = True
            self.redeliveries.start(now, self.committed, self.lanes)
        if now - self._redelivery_checked >= REDELIVERY_POLL:
            self._redelivery_checked = now
            self.redeliveries.poll(now)
        if not self._may_read():
            return False
        busy = bool(self.in_flight or self.ready)
        if busy and now - self._last_empty_fetch < FETCH_INTERVAL:
            return False
        room = self.max_in_flight - len(self.window)
        wait = 0.0 if busy else self._next_wake(now)
        events = self.feed.fetch(self.read_position, min(room, self.fetch_size), wait)
        now = time.monotonic()
        if not events:
            self._last_empty_fetch = now
        skipped = self.redeliveries.parked_positions
        absorbed: set[int] = set()
        if self.redeliveries.paged:
            # (log copies of events parked before a restart are skipped, not parked again)
            absorbed = self.redeliveries.absorb([e for e in events if e.position not in skipped])
        for event in events:
            self.window.add(event.position, event.ordering_key)
            if event.position in skipped or event.position in absorbed:
                skipped.discard(event.position)
                self.window.finish(event.position)
                continue
            if not event.is_for(self.name):  # a backfill limited to other outputs
                self.window.finish(event.position)
                continue
            self.window_bytes += len(event.data)
            self._enqueue(Pending(event, first_try=now))
        if events:
            self.read_position = events[-1].position
        return wait > 0

    def _may_read(self) -> bool:
        full = len(self.window) >= self.max_in_flight or self.window_bytes >= MAX_IN_FLIGHT_BYTES
        if full:
            full = not self._park_stuck_lane()
        return not full and len(self.ready) < READ_AHEAD * self.concurrency

    def _park_stuck_lane(self) -> bool:
        """Move the lane holding the oldest unfinished event out of the window.

        The window is full because that event keeps failing. Its lane's events are written
        to skor.redeliveries (so they survive a restart and keep their order) and count as
        finished for the position, so every other row keeps flowing; the lane itself stays
        in memory (a page of it, see `parked`) and goes on retrying in order.
        """
        if self.outage.failing:
            return False  # the whole output is down: the backlog waits in the log instead
        oldest = self.window.oldest()
        if oldest is None:
            return False
        lane = self.lanes.get(oldest[1])
        if not lane or lane[0].attempts == 0:
            return False
        movable = self.redeliveries.park(oldest[1], lane)
        for pending in movable:
            self.window.finish(pending.event.position)
            self.window_bytes -= len(pending.event.data)
        log.warning(
            "output %s: row %s keeps failing (%s); parked %d of its events so other "
            "rows keep flowing",
            self.name,
            oldest[1],
            lane[0].last_error,
            len(movable),
        )
        return True

    def _enqueue(self, pending: Pending) -> None:
        key = pending.event.ordering_key
        lane = self.lanes.get(key)
        if lane is None:
            self.lanes[key] = deque([pending])
            self.ready.append(key)
        else:
            lane.append(pending)

    # -- sending ----------------------------------------------------------------------------

    def _release_due(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            _, _, key = heapq.heappop(self.delayed)
            self.ready.append(key)

    def _dispatch(self, now: float) -> None:
        if (self.ready or self.delayed) and not self.feed.may_send():
            # Fenced: this instance cannot prove it still leads (it was frozen past its
            # lease); send nothing until a heartbeat decides (see `leader`).
            self.stopping.wait(0.05)
            return
        if self.outage.failing:
            # One probe at a time: the lane that has waited longest goes first.
            if self.outage.may_probe(now) and (self.ready or self.delayed):
                key = self.ready.popleft() if self.ready else heapq.heappop(self.delayed)[2]
                self.outage.probe_sent()
                self._submit(key, now, probe=True)
            return
        if now < self._paused_until:
            return
        limit = self.concurrency
        while self.ready and len(self.in_flight) < limit:
            self._submit(self.ready.popleft(), now, probe=False)

    def _submit(self, key: str, now: float, probe: bool) -> None:
        pending = self.lanes[key][0]
        if not pending.event.known_op(pending.event.op):
            # Only a table owner can forge such a row into skor.outbox: refuse it, never
            # pass it on (a receiver would act on an op it was never promised).
            if probe:
                self.outage.probe_in_flight = False  # nothing went out: probe again
            self._refuse(key, pending)
            return
        pending.submitted = now
        ticket = next(self._tickets)
        self.in_flight[ticket] = (key, pending, probe)
        if self.limit is not None:
            self.limit.on_submit(len(self.in_flight))
        failed = guarded.submit(self.sink, ticket, pending.event, self.name, "event")
        if failed is not None:
            self._settle(ticket, failed)

    def _poll(self, timeout: float) -> list[Completion]:
        self._last_poll = time.monotonic()
        return guarded.poll(self.sink, timeout, self.in_flight, self.name)

    def _poll_timeout(self) -> float:
        now = time.monotonic()
        if not self.draining.is_set() and not self.outage.failing and self._may_read():
            return max(0.0, FETCH_INTERVAL - (now - self._last_empty_fetch))
        if self.ready and not self.outage.failing and now >= self._paused_until:
            return MAX_POLL  # waiting for a free slot: any completion wakes us
        return min(MAX_POLL, self._next_wake(now))

    def _next_wake(self, now: float) -> float:
        """Seconds until something is due: a retry, a probe, the end of a pause."""
        wake = IDLE_WAIT
        if self.delayed:
            wake = min(wake, self.delayed[0][0] - now)
        if self.outage.failing and (self.ready or self.delayed):
            wake = min(wake, self.outage.next_probe_in(now))
        elif self.ready and now < self._paused_until:
            wake = min(wake, self._paused_until - now)
        return max(0.0, wake)

    # -- outcomes ---------------------------------------------------------------------------

    def _settle(self, ticket: int, result: Result) -> None:
        entry = self.in_flight.pop(ticket, None)
        if entry is None:
            return  # abandoned when the sink was closed after raising
        key, pending, probe = entry
        now = time.monotonic()
        if self.limit is not None:
            self.limit.on_complete(now - pending.submitted, result.backpressure)
        pending.attempts += 1
        event = pending.event
        if result.outcome is Outcome.DELIVERED:
            self._delivered_since_commit += 1
            self._unmetered += 1
            if event.captured_at:
                self._latencies.append(max(0.0, time.time() - event.captured_at))
            self._succeeded(now, probe)
            self._finish(key, delivered=True)
            return
        error = result.error or result.outcome.value
        pending.last_error = self.last_error = self._new_error = error
        limit = self.output.retry.max_attempts
        if result.outcome is Outcome.REJECTED:
            self._succeeded(now, probe)  # the receiver answered: it is up
        else:
            self.outage.failed(key, error, now, probe)
        if result.outcome is Outcome.REJECTED or (limit is not None and pending.attempts >= limit):
            self.feed.dead_letter(event, pending.attempts, error)
            self.metrics.dead_lettered(self.name, event)
            log.error(
                "output %s: event %s (%s %s) dead-lettered after %d attempt(s): %s",
                self.name,
                event.id,
                event.op,
                event.qualified_table,
                pending.attempts,
                error,
            )
            self._finish(key, delivered=False)
            return
        self.metrics.retried(self.name, event)
        retry = self.output.retry
        delay = backoff_delay(pending.attempts, retry.initial_backoff, retry.max_backoff)
        if result.retry_after is not None:
            wait = min(result.retry_after, RETRY_AFTER_CAP)
            delay = max(delay, wait)
            self._paused_until = max(self._paused_until, now + wait)
        self._log_failure(event.id, pending.attempts, error, delay)
        heapq.heappush(self.delayed, (now + delay, next(self._tiebreak), key))

    def _refuse(self, key: str, pending: Pending) -> None:
        event = pending.event
        error = f"unknown op {event.op!r}: the bridge only sends {', '.join(OPS)}; not sent"
        self.feed.dead_letter(event, pending.attempts, error)
        self.metrics.dead_lettered(self.name, event)
        log.error(
            "output %s: event %s (%s) dead-lettered: %s",
            self.name,
            event.id,
            event.qualified_table,
            error,
        )
        self._finish(key, delivered=False)

    def _succeeded(self, now: float, probe: bool) -> None:
        waiting = sum(len(lane) for lane in self.lanes.values()) if self.outage.failing else 0
        if self.outage.succeeded(now, probe, waiting):
            # The receiver is back: every row waiting out its backoff goes now.
            while self.delayed:
                self.ready.append(heapq.heappop(self.delayed)[2])
            self._paused_until = 0.0

    def _log_failure(self, event_id: str, attempts: int, error: str, delay: float) -> None:
        now = time.monotonic()
        if self.outage.failing or now - self._failure_logged < FAILURE_LOG_INTERVAL:
            self._failures_unlogged += 1
            return
        more = (
            f" ({self._failures_unlogged} more failed attempt(s) since the last line)"
            if self._failures_unlogged
            else ""
        )
        log.warning(
            "output %s: event %s attempt %d failed (%s); retrying in %.2fs%s",
            self.name,
            event_id,
            attempts,
            error,
            delay,
            more,
        )
        self._failure_logged = now
        self._failures_unlogged = 0

    def _finish(self, key: str, delivered: bool) -> None:
        lane = self.lanes[key]
        done = lane.popleft()
        if done.redelivery_id is None:
            self.window.finish(done.event.position)
            self.window_bytes -= len(done.event.data)
        else:
            self.feed.finish_redelivery(done.redelivery_id, done.event, delivered)
            self.redeliveries.finished(done)
        self.redeliveries.refill(key, lane, time.monotonic())
        if lane:
            self.ready.append(key)
        else:
            del self.lanes[key]

    def _commit(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_commit < COMMIT_INTERVAL:
            return
        if self._unmetered:
            self.metrics.delivered_many(self.name, self._unmetered, self._latencies)
            self._unmetered, self._latencies = 0, []
        position = self.window.advance()
        delivered, error = self._delivered_since_commit, self._new_error
        if position is not None and position > self.committed:
            self.feed.commit(position, delivered, error)
            self.committed = position
        elif delivered or error:
            self.feed.record(delivered, error)
        else:
            return
        self._last_commit = now
        self._delivered_since_commit, self._new_error = 0, None
