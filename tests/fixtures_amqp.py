"""RabbitMQ fixtures: the machine's broker at 127.0.0.1:5672, one exchange and queue per test.

Helpers open a short-lived BlockingConnection per call, so they keep working across a broker
restart (`stop_rabbitmq` / `start_rabbitmq`) and never hold a connection past the test.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pika
import pika.exceptions
import pytest
from pika.adapters.blocking_connection import BlockingChannel

AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"

#: One delivered message as the consumer saw it.
Message = tuple[pika.spec.Basic.Deliver, pika.BasicProperties, bytes]


@contextmanager
def amqp_channel(url: str = AMQP_URL) -> Iterator[BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


@dataclass
class AmqpQueue:
    """A topic exchange and one queue bound to it; `drain` consumes what arrived."""

    url: str
    exchange: str
    queue: str
    durable: bool = False

    def declare(self, binding_key: str = "#", arguments: dict[str, object] | None = None) -> None:
        with amqp_channel(self.url) as channel:
            # The same arguments as AmqpSink's declare, so either may create the exchange.
            channel.exchange_declare(self.exchange, "topic", durable=True)
            # Not exclusive: an exclusive queue dies with its connection, and the helpers use
            # one connection per call. x-expires removes it if a crashed run skips teardown.
            channel.queue_declare(
                self.queue,
                durable=self.durable,
                arguments={"x-expires": 600_000, **(arguments or {})},
            )
            channel.queue_bind(self.queue, self.exchange, binding_key)

    def unbind(self, binding_key: str = "#") -> None:
        with amqp_channel(self.url) as channel:
            channel.queue_unbind(self.queue, self.exchange, binding_key)

    def drain(
        self, expected_count: int | None = None, timeout: float = 10.0, idle: float = 0.5
    ) -> list[Message]:
        """Consume until `expected_count` messages arrived or `timeout` passed.

        Without `expected_count`, stop once nothing arrived for `idle` seconds.
        """
        messages: list[Message] = []
        deadline = time.monotonic() + timeout
        with amqp_channel(self.url) as channel:
            # Manual acks: messages prefetched past `expected_count` go back to the queue on
            # cancel instead of vanishing, so a later drain still sees duplicates or extras.
            channel.basic_qos(prefetch_count=1000)
            wait = idle if expected_count is None else 0.1
            for method, properties, body in channel.consume(self.queue, inactivity_timeout=wait):
                if method is not None:
                    channel.basic_ack(method.delivery_tag)
                    messages.append((method, properties, body))
                elif expected_count is None:
                    break
                if expected_count is not None and len(messages) >= expected_count:
                    break
                if time.monotonic() > deadline:
                    break
            channel.cancel()
        return messages

    def delete(self) -> None:
        with amqp_channel(self.url) as channel:
            channel.queue_delete(self.queue)
            channel.exchange_delete(self.exchange)


@pytest.fixture(scope="session")
def amqp_url() -> str:
    return AMQP_URL


@pytest.fixture
def make_amqp_queue(amqp_url: str) -> Iterator[Callable[..., AmqpQueue]]:
    """Factory: `make_amqp_queue(durable=False, binding_key="#", arguments=None)` -> AmqpQueue.

    `arguments` are extra queue arguments, e.g. {"x-max-length": 2}.
    """
    made: list[AmqpQueue] = []

    def make(
        durable: bool = False, binding_key: str = "#", arguments: dict[str, object] | None = None
    ) -> AmqpQueue:
        suffix = uuid.uuid4().hex[:12]
        queue = AmqpQueue(amqp_url, f"skor-test-{suffix}", f"skor-test-{suffix}", durable)
        made.append(queue)
        queue.declare(binding_key, arguments)
        return queue

    yield make
    wait_for_rabbitmq(amqp_url)
    for queue in made:
        queue.delete()


@pytest.fixture
def amqp_queue(make_amqp_queue) -> AmqpQueue:
    """A fresh exchange with a non-durable queue bound by "#" (every routing key)."""
    return make_amqp_queue()


def stop_rabbitmq() -> None:
    """Stop the RabbitMQ application (the node keeps running); connections are closed."""
    subprocess.run(["rabbitmqctl", "stop_app"], check=True, capture_output=True, timeout=60)


def start_rabbitmq(url: str = AMQP_URL, timeout: float = 60.0) -> None:
    """Start the RabbitMQ application and wait until it accepts AMQP connections."""
    subprocess.run(["rabbitmqctl", "start_app"], check=True, capture_output=True, timeout=120)
    wait_for_rabbitmq(url, timeout)


def wait_for_rabbitmq(url: str = AMQP_URL, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with amqp_channel(url):
                return
        except pika.exceptions.AMQPConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
