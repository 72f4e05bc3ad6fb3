"""Kafka output through librdkafka (confluent-kafka).

Each event becomes one record: topic from the `topic` template, key = the row's primary key
as compact JSON (or "schema.table" for a table without one), value = Skor's JSON body,
headers event-id, schema, table and op. Records with the same key go to one partition, and
the idempotent producer keeps each partition in order across retries and batches.
"""

from __future__ import annotations

import functools
import logging
import re
import time
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from skor_bridge.config import redact
from skor_bridge.errors import SinkError
from skor_bridge.sinks.base import DELIVERED, Outcome, Result, Sink, captured_at_text

if TYPE_CHECKING:
    from confluent_kafka import Message

    Headers = list[tuple[str, str | bytes | None]]

    from skor_bridge.config import KafkaConfig
    from skor_bridge.event import ChangeEvent
    from skor_bridge.sinks.base import Completion

log = logging.getLogger(__name__)
#: librdkafka's own log lines (e.g. a refused connection, once per reconnect attempt).
_librdkafka_log = logging.getLogger(__name__ + ".librdkafka")

#: Producer settings applied before `KafkaConfig.options`; any option overrides them.
DEFAULTS: dict[str, str] = {
    # Exactly one copy per successful report, in partition order, even when librdkafka
    # retries internally after a lost connection.
    "enable.idempotence": "true",
    "acks": "all",
    # A few milliseconds of batching lets one send() fill large produce requests.
    "linger.ms": "5",
    "batch.num.messages": "10000",
    # Bounds how long an undeliverable record waits, and so how long send() blocks.
    "message.timeout.ms": "30000",
    # Java clients' partitioner: a key lands in the same partition whichever client wrote it.
    "partitioner": "murmur2_random",
}

#: librdkafka spells some settings two ways; the later spelling would silently win.
_ALIASES = {
    "delivery.timeout.ms": "message.timeout.ms",
    "request.required.acks": "acks",
    "queue.buffering.max.ms": "linger.ms",
}

#: How a librdkafka error maps to an outcome, after vector's Kafka sink. REJECTED means that
#: re-sending the same record cannot succeed; every code not listed is RETRY.
OUTCOMES: dict[int, Outcome] = {
    KafkaError.MSG_SIZE_TOO_LARGE: Outcome.REJECTED,
    KafkaError.INVALID_MSG_SIZE: Outcome.REJECTED,
    KafkaError.RECORD_LIST_TOO_LARGE: Outcome.REJECTED,
    KafkaError.INVALID_RECORD: Outcome.REJECTED,
    KafkaError.UNSUPPORTED_FOR_MESSAGE_FORMAT: Outcome.REJECTED,
    # librdkafka reports a missing topic only after topic.metadata.propagation.max.ms, so
    # by then neither creation nor the broker's auto-creation is going to make it.
    KafkaError.UNKNOWN_TOPIC_OR_PART: Outcome.REJECTED,
    KafkaError._UNKNOWN_TOPIC: Outcome.REJECTED,
    KafkaError._UNKNOWN_PARTITION: Outcome.REJECTED,
    KafkaError.TOPIC_EXCEPTION: Outcome.REJECTED,  # invalid topic name
    KafkaError.TOPIC_AUTHORIZATION_FAILED: Outcome.REJECTED,
    KafkaError.CLUSTER_AUTHORIZATION_FAILED: Outcome.REJECTED,
    KafkaError.POLICY_VIOLATION: Outcome.REJECTED,
    KafkaError._INVALID_ARG: Outcome.REJECTED,
    # Transient, listed for the reader: the broker is down, slow, or changing leaders.
    KafkaError._MSG_TIMED_OUT: Outcome.RETRY,
    KafkaError._TRANSPORT: Outcome.RETRY,
    KafkaError._ALL_BROKERS_DOWN: Outcome.RETRY,
    KafkaError.REQUEST_TIMED_OUT: Outcome.RETRY,
    KafkaError.NOT_ENOUGH_REPLICAS: Outcome.RETRY,
    KafkaError._FATAL: Outcome.RETRY,  # the producer is replaced (see _SESSION_ENDED)
}

#: Errors after which the broker will not take this producer's records again: a fenced
#: producer must be replaced (as the Java client requires), while librdkafka, for an
#: idempotent producer, would keep bumping its epoch. The next send() starts a new producer
#: with a new producer id; the events themselves are RETRY.
_SESSION_ENDED = {
    KafkaError.PRODUCER_FENCED,
    KafkaError.INVALID_PRODUCER_EPOCH,
    KafkaError._FATAL,
    KafkaError._FENCED,
}

