"""The demo's bridge: its Config, and `Bridge.run()` in a thread."""

from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING

from skor_bridge.config import (
    AmqpConfig,
    Config,
    KafkaConfig,
    OutputConfig,
    SourceConfig,
    WebhookConfig,
)
from skor_bridge.db import connect
from skor_bridge.errors import SkorError
from skor_bridge.tools.demo.database import scalar
from skor_bridge.tools.demo.options import AMQP_EXCHANGE, KAFKA_TOPIC, OUTPUT_PREFIX, SCHEMA

if TYPE_CHECKING:
    from collections.abc import Callable

    from skor_bridge.bridge import Bridge
    from skor_bridge.tools.demo.options import DemoOptions

#: The demo's bridge keeps the log "forever": it must not drop partitions a real one keeps.
KEEP_LOG = 100 * 365 * 86400.0

#: Seconds the demo waits for its outputs to be registered, or a stopping bridge to drain.
READY_TIMEOUT = 30.0
STOP_TIMEOUT = 45.0


def demo_config(options: DemoOptions, dsn: str, webhook_url: str) -> Config:
    """The webhook output, and RabbitMQ and Kafka outputs when asked for."""
    outputs = [OutputConfig(f"{OUTPUT_PREFIX}webhook", "webhook", WebhookConfig(webhook_url))]
    if options.amqp:
        outputs.append(
            OutputConfig(
                f"{OUTPUT_PREFIX}amqp", "amqp", AmqpConfig(options.amqp, exchange=AMQP_EXCHANGE)
            )
        )
    if options.kafka:
        outputs.append(
            OutputConfig(
                f"{OUTPUT_PREFIX}kafka", "kafka", KafkaConfig(options.kafka, topic=KAFKA_TOPIC)
            )
        )
    # "latest": in a shared database the demo's outputs must not replay its history.
    return Config(
        source=SourceConfig(dsn=dsn),
        outputs=tuple(outputs),
        start_from="latest",
        retention_seconds=KEEP_LOG,
        log_level="INFO" if options.verbose else "WARNING",
    )


def target(output: OutputConfig, table: str) -> str:
    """Where an output delivers the demo's table, for the start-up note."""
    settings = output.settings
    if isinstance(settings, WebhookConfig):
        return settings.url
    if isinstance(settings, AmqpConfig):
        return f"{settings.safe_url} exchange {settings.exchange}"
    topic = settings.topic.format(schema=SCHEMA, table=table)
    return f"{settings.bootstrap} topic {topic}"


class BridgeThread:
    """`Bridge.run()` in a thread: it installs no signal handlers there, the demo owns them."""

    def __init__(self, bridge: Bridge) -> None:
        self.bridge = bridge
        self.code: int | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="demo-bridge", daemon=True)

    def _run(self) -> None:
        try:
            self.code = self.bridge.run()
        except BaseException as exc:
            self.error = exc

    def start(self) -> None:
        self._thread.start()

    def failure(self) -> str | None:
        if self._thread.ident is None or self._thread.is_alive():
            return None
        if self.error is not None:
            return f"the bridge stopped: {self.error}"
        return f"the bridge stopped (exit code {self.code}); --verbose shows its log"

    def wait_ready(self, dsn: str, outputs: list[str], note: Callable[[str], None]) -> None:
        """Wait until every output has registered its start position. Changes made before
        that would be skipped: a new output starts after the latest event."""
        conn = connect(dsn, "demo")
        started = time.monotonic()
        told = False
        try:
            with conn.cursor() as cur:
                while True:
                    cur.execute(
                        "SELECT count(*) FROM skor.outputs WHERE name = ANY(%s)", (outputs,)
                    )
                    if scalar(cur) == len(outputs):
                        return
                    problem = self.failure()
                    if problem:
                        raise SkorError(problem)
                    waited = time.monotonic() - started
                    if waited > READY_TIMEOUT:
                        raise SkorError(
                            f"the bridge did not start within {READY_TIMEOUT:g} s; "
                            "--verbose shows its log"
                        )
                    if not told and waited > 3:
                        note("still waiting for the bridge's outputs to connect ...")
                        told = True
                    time.sleep(0.05)
        finally:
            conn.close()

    def stop(self) -> None:
        self.bridge.request_stop()
        self._thread.join(timeout=STOP_TIMEOUT)
