"""Is an output's receiver down as a whole? Then probe it, one request at a time.

Per-row retries back off exponentially (up to a minute), which is right for one row the
receiver refuses but slow for a receiver that was down: rows would come back one by one,
up to a minute after it recovered. So when failures come from several rows in a row with
no success in between, the output is declared failing: nothing is sent but one probe (a
real event) at a time, every `PROBE_INTERVALS` seconds; the first success ends the outage
and releases every waiting row at once. The log says so once at each end, not per event.
"""

from __future__ import annotations

import logging
import time
from collections import deque

log = logging.getLogger(__name__)

#: Marks a log record as a state change, which the log's repeat summariser lets through.
TRANSITION = {"transition": True}

#: Consecutive failed attempts, with no success between them, that make an outage...
FAILURES = 8
#: ...when they come from at least this many different rows (one stuck row is not one).
ROWS = 3
#: Seconds between probes while the outage lasts: soon at first, then every few seconds.
PROBE_INTERVALS = (0.5, 1.0, 2.0, 3.0)


class Outage:
    """The failing/healthy state of one output, fed every attempt's result."""

    def __init__(self, output: str) -> None:
        self.output = output
        #: Monotonic time the outage began; None while the output is healthy.
        self.since: float | None = None
        self._recent: deque[str] = deque(maxlen=FAILURES)
        self._probes = 0
        self._next_probe = 0.0
        self.probe_in_flight = False

    @property
    def failing(self) -> bool:
        return self.since is not None

    def failed(self, row: str, error: str, now: float, probe: bool) -> None:
        if probe:
            self.probe_in_flight = False
        if self.since is not None:
            if probe:
                self._schedule(now)
            return
        self._recent.append(row)
        if len(self._recent) == FAILURES and len(set(self._recent)) >= ROWS:
            self.since = now
            self._probes = 0
            self._schedule(now)
            log.warning(
                "output %s is failing (%s); holding every row and probing it with one "
                "event every few seconds",
                self.output,
                error,
                extra=TRANSITION,
            )

    def succeeded(self, now: float, probe: bool, waiting: int) -> bool:
        """Record a success; True when it ends an outage (release the waiting rows)."""
        if probe:
            self.probe_in_flight = False
        self._recent.clear()
        if self.since is None:
            return False
        log.warning(
            "output %s recovered after %.1fs; %d event(s) waited and go out now",
            self.output,
            now - self.since,
            waiting,
            extra=TRANSITION,
        )
        self.since = None
        return True

    def may_probe(self, now: float) -> bool:
        return self.since is not None and not self.probe_in_flight and now >= self._next_probe

    def probe_sent(self) -> None:
        self.probe_in_flight = True

    def next_probe_in(self, now: float) -> float:
        return max(0.0, self._next_probe - now)

    def _schedule(self, now: float) -> None:
        interval = PROBE_INTERVALS[min(self._probes, len(PROBE_INTERVALS) - 1)]
        self._probes += 1
        self._next_probe = now + interval

    def failing_for(self) -> float:
        return 0.0 if self.since is None else time.monotonic() - self.since