#: Added to message.timeout.ms: every record gets its report by then, barring a stuck client.
_REPORT_GRACE = 5.0
#: Longest a topic creation may hold up a batch.
_ADMIN_TIMEOUT = 10.0
#: close() waits this long for records still queued (a reachable broker acknowledges them in
#: milliseconds; the rest are delivered again after a restart), so a stop with the broker
#: unreachable stays within 10 s.
_CLOSE_TIMEOUT = 2.0
#: Codes after which a topic creation is worth trying again with the next batch.
_CREATE_AGAIN = {
    KafkaError._TIMED_OUT,
    KafkaError._TRANSPORT,
    KafkaError.REQUEST_TIMED_OUT,
    KafkaError._ALL_BROKERS_DOWN,
    KafkaError.NOT_CONTROLLER,
}


def _session_ended(err: KafkaError) -> bool:
    return err.fatal() or err.code() in _SESSION_ENDED


def render(event: ChangeEvent) -> bytes:
    """The record's value for one event (Skor's JSON body)."""
    return event.body()


def headers(event: ChangeEvent) -> Headers:
    return [
        ("event-id", event.id),
        ("schema", event.schema),
        ("table", event.table),
        ("op", event.op),
        ("position", str(event.position)),
        ("captured-at", captured_at_text(event)),
        *event.headers,
    ]


def result_for(err: KafkaError) -> Result:
    """The Result for a failed delivery or produce call; the text is one line, no secrets."""
    text = " ".join(redact(f"{err.name()}: {err.str()}").split())
    return Result(OUTCOMES.get(err.code(), Outcome.RETRY), f"kafka {text}")


