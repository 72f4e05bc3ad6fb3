"""Exponential backoff with jitter, capped: one schedule for every reconnect and retry.

A low-level module (it imports nothing of ours), so the database layer, capture and
dispatch can all use it without importing upwards.
"""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int, initial: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number `attempt` (1 = first retry).

    "Equal jitter": a uniform draw between half and all of the capped exponential delay.
    Unlike full jitter (0 to the delay) it never retries at once, and it still spreads the
    retries of many rows that failed together, so a receiver coming back is not hit by a
    synchronised wave.
    """
    # The exponent is bounded: retrying forever (max_attempts unset) reaches attempt 1025
    # within hours, and 2.0 ** 1024 overflows a float.
    ceiling = min(cap, initial * 2.0 ** min(max(0, attempt - 1), 64))
    return (rng or random).uniform(ceiling / 2, ceiling)
