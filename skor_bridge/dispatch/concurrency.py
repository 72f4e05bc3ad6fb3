"""How many requests an output keeps in flight: AIMD on latency and backpressure.

Like TCP congestion control and vector's adaptive request concurrency: the limit doubles
per round while the receiver's latency holds (slow start), then grows by one per round;
it shrinks by a factor when the receiver pushes back (429, 503, a timeout) or when a
round's mean latency climbs well above the usual (the receiver is queueing our requests);
during slow start a latency climb only ends the doubling.
A round is about one round trip: as many completions as the limit allows in flight.
"""

from __future__ import annotations

#: Limit to start from; slow start doubles it per round trip. 128 (Hasura's default pool
#: is 100) rather than a few: a bridge that has sent nothing yet and then meets 3,000
#: changes/s into a 50 ms receiver needs ~150 in flight, and from 32 the three round trips
#: of doubling queued the first half second's events (p50 100-190 ms there; from 128,
#: one round trip). A receiver that cannot take it pushes back and the limit shrinks.
INITIAL = 128
#: Multiplicative decrease on backpressure, and on latency rising above the baseline.
BACKOFF_FACTOR = 0.7
LATENCY_FACTOR = 0.9
#: A round whose mean latency exceeds the baseline by this factor counts as rising...
RISING = 2.0
#: ...unless it is below this many seconds: a fast receiver's jitter is not congestion.
NOISE_FLOOR = 0.02
#: Weight of a new round in the baseline latency (an exponential moving average).
BASELINE_WEIGHT = 0.1


class AdaptiveLimit:
    """The current in-flight limit, between `minimum` and `maximum`."""

    def __init__(self, maximum: int, minimum: int = 1, initial: int = INITIAL) -> None:
        self.maximum = maximum
        self.minimum = min(minimum, maximum)
        self._limit = float(max(self.minimum, min(maximum, initial)))
        self._slow_start = True
        self._baseline: float | None = None
        self._round_count = 0
        self._round_latency = 0.0
        self._round_pushback = False
        self._round_busy = 0

    @property
    def limit(self) -> int:
        return int(self._limit)

    def on_submit(self, in_flight: int) -> None:
        """Note how busy the round was: a limit that was never reached is not raised."""
        self._round_busy = max(self._round_busy, in_flight)

    def on_complete(self, latency: float, backpressure: bool) -> None:
        self._round_count += 1
        self._round_latency += latency
        self._round_pushback = self._round_pushback or backpressure
        if self._round_count >= max(1, self.limit):
            self._end_round()

    def _end_round(self) -> None:
        mean = self._round_latency / self._round_count
        if self._round_pushback:
            self._decrease(BACKOFF_FACTOR)
        elif self._baseline is not None and mean > NOISE_FLOOR and mean > self._baseline * RISING:
            if self._slow_start:
                self._slow_start = False  # end the doubling; shrink only on a second sign
            else:
                self._decrease(LATENCY_FACTOR)
        elif self._round_busy >= 0.8 * self._limit:
            step = self._limit if self._slow_start else 1.0
            self._limit = min(float(self.maximum), self._limit + step)
        if not self._round_pushback:
            self._baseline = (
                mean
                if self._baseline is None
                else ((1 - BASELINE_WEIGHT) * self._baseline + BASELINE_WEIGHT * mean)
            )
        self._round_count = 0
        self._round_latency = 0.0
        self._round_pushback = False
        self._round_busy = 0

    def _decrease(self, factor: float) -> None:
        self._slow_start = False
        self._limit = max(float(self.minimum), self._limit * factor)
