"""Ctrl-C and SIGTERM around the demo's steps.

The demo runs the bridge in a thread, so it owns the process's signals: SIGTERM ends it as
Ctrl-C does, and neither may interrupt a step that would leave something behind. Outside
the main thread Python refuses to install handlers, so there the defaults stay.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from skor_bridge.tools.demo.screen import Screen


@contextlib.contextmanager
def _handled(handler: Callable[[int, object], None], *signums: int) -> Iterator[None]:
    """Install `handler` for the block, then restore the previous handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, handler) for sig in signums}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


@contextlib.contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the demo as Ctrl-C does, so that `kill` also cleans up."""

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    with _handled(interrupt, signal.SIGTERM):
        yield


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Hold Ctrl-C until the block ends: a server interrupted while starting would be
    running with nobody to stop it."""
    caught: list[int] = []

    def hold(signum: int, frame: object) -> None:
        caught.append(signum)

    with _handled(hold, signal.SIGINT, signal.SIGTERM):
        yield
    if caught:
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_deferred(screen: Screen) -> Iterator[None]:
    """During clean-up, another Ctrl-C would leave a server or a table behind: say so and
    carry on. Every step is bounded, so clean-up ends on its own."""

    def patience(signum: int, frame: object) -> None:
        screen.note("cleaning up; one moment")

    with _handled(patience, signal.SIGINT, signal.SIGTERM):
        yield
