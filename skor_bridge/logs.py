"""Log set-up: one line per event of interest, text or JSON, never a password."""

from __future__ import annotations

import json
import logging
import sys
import time

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
    handler.addFilter(RedactingFilter(full_urls))
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("skor_bridge")
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    root.propagate = False
    # pika logs every failed connection attempt at ERROR; our own one-line warning says it.
    logging.getLogger("pika").setLevel(logging.CRITICAL)
