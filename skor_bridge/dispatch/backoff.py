"""Exponential backoff with jitter, capped."""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int, initial: float, cap: float, rng: random.Random | None = None
) -> float:
    """Seconds to wait before retry number `attempt` (1 = first retry).

    Jitter (between half and all of the delay) spreads retries of many rows that failed
    together, so a receiver coming back is not hit by a synchronised wave.
    """
    ceiling = min(cap, initial * (2 ** max(0, attempt - 1)))
    return (rng or random).uniform(ceiling / 2, ceiling)
