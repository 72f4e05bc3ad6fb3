"""Calls into a sink that cannot take its worker down.

A sink that raises from `open`, `submit` or `poll` (a receiver not up yet, a bug, a
library's surprise) is retried: opening with backoff, failed attempts like any failed
delivery; only `SinkError` (the sink says it can never work, e.g. bad credentials) stops
the output. Shared by the bridge's delivery workers and the relay's.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from skor_bridge.backoff import backoff_delay
from skor_bridge.config import redact
from skor_bridge.errors import SinkError
from skor_bridge.sinks.base import Outcome, Result

if TYPE_CHECKING:
    import threading
    from collections.abc import Iterable

    from skor_bridge.event import ChangeEvent
    from skor_bridge.sinks.base import Completion, Sink

log = logging.getLogger("skor_bridge.dispatch")


def open_sink(sink: Sink, output: str, stopping: threading.Event) -> bool:
    """Open the sink, retrying with backoff until it opens (True) or `stopping` is set
    (False); one warning line per failed try, its error redacted."""
    attempt = 0
    while not stopping.is_set():
        try:
            sink.open()
            return True
        except SinkError:
            raise
        except Exception as exc:
            attempt += 1
            delay = backoff_delay(attempt, 0.5, 10.0)
            log.warning(
                "output %s: cannot open (%s); retrying in %.2fs", output, one_line(exc), delay
            )
            stopping.wait(delay)
    return False


def submit(sink: Sink, ticket: int, event: ChangeEvent, output: str, what: str) -> Result | None:
    """Hand `event` to the sink; the failure to settle `ticket` with if the sink raised."""
    try:
        sink.submit(ticket, event)
    except SinkError:
        raise
    except Exception as exc:
        log.exception("output %s: sink raised on submit; retrying the %s", output, what)
        return Result(Outcome.RETRY, one_line(exc))
    return None


def poll(sink: Sink, timeout: float, in_flight: Iterable[int], output: str) -> list[Completion]:
    """The sink's completions; if it raised, it is closed (it reopens on the next submit)
    and everything in flight completes as a failed attempt."""
    try:
        return sink.poll(timeout)
    except SinkError:
        raise
    except Exception as exc:
        log.exception("output %s: sink raised; retrying what was in flight", output)
        sink.close()
        failed = Result(Outcome.RETRY, one_line(exc))
        return [(ticket, failed) for ticket in list(in_flight)]


def one_line(exc: BaseException) -> str:
    """An exception as one line for logs and `last_error`, secrets redacted."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return redact(f"{type(exc).__name__}: {text}")
