"""The consumer-group member: takes records, commits finished prefixes, handles rebalances.

Everything Kafka-facing happens on one thread (librdkafka's consumer is not shared), and
rebalance callbacks run inside `consume()` on that thread. Order of a revocation, and why:
1. stop starting records of the revoked partitions (queued ones are dropped: the next
   owner reads them from the committed offset);
2. wait, at most `revoke_timeout`, for attempts already running (a webhook request in
   flight), so that the next owner does not race an old request for the same row;
3. commit each partition's finished prefix, so the next owner starts right after it;
4. forget the partitions.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from skor_bridge.config import redact
from skor_bridge.errors import ConfigError, SinkError
from skor_bridge.relay.config import FIXED_OPTIONS
from skor_bridge.relay.records import work_from

if TYPE_CHECKING:
    from confluent_kafka import Message

    from skor_bridge.relay.config import RelayConfig
    from skor_bridge.relay.metrics import RelayMetrics
    from skor_bridge.relay.partitions import Partitions

log = logging.getLogger(__name__)
_librdkafka_log = logging.getLogger(__name__ + ".librdkafka")

#: Consumer settings applied before the user's `--kafka-option`s, which may override them.
DEFAULTS: dict[str, str] = {
    "auto.offset.reset": "earliest",
    "enable.partition.eof": "false",
    # Reading ahead beyond what max_in_flight admits only costs memory.
    "queued.max.messages.kbytes": "16384",
}

#: Seconds between commits of finished prefixes while running.
COMMIT_INTERVAL = 1.0
#: Seconds between lag measurements.
LAG_INTERVAL = 1.0
#: Records taken from the consumer per call.
CONSUME_BATCH = 500


def consumer_conf(config: RelayConfig) -> dict[str, Any]:
    return {
        **DEFAULTS,
        **dict(config.options),
        **FIXED_OPTIONS,
        "bootstrap.servers": config.bootstrap,
        "group.id": config.group,
    }


class RelayWorker:
    """Runs the consumer loop until `stop` is set; the dispatchers do the deliveries."""

    def __init__(
        self,
        config: RelayConfig,
        partitions: Partitions,
        metrics: RelayMetrics,
        stop: threading.Event,
        force_exit: threading.Event,
    ) -> None:
        self.config = config
        self.partitions = partitions
        self.metrics = metrics
        self.stop = stop
        self.force_exit = force_exit
        self.consumer: Consumer | None = None
        self._paused = False
        self._last_commit = 0.0
        self._last_lag = 0.0
        self._lag_labels: set[tuple[str, int]] = set()
        #: Set once the consumer has joined its group and got an assignment (maybe empty).
        self.assigned = threading.Event()

    def run(self, failed: threading.Event) -> None:
        conf = {
            **consumer_conf(self.config),
            "logger": _librdkafka_log,
            "error_cb": self._on_error,
            "on_commit": self._on_commit,
        }
        try:
            consumer = self.consumer = Consumer(conf)
        except KafkaException as exc:
            # Bad --kafka-option (or [relay] options): the user's input, so exit code 2.
            raise ConfigError(f"--kafka-option: {_option_problem(exc)}") from None
        consumer.subscribe(
            list(self.config.topics),
            on_assign=self._on_assign,
            on_revoke=self._on_revoke,
            on_lost=self._on_lost,
        )
        log.info(
            "relay joining group %r for %s on %s",
            self.config.group,
            ", ".join(self.config.topics),
            redact(self.config.bootstrap),
        )
        try:
            while not self.stop.is_set() and not failed.is_set():
                self._flow_control(consumer)
                for message in consumer.consume(CONSUME_BATCH, 0.1):
                    self._take(message)
                now = time.monotonic()
                if now - self._last_commit >= COMMIT_INTERVAL:
                    self._commit(consumer, None, asynchronous=True)
                if now - self._last_lag >= LAG_INTERVAL:
                    self._measure_lag(consumer)
        finally:
            self._shutdown(consumer)

    # -- records ----------------------------------------------------------------------------

    def _take(self, message: Message) -> None:
        err = message.error()
        if err is not None:
            if err.fatal():
                raise SinkError(f"kafka: {redact(err.str())}")
            if err.code() != KafkaError._PARTITION_EOF:
                log.warning("kafka: %s", redact(err.str()))
            return
        self.partitions.add(work_from(message))

    def _flow_control(self, consumer: Consumer) -> None:
        """Pause fetching past max_in_flight unfinished records; resume at half. Paused,
        the loop keeps calling consume() so that the group sees the worker alive."""
        unfinished = self.partitions.unfinished
        if not self._paused and unfinished >= self.config.max_in_flight:
            consumer.pause(consumer.assignment())
            self._paused = True
        elif self._paused and unfinished <= self.config.max_in_flight // 2:
            consumer.resume(consumer.assignment())
            self._paused = False

    # -- commits ----------------------------------------------------------------------------

    def _commit(
        self, consumer: Consumer, tps: list[tuple[str, int]] | None, asynchronous: bool
    ) -> None:
        self._last_commit = time.monotonic()
        offsets = self.partitions.to_commit(tps)
        if not offsets:
            return
        listed = [TopicPartition(t, p, o) for (t, p), o in offsets.items()]
        self.partitions.committed(dict(offsets))  # a failure resets it (see _on_commit)
        try:
            if asynchronous:
                consumer.commit(offsets=listed, asynchronous=True)
            else:
                consumer.commit(offsets=listed, asynchronous=False)
        except KafkaException as exc:
            self.partitions.committed(dict.fromkeys(offsets))
            # The records stay unacknowledged; the next owner delivers them again.
            log.warning(
                "kafka: commit failed (%s); %d partition(s) will be redelivered "
                "from their last commit",
                redact(exc.args[0].str()),
                len(listed),
            )
            return
        if not asynchronous:
            log.info("committed %s", ", ".join(f"{t}[{p}]@{o}" for (t, p), o in offsets.items()))

    def _on_commit(self, err: KafkaError | None, partitions: list[TopicPartition]) -> None:
        failed = [tp for tp in partitions if tp.error is not None]
        if err is not None or failed:
            if err is not None and err.code() == KafkaError._NO_OFFSET:
                return
            self.partitions.committed(
                {(tp.topic, tp.partition): None for tp in (failed or partitions)}
            )
            log.debug("kafka: commit failed: %s", redact(err.str() if err else "partition error"))

    # -- rebalances -------------------------------------------------------------------------

    def _on_assign(self, consumer: Consumer, assigned: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in assigned]
        self.partitions.assign(tps)
        if self._paused:
            # With the cooperative protocol the partitions kept from before stay paused;
            # resume them, and flow control pauses everything again if still needed.
            consumer.resume(consumer.assignment())
            self._paused = False
        self.metrics.assigned.set(len(self.partitions.owned()))
        self.assigned.set()
        log.info("assigned %s", _names(tps) or "no partitions")

    def _on_revoke(self, consumer: Consumer, revoked: list[TopicPartition]) -> None:
        tps = [(tp.topic, tp.partition) for tp in revoked]
        if not tps:
            return
        log.info("revoking %s: finishing deliveries in flight", _names(tps))
        self.partitions.revoke(tps)
        if not self.partitions.wait_idle(tps, self.config.revoke_timeout, self.force_exit):
            log.warning(
                "revoking %s: deliveries still running after %.0fs; the next owner "
                "delivers them again",
                _names(tps),
                self.config.revoke_timeout,
            )
        self._commit(consumer, tps, asynchronous=False)
        self.partitions.forget(tps)
        self._drop_lag(tps)
        self.metrics.assigned.set(len(self.partitions.owned()))
        log.info("revoked %s", _names(tps))

    def _on_lost(self, consumer: Consumer, lost: list[TopicPartition]) -> None:
        # Another member may own them already: committing now could move its offset.
        tps = [(tp.topic, tp.partition) for tp in lost]
        self.partitions.revoke(tps)
        self.partitions.forget(tps)
        self._drop_lag(tps)
        self.metrics.assigned.set(len(self.partitions.owned()))
        log.warning(
            "lost %s (session expired); their next owner delivers what was not committed",
            _names(tps),
        )

    def _on_error(self, err: KafkaError) -> None:
        if err.fatal() or err.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):
            log.warning("kafka: %s", redact(err.str()))
        else:
            log.debug("kafka: %s", redact(err.str()))

    # -- lag --------------------------------------------------------------------------------

    def _measure_lag(self, consumer: Consumer) -> None:
        """Per partition: records after the first unfinished one (the group's lag once
        committed). The high watermark is the one the last fetch reported: no request, so
        the loop never waits on it; a partition fetched nothing from yet is skipped."""
        self._last_lag = time.monotonic()
        for (topic, partition), position in self.partitions.positions().items():
            try:
                _, high = consumer.get_watermark_offsets(
                    TopicPartition(topic, partition), cached=True
                )
            except KafkaException:
                continue
            if high is None or high < 0:
                continue
            start = position if position is not None else high
            self.metrics.partition_lag.labels(topic, str(partition)).set(max(0, high - start))
            self._lag_labels.add((topic, partition))

    def _drop_lag(self, tps: list[tuple[str, int]]) -> None:
        for topic, partition in tps:
            if (topic, partition) in self._lag_labels:
                self._lag_labels.discard((topic, partition))
                self.metrics.partition_lag.remove(topic, str(partition))

    # -- shutdown ---------------------------------------------------------------------------

    def _shutdown(self, consumer: Consumer) -> None:
        """Drain what is running (bounded), commit, leave the group."""
        owned = self.partitions.owned()
        self.partitions.revoke(owned)
        if not self.partitions.wait_idle(owned, self.config.revoke_timeout, self.force_exit):
            log.warning(
                "stopping: deliveries still running after %.0fs; handed back",
                self.config.revoke_timeout,
            )
        try:
            self._commit(consumer, None, asynchronous=False)
            self.partitions.forget(owned)
            consumer.close()  # leaves the group now, rather than after session.timeout.ms
        except (KafkaException, RuntimeError) as exc:
            log.warning("kafka: close: %s", redact(str(exc)))


def _names(tps: list[tuple[str, int]]) -> str:
    return ", ".join(f"{t}[{p}]" for t, p in sorted(tps))


def _option_problem(exc: KafkaException) -> str:
    import re

    text = str(exc.args[0].str()) if exc.args else ""
    prop = re.search(r'property:? "([^"]+)"', text)
    what = "unknown option" if text.startswith("No such") else "invalid value for"
    return f"{what} {prop[1]!r}" if prop else "invalid configuration"
