"""The delivery engine's logic, fast and without services: lanes, the window's contiguous
prefix, parking, adaptive concurrency and outages, driven by an in-memory feed and a
scripted sink (tests/engine_doubles.py)."""

from __future__ import annotations

import logging
import random
import time

from skor_bridge.dispatch import outage
from skor_bridge.dispatch.concurrency import AdaptiveLimit
from skor_bridge.dispatch.window import Window
from skor_bridge.sinks.base import DELIVERED, Outcome, Result
from tests.engine_doubles import MemoryFeed, ScriptedSink, change, make_worker, run_until

RETRY = Result(Outcome.RETRY, "HTTP 503")


def rows_in_order(events) -> dict[int, list[int]]:
    seen: dict[int, list[int]] = {}
    for event in events:
        seen.setdefault(int(event.key.split(":")[1].rstrip("}")), []).append(event.position)
    return seen


def test_window_saves_only_the_contiguous_prefix_of_finished_events():
    window = Window()
    for position in (1, 2, 3, 4):
        window.add(position, "k")
    window.finish(2)
    window.finish(4)
    assert window.advance() is None  # 1 is not finished: nothing may be saved
    window.finish(1)
    assert window.advance() == 2  # 3 still holds 4 back
    window.finish(3)
    assert window.advance() == 4 and len(window) == 0