class KafkaSink(Sink):
    """Publishes each event as one Kafka record with the idempotent producer (acks=all).

    Guarantee: an event is DELIVERED only after the broker acknowledged it to all in-sync
    replicas. Every other event comes back RETRY or REJECTED within message.timeout.ms plus
    a few seconds, even with no broker reachable. A RETRY record may still have been written
    (delivery is at least once); a REJECTED one was not written (see OUTCOMES). `options` are
    passed to librdkafka after DEFAULTS and may override any of them, even idempotence.
    """

    kind = "kafka"
    #: Records in flight at once; librdkafka batches them into produce requests.
    max_in_flight = 10000
    #: Records per send() call of the relay (the engine uses submit/poll).
    max_batch = 2000

    def __init__(self, name: str, config: KafkaConfig) -> None:
        super().__init__(name)
        self.config = config
        options = dict(config.options)
        defaults = {
            k: v
            for k, v in DEFAULTS.items()
            if k not in options and not any(_ALIASES.get(o) == k for o in options)
        }
        self._conf: dict[str, Any] = {"bootstrap.servers": config.bootstrap, **defaults, **options}
        timeout_ms = next(
            (
                self._conf[k]
                for k in ("delivery.timeout.ms", "message.timeout.ms")
                if k in self._conf
            ),
            "30000",
        )
        try:
            self._message_timeout = int(timeout_ms) / 1000
        except ValueError:
            self._message_timeout = 30.0  # librdkafka rejects the value in open()
        if self._message_timeout <= 0:  # librdkafka's "never"; send() still needs a bound
            self._message_timeout = 30.0
        self._wait = self._message_timeout + _REPORT_GRACE
        self.completion_bound = self._wait
        #: Tickets in flight -> when to give up waiting for their report.
        self._deadlines: dict[int, float] = {}
        #: Topics whose creation failed -> when to try again (not once per event).
        self._create_after: dict[str, float] = {}
        self._done: list[Completion] = []
        self._producer: Producer | None = None
        self._known_topics: set[str] = set()
        self._create_logged: set[str] = set()
        self._session_ended = False

    def open(self) -> None:
        """Build the producer. Connects in the background, so a broker that is down is not an
        error here; an option librdkafka rejects is (SinkError)."""
        if self._producer is not None:
            return
        conf = {**self._conf, "logger": _librdkafka_log, "error_cb": self._on_error}
        self._producer = self._build(Producer, conf)
        self._session_ended = False

    def _build(self, cls: Any, conf: dict[str, Any]) -> Any:
        try:
            return cls(conf)
        except KafkaException as exc:
            # librdkafka quotes the rejected value, which may be a password: name the
            # property only.
            text = str(exc.args[0].str()) if exc.args else ""
            prop = re.search(r'property:? "([^"]+)"', text)
            what = "unknown option" if text.startswith("No such") else "invalid value for"
            detail = f"{what} {prop[1]!r}" if prop else "invalid configuration"
            raise SinkError(f"kafka output {self.name!r}: {detail}") from None

    def _on_error(self, err: KafkaError) -> None:
        # Connection errors repeat every few seconds while a broker is down; the failed
        # deliveries already say so, so only errors that need a human are warnings.
        self._session_ended = self._session_ended or _session_ended(err)
        if err.fatal() or err.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):
            log.warning("kafka output %r: %s", self.name, result_for(err).error)
        else:
            log.debug("kafka output %r: %s", self.name, result_for(err).error)

    def submit(self, ticket: int, event: ChangeEvent) -> None:
        self.open()
        producer = self._producer
        assert producer is not None
        topic = self.config.topic.format(schema=event.schema, table=event.table, op=event.op)
        if topic not in self._known_topics and time.monotonic() >= self._create_after.get(
            topic, 0.0
        ):
            self._create_topics({topic})
        key = event.key if event.key is not None else event.qualified_table
        self._deadlines[ticket] = time.monotonic() + self._wait
        while True:
            try:
                producer.produce(
                    topic,
                    render(event),
                    key,
                    headers=headers(event),
                    on_delivery=functools.partial(self._report, ticket),
                )
                return
            except BufferError:
                # The local queue is full: serve reports to make room. Flow control,
                # not a delivery retry, so the record is produced exactly once here.
                if time.monotonic() >= self._deadlines[ticket]:
                    self._complete(ticket, Result(Outcome.RETRY, "kafka: local queue full"))
                    return
                producer.poll(0.05)
            except KafkaException as exc:
                self._complete(ticket, result_for(exc.args[0]))
                self._session_ended = self._session_ended or _session_ended(exc.args[0])
                return

    def poll(self, timeout: float) -> list[Completion]:
        producer = self._producer
        if producer is not None and not self._done and (self._deadlines or timeout == 0):
            producer.poll(timeout)
        now = time.monotonic()
        # librdkafka reports every record within message.timeout.ms; this is the backstop.
        late = [t for t, deadline in self._deadlines.items() if deadline <= now]
        for ticket in late:
            self._complete(
                ticket, Result(Outcome.RETRY, f"kafka: no delivery report within {self._wait:.0f}s")
            )
        if self._session_ended:
            self._discard_producer()
        done, self._done = self._done, []
        return done

    def _report(self, ticket: int, err: KafkaError | None, _msg: Message) -> None:
        if err is None:
            self._complete(ticket, DELIVERED)
        else:
            self._session_ended = self._session_ended or _session_ended(err)
            self._complete(ticket, result_for(err))

    def _complete(self, ticket: int, result: Result) -> None:
        # A report after the backstop gave up on the record is not reported twice.
        if self._deadlines.pop(ticket, None) is not None:
            self._done.append((ticket, result))

    def _create_topics(self, topics: set[str]) -> None:
        """Create topics seen for the first time. A failure is logged once per topic and
        the batch goes ahead: the broker may create the topic itself."""
        if not topics:
            return
        if not self.config.create_topics:
            self._known_topics |= topics
            return
        # A short-lived client: topics are new rarely, and an idle admin client would keep
        # a connection and queue log lines nobody serves. It gets only the user's options
        # (addresses, security), not the producer's idempotence.
        admin = self._build(
            AdminClient,
            {
                "bootstrap.servers": self.config.bootstrap,
                **dict(self.config.options),
                "logger": _librdkafka_log,
            },
        )
        new = [
            NewTopic(
                t,
                num_partitions=self.config.partitions or -1,
                replication_factor=self.config.replication_factor or -1,
            )
            for t in sorted(topics)
        ]
        timeout = min(_ADMIN_TIMEOUT, self._message_timeout)
        futures = admin.create_topics(new, operation_timeout=timeout, request_timeout=timeout)
        for topic, future in futures.items():
            try:
                future.result(timeout=timeout + _REPORT_GRACE)
            except KafkaException as exc:
                err: KafkaError = exc.args[0]
                if err.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    self._log_create_failure(topic, result_for(err).error or "")
                    if err.code() in _CREATE_AGAIN or err.retriable():
                        # Broker unreachable: try again later, not for every event.
                        self._create_after[topic] = time.monotonic() + self._message_timeout
                        continue
            except Exception as exc:  # a future that never resolved
                self._log_create_failure(topic, type(exc).__name__)
                self._create_after[topic] = time.monotonic() + self._message_timeout
                continue
            self._known_topics.add(topic)
        admin.poll(0)  # hand its log lines to Python logging

    def _log_create_failure(self, topic: str, reason: str) -> None:
        if topic not in self._create_logged:
            self._create_logged.add(topic)
            log.warning(
                "kafka output %r: could not create topic %r (%s); sending anyway",
                self.name,
                topic,
                reason,
            )

    def _discard_producer(self) -> None:
        # After a fatal error or fencing (see _SESSION_ENDED) this producer
        # refuses every record; the next submit() builds a new one.
        log.warning("kafka output %r: producer fenced or failed; starting a new one", self.name)
        producer, self._producer = self._producer, None
        self._session_ended = False
        if producer is not None:
            try:
                producer.purge()
                producer.poll(0)
            except Exception:  # it is broken already; only its resources matter now
                pass

    def close(self) -> None:
        producer, self._producer = self._producer, None
        self._deadlines.clear()
        self._done.clear()
        if producer is None:
            return
        try:
            left = producer.flush(_CLOSE_TIMEOUT)
            if left:
                log.warning("kafka output %r: %d records undelivered at close", self.name, left)
        except Exception as exc:  # close() must not raise
            log.warning("kafka output %r: close failed: %s", self.name, type(exc).__name__)
