"""The sequencer's pacing, as pure logic: spaced rounds under load, fast looks after a
quiet moment, backing off when idle (issue 17)."""

from __future__ import annotations

import pytest

from skor_bridge.capture.sequencer import BUSY_SPACING, IDLE_POLL_MAX, QUIET, Pace

FAST = 0.002


def test_under_load_rounds_start_busy_spacing_apart():
    # Given a round that started at t=10 s, took 0.4 ms and moved events
    pace = Pace(FAST, now=10.0)
    # Then the next one starts BUSY_SPACING poll intervals after it started
    pause = pace.after(3, started=10.0, now=10.0004)
    assert 10.0004 + pause == pytest.approx(10.0 + BUSY_SPACING * FAST)
    assert BUSY_SPACING * FAST > FAST  # fewer rounds than one per poll interval


def test_a_slow_round_is_still_followed_by_one_poll_interval():
    pace = Pace(FAST, now=10.0)
    assert pace.after(3, started=10.0, now=10.05) == pytest.approx(FAST)


def test_an_empty_look_after_a_busy_round_is_followed_by_a_fast_one():
    # A quiet moment within a busy period: the next change is not kept waiting
    pace = Pace(FAST, now=10.0)
    pace.after(3, started=10.0, now=10.0004)
    assert pace.after(0, started=10.004, now=10.0042) == pytest.approx(FAST)


def test_an_idle_sequencer_backs_off_and_comes_back_at_once():
    pace = Pace(FAST, now=10.0)
    pace.after(1, started=10.0, now=10.0)
    now, pauses = 10.0, []
    while now < 10.0 + QUIET + 5:
        pause = pace.after(0, started=now, now=now)
        pauses.append(pause)
        now += pause
    assert pauses[0] == pytest.approx(FAST)
    assert max(pauses) == pytest.approx(IDLE_POLL_MAX)
    assert pauses == sorted(pauses)  # doubling, never shrinking while idle
    # When a change arrives, the pause is short again
    assert pace.after(1, started=now, now=now + 0.0004) <= BUSY_SPACING * FAST
    assert pace.after(0, started=now + 0.004, now=now + 0.004) == pytest.approx(FAST)
