"""The dead-letter topic: where a record goes when a webhook refused it for good.

The record keeps its value, key and headers, and gains headers saying why (see
`records.DEAD_LETTER_HEADERS`). Only once the broker acknowledged it does the relay count
the record as finished and commit past it, so a dead letter is never lost either.
"""

from __future__ import annotations

import functools
import logging
import threading
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Producer

from skor_bridge.backoff import backoff_delay
from skor_bridge.config import redact
from skor_bridge.relay.records import dead_letter_headers

if TYPE_CHECKING:
    from collections.abc import Callable

    from skor_bridge.relay.partitions import Work

log = logging.getLogger(__name__)

#: Seconds one produce waits for the broker's acknowledgement before trying again.
_ACK_TIMEOUT = 30.0


def _report(reports: list[KafkaError | None], err: KafkaError | None, msg: object) -> None:
    reports.append(err)


class DeadLetters:
    """An idempotent producer writing to one topic; `send` returns once it is stored."""

    def __init__(self, topic: str, conf: dict[str, Any]) -> None:
        self.topic = topic
        self._producer = Producer(
            {
                **conf,
                "enable.idempotence": "true",
                "acks": "all",
                "message.timeout.ms": str(int(_ACK_TIMEOUT * 1000)),
            }
        )

    def send(
        self,
        work: Work,
        output: str,
        error: str,
        attempts: int,
        stopping: threading.Event,
        live: Callable[[], bool],
    ) -> bool:
        """Store the record in the dead-letter topic, retrying until the broker has it.
        False if the relay is stopping or `live()` turns false (partition revoked)."""
        headers: list[tuple[str, str | bytes | None]] = list(
            dead_letter_headers(work, output, error, attempts)
        )
        attempt = 0
        while not stopping.is_set() and live():
            reports: list[KafkaError | None] = []
            try:
                self._producer.produce(
                    self.topic,
                    work.value,
                    work.key,
                    headers=headers,
                    on_delivery=functools.partial(_report, reports),
                )
                self._producer.flush(_ACK_TIMEOUT + 5)
                failure = reports[0] if reports else KafkaError(KafkaError._TIMED_OUT)
            except KafkaException as exc:
                failure = exc.args[0]
            except BufferError:
                failure = KafkaError(KafkaError._QUEUE_FULL)
            if failure is None:
                return True
            attempt += 1
            delay = backoff_delay(attempt, 0.5, 30.0)
            log.warning(
                "dead-letter topic %r: could not store %s/%d@%d (%s); retrying in %.1fs",
                self.topic,
                work.topic,
                work.partition,
                work.offset,
                redact(f"{failure.name()}: {failure.str()}"),
                delay,
            )
            stopping.wait(delay)
        return False

    def close(self) -> None:
        try:
            self._producer.flush(5)
        except Exception:  # closing must not raise
            pass
