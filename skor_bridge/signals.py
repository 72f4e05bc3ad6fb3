"""SIGTERM/SIGINT for the long-running commands (`run`, `relay`), as uvicorn does.

- The first SIGTERM or SIGINT asks for a drain: in-flight deliveries finish, progress is
  saved, the process exits 0.
- A repeated SIGTERM changes nothing: supervisors repeat it, and the drain goes on.
- A second Ctrl-C (SIGINT) means the operator will not wait: the process exits at once with
  code 1, without saving progress. That loses nothing: whatever was in flight is sent
  again after a restart (or by the next owner of a relay's partitions) with the same ids.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def handle_stop_signals(
    stopping: threading.Event, request_stop: Callable[[], None]
) -> Callable[[], None]:
    """Route SIGTERM/SIGINT to `request_stop` (called on the first one, while `stopping` is
    not set); return the function that puts an embedding program's handlers back.

    Outside the main thread (tests, embedding) Python allows no handlers: nothing is done.
    """
    if threading.current_thread() is not threading.main_thread():
        return lambda: None
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}

    def handle(signum: int, frame: object) -> None:
        name = signal.Signals(signum).name
        if stopping.is_set():
            if signum != signal.SIGINT:
                log.info("received %s again; still stopping", name)
                return
            log.warning("received %s again; exiting at once without draining", name)
            logging.shutdown()
            os._exit(1)
        # Only set flags here: the main loop does the work outside the signal handler.
        log.info("received %s; stopping", name)
        request_stop()

    for sig in STOP_SIGNALS:
        signal.signal(sig, handle)

    def restore() -> None:
        # Only an embedding program's own handlers come back. The defaults would turn a
        # signal that arrives while the process finishes exiting into a kill (exit -15)
        # or a KeyboardInterrupt traceback; ours just notes that we are stopping.
        for sig, handler in previous.items():
            if callable(handler) and handler is not signal.default_int_handler:
                signal.signal(sig, handler)

    return restore
