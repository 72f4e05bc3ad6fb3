"""What each output's consumer received: the webhook's requests arrive through the demo's
Receiver; RabbitMQ and Kafka are read back by the taps here, each in a thread of its own."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from skor_bridge.config import redact
from skor_bridge.errors import SkorError
from skor_bridge.tools.demo.options import AMQP_EXCHANGE

if TYPE_CHECKING:
    from collections.abc import Callable

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Arrival:
    """One event as an output's consumer received it."""

    output: str
    at: float
    event_id: str
    body: bytes


class AmqpTap:
    """Reads back what the bridge publishes to the demo's exchange, through a private queue."""

    kind = "amqp"

    def __init__(self, url: str, binding_key: str, emit: Callable[[Arrival], None]) -> None:
        self.url = url
        self.binding_key = binding_key
        self.emit = emit
        self._connection: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-amqp", daemon=True)

    def start(self) -> None:
        """Bind before the bridge publishes, so the first message already has a queue."""
        import pika

        try:
            self._connection = pika.BlockingConnection(pika.URLParameters(self.url))
            channel = self._connection.channel()
            channel.exchange_declare(AMQP_EXCHANGE, "topic", durable=True)  # as the sink does
            queue_name = channel.queue_declare("", exclusive=True, auto_delete=True).method.queue
            channel.queue_bind(queue_name, AMQP_EXCHANGE, self.binding_key)
            channel.basic_consume(queue_name, self._on_message, auto_ack=True)
        except Exception as exc:
            self._close_connection()
            raise SkorError(
                f"cannot use RabbitMQ at {redact(self.url)}: {redact(_innermost(exc))}"
            ) from None
        self._thread.start()

    def _on_message(self, _channel: Any, _method: Any, properties: Any, body: bytes) -> None:
        self.emit(Arrival(self.kind, time.time(), properties.message_id or "", body))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self._connection.process_data_events(time_limit=0.1)
        except Exception as exc:
            log.warning("demo: stopped reading RabbitMQ: %s", str(exc) or type(exc).__name__)

    def close(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(Exception):
                self._connection.channel().exchange_delete(AMQP_EXCHANGE)
        self._close_connection()

    def _close_connection(self) -> None:
        if self._connection is not None and self._connection.is_open:
            with contextlib.suppress(Exception):
                self._connection.close()
        self._connection = None


def _innermost(exc: BaseException) -> str:
    """The socket or broker error under pika's wrappers, as one line."""
    for _ in range(8):
        inner = getattr(exc, "exception", None) or (exc.args[0] if exc.args else None)
        if not isinstance(inner, BaseException):
            break
        exc = inner
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return " ".join(f"{type(exc).__name__}: {text}".split())


class KafkaTap:
    """Reads back the demo's topic from its end at start-up, without a consumer group."""

    kind = "kafka"

    def __init__(self, bootstrap: str, topic: str, emit: Callable[[Arrival], None]) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.emit = emit
        self._consumer: Any = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="demo-kafka", daemon=True)

    def start(self) -> None:
        from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition
        from confluent_kafka.admin import AdminClient, NewTopic

        try:
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            created = admin.create_topics([NewTopic(self.topic, -1, -1)], request_timeout=10)
            try:
                created[self.topic].result(timeout=15)
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    raise
            self._consumer = Consumer(
                {
                    "bootstrap.servers": self.bootstrap,
                    "group.id": "skor-demo",  # librdkafka wants one; assign() never joins it
                    "enable.auto.commit": False,
                    "fetch.wait.max.ms": 10,
                }
            )
            meta = self._consumer.list_topics(self.topic, timeout=10)
            assigned = []
            for partition in sorted(meta.topics[self.topic].partitions):
                # Explicit end offsets: OFFSET_END would be resolved later, after the first
                # records may already have been written.
                _, high = self._consumer.get_watermark_offsets(
                    TopicPartition(self.topic, partition), timeout=10
                )
                assigned.append(TopicPartition(self.topic, partition, high))
            self._consumer.assign(assigned)
        except Exception as exc:
            if self._consumer is not None:
                self._consumer.close()
            error = exc.args[0] if isinstance(exc, KafkaException) and exc.args else None
            reason = error.str() if isinstance(error, KafkaError) else str(exc)
            raise SkorError(
                f"cannot use Kafka at {self.bootstrap}: {reason or type(exc).__name__}"
            ) from None
        self._thread.start()

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                message = self._consumer.poll(0.1)
                if message is None or message.error() is not None:
                    continue
                event_id = dict(message.headers() or []).get("event-id") or b""
                if isinstance(event_id, bytes):
                    event_id = event_id.decode("utf-8", "replace")
                self.emit(Arrival(self.kind, time.time(), event_id, message.value() or b""))
        except Exception as exc:
            log.warning("demo: stopped reading Kafka: %s", str(exc) or type(exc).__name__)

    def close(self) -> None:
        from confluent_kafka.admin import AdminClient

        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None
            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            with contextlib.suppress(Exception):
                admin.delete_topics([self.topic], request_timeout=5)[self.topic].result(10)
