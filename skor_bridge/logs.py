"""Log set-up: one line per event of interest, text or JSON, never a password."""

from __future__ import annotations

import json
import logging
import re
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from skor_bridge.config import redact


class RedactingFilter(logging.Filter):
    """Last line of defence: scrub DSN/URL passwords, and the paths and queries of http(s)
    URLs (which may hold tokens) unless `full_urls`, from every record's final text."""

    def __init__(self, full_urls: bool = False) -> None:
        super().__init__()
        self.full_urls = full_urls

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message, urls=not self.full_urls)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


#: What differs between repeats of one warning: event ids and numbers (counts, ports,
#: positions, delays). Anything else (another error, another table) is another warning.
_VARYING = re.compile(
    r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|\d+", re.IGNORECASE
)


class SummarisingFilter(logging.Filter):
    """A warning (or worse) that repeats is logged once, then at most once per `window`
    seconds with the number held back in between: an unreachable broker or a flood of
    unroutable messages gives a few lines a minute, not thousands.

    Repeats are records of one logger and level whose text is the same once event ids and
    numbers are ignored: the same error for many events is one warning, another error is
    another (librdkafka formats its own lines, with counters and ports in them).
    """

    #: Distinct repeating messages remembered; the oldest is forgotten beyond this.
    MAX_KEYS = 1000

    def __init__(self, window: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self.clock = clock
        self._lock = threading.Lock()
        #: key -> [when the last line for it was let through, lines held back since]
        self._seen: OrderedDict[tuple[str, int, str], list[float]] = OrderedDict()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING or getattr(record, "transition", False):
            # State changes (an output starts failing, recovers) are each worth a line.
            return True
        key = (record.name, record.levelno, _VARYING.sub("#", record.getMessage()))
        now = self.clock()
        with self._lock:
            entry = self._seen.get(key)
            if entry is None:
                self._seen[key] = [now, 0]
                if len(self._seen) > self.MAX_KEYS:
                    self._seen.popitem(last=False)
                return True
            self._seen.move_to_end(key)
            since, held = entry
            if now - since < self.window:
                entry[1] += 1
                return False
            entry[:] = [now, 0]
        if held:
            record.msg = (
                f"{record.getMessage()} (and {int(held)} more like it in the last "
                f"{now - since:.0f}s)"
            )
            record.args = None
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = redact(self.formatException(record.exc_info))
        return json.dumps(entry, ensure_ascii=False)


def configure(level: str = "INFO", fmt: str = "text", full_urls: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(SummarisingFilter())
    handler.addFilter(RedactingFilter(full_urls))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("skor_bridge")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # pika logs each failed connection attempt (at ERROR, several lines for one failure):
    # its warnings go through the same summary as ours; librdkafka's lines already come
    # through skor_bridge.sinks.kafka's logger.
    pika = logging.getLogger("pika")
    pika.handlers[:] = [handler]
    pika.setLevel(max(logging.WARNING, root.level))
    pika.propagate = False
