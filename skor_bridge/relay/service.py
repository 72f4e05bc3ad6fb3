"""A relay process's lifecycle: startup -> consume and deliver -> drain -> shutdown.

Shutdown order, and why (as for the bridge):
1. the consumer loop stops taking records;
2. deliveries already running finish (bounded by the webhook timeout);
3. the finished prefix of every partition is committed, and the worker leaves the group at
   once, so the next owner starts right after what was delivered;
4. the dispatchers stop and close their sinks; the dead-letter producer flushes.
"""

from __future__ import annotations

import logging
import threading
from typing import TYPE_CHECKING, Any

from skor_bridge.errors import SinkError
from skor_bridge.health import STUCK_AFTER, HealthServer
from skor_bridge.relay.dispatch import Dispatcher
from skor_bridge.relay.metrics import RelayMetrics
from skor_bridge.relay.partitions import Partitions
from skor_bridge.relay.worker import RelayWorker, consumer_conf
from skor_bridge.signals import handle_stop_signals
from skor_bridge.sinks import load_sink

if TYPE_CHECKING:
    from skor_bridge.relay.config import RelayConfig
    from skor_bridge.relay.deadletter import DeadLetters

log = logging.getLogger(__name__)


class Relay:
    def __init__(self, config: RelayConfig) -> None:
        self.config = config
        self.metrics = RelayMetrics()
        for output in config.outputs:
            self.metrics.add_output(output.name)
        self.stop_requested = threading.Event()
        self.force_exit = threading.Event()
        #: Set by a dispatcher that cannot go on (a sink that cannot be opened).
        self.failed = threading.Event()
        self.partitions = Partitions(len(config.outputs))
        self.worker = RelayWorker(
            config, self.partitions, self.metrics, self.stop_requested, self.force_exit
        )
        self.dispatchers: list[Dispatcher] = []

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (exit 0) or an unrecoverable error (exit 1)."""
        restore = handle_stop_signals(self.stop_requested, self.request_stop)
        health: HealthServer | None = None
        dead_letters = self._dead_letters()
        try:
            if self.config.metrics_port is not None:
                health = HealthServer(
                    self.metrics.registry,
                    self.readiness,
                    self.config.metrics_port,
                    self.config.metrics_host,
                ).start()
            self.dispatchers = [
                Dispatcher(
                    index,
                    output,
                    load_sink(output.kind, output.name, output.settings),
                    self.partitions,
                    dead_letters,
                    self.metrics,
                    self.failed,
                )
                for index, output in enumerate(self.config.outputs)
            ]
            for dispatcher in self.dispatchers:
                dispatcher.start()
            self.worker.run(self.failed)
        finally:
            # The worker has committed and left its group; nothing the dispatchers still
            # do would count.
            self.failed.set()
            self.partitions.wake()
            for dispatcher in self.dispatchers:
                dispatcher.thread.join(timeout=10)
            if dead_letters is not None:
                dead_letters.close()
            if health is not None:
                health.stop()
            restore()
        broken = [d for d in self.dispatchers if d.failed is not None]
        if broken:
            error = broken[0].failed
            if isinstance(error, SinkError):
                raise error
            return 1
        log.info("relay stopped; offsets committed")
        return 0

    def request_stop(self) -> None:
        if self.stop_requested.is_set():
            self.force_exit.set()
        self.stop_requested.set()

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        """Ready unless a record has been failing for longer than STUCK_AFTER."""
        failing = self.partitions.failing_for()
        ready = failing < STUCK_AFTER and not self.failed.is_set()
        return ready, {
            "ready": ready,
            "role": "relay",
            "group": self.config.group,
            "partitions": len(self.partitions.owned()),
            "in_flight": self.partitions.unfinished,
            "failing_seconds": round(failing, 3),
        }

    def _dead_letters(self) -> DeadLetters | None:
        if self.config.dead_letter_topic is None:
            return None
        from skor_bridge.relay.deadletter import DeadLetters

        conf = {
            k: v
            for k, v in consumer_conf(self.config).items()
            if k in ("bootstrap.servers",) or k.startswith(("security.", "sasl.", "ssl."))
        }
        return DeadLetters(self.config.dead_letter_topic, conf)