def test_each_row_keeps_its_order_under_random_delays_and_failures():
    # Given 40 rows with 10 changes each, and a sink that answers after random delays,
    # failing a third of the attempts
    rng = random.Random(7)
    events = [change(p + 1, row=p % 40, version=p // 40) for p in range(400)]
    sink = ScriptedSink(
        lambda e: (RETRY if rng.random() < 0.33 else DELIVERED, rng.uniform(0, 0.004))
    )
    feed = MemoryFeed(events)
    worker = make_worker(sink, feed)
    # When the worker runs until everything is delivered
    run_until(worker, lambda: feed.committed == 400)
    # Then each row's changes were delivered once each, in log order
    by_row = rows_in_order(sink.delivered)
    assert sorted(p for row in by_row.values() for p in row) == list(range(1, 401))
    assert all(row == sorted(row) for row in by_row.values())
    # And no row ever had two attempts in flight at once (checked by the lane ordering)
    assert len(sink.attempts) > 400


def test_one_hanging_row_holds_only_itself_and_the_saved_position_stops_before_it():
    # Given a sink whose request for row 0 hangs, and 1,000 other rows
    events = [change(1, row=0)] + [change(p, row=p) for p in range(2, 1002)]
    sink = ScriptedSink(lambda e: None if e.position == 1 else (DELIVERED, 0.001))
    feed = MemoryFeed(events)
    worker = make_worker(sink, feed)
    # When the worker runs
    started = time.monotonic()
    run_until(worker, lambda: len(sink.delivered) == 1000)
    # Then every other row went out at once, and progress stays before the hanging row
    assert time.monotonic() - started < 10
    assert feed.committed == 0 and len(sink.hanging) == 1
    # When the hanging request finally completes, progress jumps to the end
    sink.release()
    run_until(worker, lambda: feed.committed == 1001)


def test_concurrency_is_bounded_by_the_sinks_limit():
    events = [change(p, row=p) for p in range(1, 2001)]
    sink = ScriptedSink(lambda e: (DELIVERED, 0.002), max_in_flight=50)
    feed = MemoryFeed(events)
    run_until(make_worker(sink, feed), lambda: feed.committed == 2000)
    assert sink.peak == 50


def test_a_row_that_keeps_failing_is_parked_and_others_flow_past_it():
    # Given a window of 20 events, row 0 failing, and 200 other rows
    failing = {"on": True}
    events = [change(1, row=0)] + [change(p, row=p) for p in range(2, 202)] + [change(202, row=0)]
    sink = ScriptedSink(
        lambda e: (RETRY if failing["on"] and '"id":0' in e.key else DELIVERED, 0.0)
    )
    feed = MemoryFeed(events)
    worker = make_worker(sink, feed, max_in_flight=20)
    # When the worker runs
    run_until(worker, lambda: len(sink.delivered) == 200)
    # Then row 0 was parked (persisted outside the window) and progress moved past it
    assert feed.redeliveries and feed.committed >= 201
    # When row 0 recovers, its parked changes are delivered in order and finished
    failing["on"] = False
    run_until(worker, lambda: len(sink.delivered) == 202 and not feed.redeliveries)
    assert [e.position for e in sink.delivered if '"id":0' in e.key] == [1, 202]


def test_max_attempts_dead_letters_and_the_row_goes_on():
    events = [change(1, row=0), change(2, row=0, version=1)]
    sink = ScriptedSink(lambda e: (RETRY if e.position == 1 else DELIVERED, 0.0))
    feed = MemoryFeed(events)
    run_until(make_worker(sink, feed, max_attempts=3), lambda: feed.committed == 2)
    assert [e.position for e in feed.dead] == [1]
    assert [e.position for e in sink.delivered] == [2]
    assert sum(1 for e in sink.attempts if e.position == 1) == 3


def test_adaptive_limit_grows_while_latency_holds_and_shrinks_on_pushback():
    limit = AdaptiveLimit(maximum=500)
    start = limit.limit

    def round_of(latency: float, pushback: bool = False) -> None:
        limit.on_submit(limit.limit)
        for _ in range(limit.limit):
            limit.on_complete(latency, pushback)

    # Slow start: doubling per round while latency holds, up to the maximum
    for _ in range(6):
        round_of(0.05)
    assert limit.limit == 500 > start
    # Pushback (429/503/timeouts) shrinks it multiplicatively
    round_of(0.05, pushback=True)
    assert limit.limit == 350
    # Latency climbing well above the usual shrinks it too
    round_of(0.5)
    assert limit.limit < 350
    shrunk = limit.limit
    # And steady latency again grows it by one per round (no more slow start)
    round_of(0.05)
    round_of(0.05)
    assert limit.limit == shrunk + 2


def test_adaptive_limit_is_not_raised_by_rounds_that_never_used_it():
    limit = AdaptiveLimit(maximum=500, initial=32)
    for _ in range(5):
        limit.on_submit(3)
        for _ in range(32):
            limit.on_complete(0.01, False)
    assert limit.limit == 32


def test_retry_after_pauses_the_output(monkeypatch):
    # Given a receiver that answers 429 with Retry-After: 0.3 once
    answered = {"n": 0}

    def script(event):
        answered["n"] += 1
        if answered["n"] == 1:
            return Result(Outcome.RETRY, "HTTP 429", backpressure=True, retry_after=0.3), 0.0
        return DELIVERED, 0.0

    events = [change(1, row=1)]
    sink = ScriptedSink(script)
    feed = MemoryFeed(events)
    worker = make_worker(sink, feed)
    started = time.monotonic()
    run_until(worker, lambda: feed.committed == 1)
    # Then the retry waited at least what the receiver asked
    assert time.monotonic() - started >= 0.3


def test_an_outage_is_logged_once_probed_one_at_a_time_and_releases_every_row(monkeypatch, caplog):
    monkeypatch.setattr(outage, "PROBE_INTERVALS", (0.05,))
    # Given a receiver that is down for every row
    down = {"on": True}
    sink = ScriptedSink(lambda e: (RETRY if down["on"] else DELIVERED, 0.001))
    feed = MemoryFeed([change(p, row=p) for p in range(1, 301)])
    worker = make_worker(sink, feed)
    caplog.set_level(logging.INFO, logger="skor_bridge.dispatch")
    # When the worker runs into the outage
    run_until(worker, lambda: worker.outage.failing)
    attempts = len(sink.attempts)
    # Then only one probe is in flight at a time while it lasts
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        worker.step()
        assert len(sink.due) + len(sink.hanging) <= 1
    assert len(sink.attempts) - attempts <= 0.5 / 0.05 + 2
    # When the receiver is back, the first probe releases every row at once
    down["on"] = False
    run_until(worker, lambda: feed.committed == 300, timeout=5)
    lines = [r.getMessage() for r in caplog.records]
    assert sum("is failing" in line for line in lines) == 1
    assert sum("recovered after" in line for line in lines) == 1
    # And failed attempts were not logged a line each
    assert sum("attempt" in line for line in lines) <= 1


def test_one_stuck_row_is_not_an_outage():
    sink = ScriptedSink(lambda e: (RETRY if '"id":0' in e.key else DELIVERED, 0.0))
    feed = MemoryFeed([change(1, row=0)] + [change(p, row=p) for p in range(2, 50)])
    worker = make_worker(sink, feed)
    run_until(worker, lambda: sum(1 for e in sink.attempts if e.position == 1) >= 12)
    assert not worker.outage.failing


def test_draining_finishes_what_is_in_flight_and_sends_nothing_new():
    sink = ScriptedSink(lambda e: (DELIVERED, 0.3), max_in_flight=10)
    feed = MemoryFeed([change(p, row=p) for p in range(1, 101)])
    worker = make_worker(sink, feed)
    run_until(worker, lambda: len(sink.attempts) == 10)
    worker.draining.set()
    run_until(worker, lambda: not worker.in_flight)
    assert len(sink.attempts) == 10 and feed.committed == 10


def test_outage_transitions_are_never_summarised_as_repeats():
    # Given the log's repeat summariser (a warning repeating within a minute is held back)
    from skor_bridge.logs import SummarisingFilter

    summariser = SummarisingFilter(window=60.0)

    def record(transition: bool) -> logging.LogRecord:
        made = logging.LogRecord(
            "skor_bridge.dispatch.delivery",
            logging.WARNING,
            __file__,
            1,
            "output %s is failing (%s)",
            ("out", "HTTP 503"),
            None,
        )
        if transition:
            made.transition = True
        return made

    # Then an output failing twice within a minute says so twice
    assert [summariser.filter(record(True)) for _ in range(3)] == [True, True, True]
    assert [summariser.filter(record(False)) for _ in range(2)] == [True, False]


def test_a_parked_lane_keeps_one_page_in_memory_and_is_read_back_in_order(monkeypatch):
    from skor_bridge.dispatch import parked

    monkeypatch.setattr(parked, "PAGE", 5)
    # Given row 0 failing with 200 changes, other rows flowing, and a window of 20
    failing = {"on": True}
    events = [change(p, row=0, version=p) for p in range(1, 101)]
    events += [change(p, row=p) for p in range(101, 151)]
    events += [change(p, row=0, version=p) for p in range(151, 251)]
    sink = ScriptedSink(
        lambda e: (RETRY if failing["on"] and '"id":0' in e.key else DELIVERED, 0.0)
    )
    feed = MemoryFeed(events)
    worker = make_worker(sink, feed, max_in_flight=20)
    # When the worker runs until the other rows are through and progress is at the end
    run_until(worker, lambda: feed.committed == 250)
    # Then row 0's 200 changes are parked, and memory holds only a page of them
    assert len(feed.redeliveries) == 200
    assert len(worker.lanes['public.t:{"id":0}']) <= 5
    # When row 0 recovers, its changes are read back page by page, in order
    failing["on"] = False
    run_until(worker, lambda: not feed.redeliveries)
    assert [e.position for e in sink.delivered if '"id":0' in e.key] == (
        list(range(1, 101)) + list(range(151, 251))
    )


def test_after_a_restart_parked_events_are_neither_parked_again_nor_sent_twice(monkeypatch):
    from skor_bridge.dispatch import parked

    monkeypatch.setattr(parked, "PAGE", 3)
    # Given a crash left row 0's 10 changes parked while progress stayed before them
    events = [change(p, row=0, version=p) for p in range(1, 11)] + [change(11, row=1)]
    feed = MemoryFeed(events)
    feed.park(events[:10])
    sink = ScriptedSink(lambda e: (DELIVERED, 0.0))
    worker = make_worker(sink, feed)
    # When a new worker starts and reads the log from the saved position (0)
    run_until(worker, lambda: feed.committed == 11 and not feed.redeliveries)
    # Then row 0's changes went out once each, in order, from the parked copies
    assert [e.position for e in sink.delivered if '"id":0' in e.key] == list(range(1, 11))
    assert len(sink.delivered) == 11


def test_a_sink_that_raises_fails_those_attempts_only_and_the_output_goes_on(caplog):
    """A bug or a library's surprise in a sink (not a SinkError) must not take the worker
    down: a raising submit fails that attempt, a raising poll fails what was in flight;
    each is retried and delivered, in order per row."""

    class Surprising(ScriptedSink):
        def __init__(self):
            super().__init__(lambda e: (DELIVERED, 0.001))
            self.submits = 0
            self.polls = 0

        def submit(self, ticket, event):
            self.submits += 1
            if self.submits == 3:
                raise KeyError("submit surprise")
            super().submit(ticket, event)

        def poll(self, timeout):
            self.polls += 1
            if self.polls == 2:
                self.due.clear()  # (what a sink that lost its state would do)
                raise RuntimeError("poll surprise")
            return super().poll(timeout)

    events = [change(p, row=p % 3, version=p) for p in range(1, 21)]
    sink = Surprising()
    feed = MemoryFeed(events)
    with caplog.at_level(logging.ERROR, logger="skor_bridge.dispatch"):
        run_until(make_worker(sink, feed), lambda: feed.committed == 20)
    # Then every event was delivered, each row's in order, and both surprises were logged
    assert sorted(e.position for e in sink.delivered) == list(range(1, 21))
    for row in range(3):
        versions = [e.data for e in sink.delivered if e.key == f'{{"id":{row}}}']
        assert versions == [e.data for e in events if e.key == f'{{"id":{row}}}']
    assert "submit surprise" in caplog.text and "poll surprise" in caplog.text
    assert not feed.dead


def test_a_sink_that_cannot_open_yet_is_retried_and_its_error_logged_without_secrets(
    caplog, monkeypatch
):
    from skor_bridge.dispatch import guarded

    monkeypatch.setattr(guarded, "backoff_delay", lambda attempt, base, cap: 0.01)

    class Late(ScriptedSink):
        def __init__(self):
            super().__init__(lambda e: (DELIVERED, 0.0))
            self.tries = 0

        def open(self):
            self.tries += 1
            if self.tries < 3:
                raise ConnectionError("amqp://bridge:s3cret@broker:5672/ refused the connection")

    sink = Late()
    feed = MemoryFeed([change(1, row=1)])
    worker = make_worker(sink, feed)
    with caplog.at_level(logging.WARNING, logger="skor_bridge.dispatch"):
        worker._open_sink()
        run_until(worker, lambda: feed.committed == 1)
    # Then it opened on the third try, said so twice in one line each, and hid the password
    assert sink.tries == 3
    warnings = [r.getMessage() for r in caplog.records if "cannot open" in r.getMessage()]
    assert len(warnings) == 2 and all("\n" not in w for w in warnings)
    assert "s3cret" not in caplog.text and "ConnectionError" in warnings[0]
