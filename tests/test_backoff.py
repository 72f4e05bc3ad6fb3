"""Fast unit tests of the one backoff schedule (skor_bridge.backoff): no services."""

from __future__ import annotations

import random

import pytest

from skor_bridge.backoff import backoff_delay


@pytest.mark.parametrize(
    ("attempt", "ceiling"),
    [
        (0, 0.5),
        (1, 0.5),
        (2, 1.0),
        (3, 2.0),
        (4, 4.0),
        (5, 8.0),
        (6, 10.0),
        (60, 10.0),
    ],
)
def test_the_delay_doubles_per_attempt_up_to_the_cap_with_equal_jitter(attempt, ceiling):
    rng = random.Random(attempt)
    delays = [backoff_delay(attempt, 0.5, 10.0, rng) for _ in range(2000)]
    # Equal jitter: between half and all of the capped exponential delay, never 0
    assert min(delays) >= ceiling / 2
    assert max(delays) <= ceiling
    # and it really spreads over that range (not a constant, not only one half of it)
    assert min(delays) < ceiling * 0.55
    assert max(delays) > ceiling * 0.95


def test_a_huge_attempt_number_stays_at_the_cap():
    assert 15.0 <= backoff_delay(10_000, 1.0, 30.0) <= 30.0


def test_the_same_seed_gives_the_same_schedule():
    first = [backoff_delay(n, 0.05, 5.0, random.Random(7)) for n in range(1, 10)]
    again = [backoff_delay(n, 0.05, 5.0, random.Random(7)) for n in range(1, 10)]
    assert first == again


def test_a_cap_below_the_initial_delay_wins():
    assert all(0.1 <= backoff_delay(n, 1.0, 0.2) <= 0.2 for n in range(1, 5))
