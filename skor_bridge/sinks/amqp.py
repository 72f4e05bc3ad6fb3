"""RabbitMQ output: one persistent message per event on a durable topic exchange."""

from __future__ import annotations

import logging
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop, SelectConnection

from skor_bridge.config import redact
from skor_bridge.errors import SinkError
from skor_bridge.sinks.base import DELIVERED, Outcome, Result, Sink

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from pika.channel import Channel
    from pika.connection import Connection
    from pika.frame import Method
    from pika.spec import Basic, BasicProperties

    from skor_bridge.config import AmqpConfig
    from skor_bridge.event import ChangeEvent

log = logging.getLogger("skor_bridge.sinks.amqp")

#: Longest wait for the broker to confirm a batch; past it the batch is retried.
CONFIRM_TIMEOUT = 30.0
#: Heartbeat timeout (s) unless the URL sets one: either side drops a peer silent this long.
HEARTBEAT = 30
#: A connection blocked by a broker alarm (memory, disk) this long is dropped; URL may override.
BLOCKED_CONNECTION_TIMEOUT = 20.0
#: Longest wait for the broker's Close-Ok before the socket is simply cut.
CLOSE_TIMEOUT = 2.0
#: Publishes between two socket flushes within a batch.
FLUSH_EVERY = 128
#: AMQP short strings (routing key, message id) hold at most this many bytes.
SHORTSTR_MAX = 255


@dataclass
class _InFlight:
    """The batch being published: what the broker's acks, nacks and returns refer to."""

    results: list[Result | None]
    keys: list[str]
    tags: dict[int, int] = field(default_factory=dict)  # unconfirmed delivery tag -> index
    ids: dict[str, int] = field(default_factory=dict)  # message_id -> index
    returned: set[int] = field(default_factory=set)


class AmqpSink(Sink):
    """Publishes each event as one persistent message to a durable topic exchange.

    Guarantee: an event is DELIVERED only after RabbitMQ confirmed it with basic.ack (for a
    persistent message in durable queues: written to disk). A nack, an unroutable message
    when `mandatory` is set, a lost connection or a confirm timeout make the event RETRY.
    Messages are published in batch order on one channel, so a queue sees them in send order.

    Unroutable messages with `mandatory` off are DELIVERED, counted in `unroutable` and logged.

    The thread calling `send` drives the connection; nothing runs between calls, so one
    thread at a time. `send([])` only services the connection (heartbeats, noticing a closed
    socket); calling it on idle ticks keeps the broker from dropping a quiet connection.
    """

    kind = "amqp"
    #: Messages published per send before waiting for confirms: the broker confirms
    #: persistent messages after a disk sync, which larger batches share.
    max_batch = 2000
    #: Per instance, so tests can shorten it.
    confirm_timeout: float = CONFIRM_TIMEOUT

    def __init__(self, name: str, config: AmqpConfig) -> None:
        super().__init__(name)
        self.config = config
        #: Messages no queue took while `mandatory` is off: counted as delivered.
        self.unroutable = 0
        password = urllib.parse.urlsplit(config.url).password or ""
        self._secrets = {s for s in (password, urllib.parse.unquote(password)) if s}
        self._params: pika.URLParameters | None = None
        self._ioloop: IOLoop | None = None
        self._conn: SelectConnection | None = None
        self._channel: Channel | None = None
        self._ready = False
        self._failure: str | None = None
        self._until: Callable[[], bool] | None = None
        self._floor = 1  # lowest delivery tag a multiple-ack may still cover
        self._next_tag = 1
        self._batch: _InFlight | None = None

    def connection_parameters(self) -> pika.URLParameters:
        """pika's parameters for the URL, with our timeouts unless the URL sets its own."""
        if self._params is None:
            try:
                params = pika.URLParameters(self.config.url)
            except (ValueError, TypeError, SyntaxError) as exc:
                url, reason = self.config.safe_url, self._scrub(exc)
                raise SinkError(f"amqp: bad URL {url}: {reason}") from None
            query = urllib.parse.parse_qs(urllib.parse.urlsplit(self.config.url).query)
            if "heartbeat" not in query:
                params.heartbeat = HEARTBEAT
            if "blocked_connection_timeout" not in query:
                params.blocked_connection_timeout = BLOCKED_CONNECTION_TIMEOUT
            # Retrying is dispatch's job; pika would otherwise sleep retry_delay between tries.
            params.connection_attempts = 1
            params.client_properties = {"connection_name": f"skor-bridge {self.name}"}
            self._params = params
        return self._params

    def open(self) -> None:
        if (error := self._connect()) is not None:
            log.warning("amqp output %s: %s; will retry on send", self.name, error)

    def close(self) -> None:
        try:
            self._drop()
        except Exception:  # close() must not raise; the sink is done with this connection
            log.debug("amqp output %s: error while closing", self.name, exc_info=True)

    def send(self, batch: Sequence[ChangeEvent]) -> list[Result]:
        inflight = self._prepare(batch)
        if self._ready:
            # Reads what arrived while we were idle: a broker that closed this connection
            # (restart, missed heartbeats) is noticed now, not after publishing into it.
            self._run(lambda: self._failure is not None, 0)
            if self._failure is not None:
                self._drop()
        if not batch:
            return []
        if not self._ready and (error := self._connect()) is not None:
            return self._finish(inflight, error)
        self._batch = inflight
        try:
            self._publish(batch, inflight)
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._failure = self._failure or f"publish failed: {self._scrub(exc)}"
        if not self._run(lambda: not inflight.tags or self._failure is not None,
                         self.confirm_timeout):
            self._failure = f"no confirm from broker within {self.confirm_timeout:g}s"
        return self._finish(inflight, self._failure)

    def _prepare(self, batch: Sequence[ChangeEvent]) -> _InFlight:
        inflight = _InFlight(results=[None] * len(batch), keys=[""] * len(batch))
        for i, event in enumerate(batch):
            try:
                key = self.config.routing_key.format(
                    schema=event.schema, table=event.table, op=event.op.lower())
            except (ValueError, KeyError, IndexError) as exc:
                inflight.results[i] = Result(Outcome.REJECTED, f"bad routing key template: {exc}")
                continue
            if len(key.encode()) > SHORTSTR_MAX or len(event.id.encode()) > SHORTSTR_MAX:
                inflight.results[i] = Result(
                    Outcome.REJECTED, f"routing key or message id over {SHORTSTR_MAX} bytes")
            inflight.keys[i] = key
        return inflight

    def _publish(self, batch: Sequence[ChangeEvent], inflight: _InFlight) -> None:
        assert self._channel is not None
        now = int(time.time())
        for i, event in enumerate(batch):
            if inflight.results[i] is not None:
                continue
            properties = pika.BasicProperties(
                content_type=dict(event.headers).get("content-type", "application/json"),
                delivery_mode=2, message_id=event.id,
                timestamp=int(event.captured_at) or now,
                headers={"schema": event.schema, "table": event.table, "op": event.op})
            # Always mandatory: otherwise an unroutable message is acked like any other and
            # could be neither counted nor retried.
            self._channel.basic_publish(self.config.exchange, inflight.keys[i], event.body(),
                                        properties, mandatory=True)
            inflight.tags[self._next_tag] = i
            inflight.ids[event.id] = i
            self._next_tag += 1
            if self._next_tag % FLUSH_EVERY == 0:
                # Writing as we go lets the broker work while we encode the rest of the batch.
                if self._run(lambda: self._failure is not None, 0):
                    return

    def _finish(self, inflight: _InFlight, error: str | None) -> list[Result]:
        self._batch = None
        if error is None:
            return [r or DELIVERED for r in inflight.results]
        # Late acks for this batch would be ambiguous; a new channel starts its tags afresh.
        self._drop()
        retry = Result(Outcome.RETRY, error)
        return [r or retry for r in inflight.results]

    # Confirms cost no round trip per message: the whole batch is written, then one wait
    # collects the acks (mostly multiple=True). SelectConnection is driven in the calling thread
    # through its public start()/stop(): BlockingChannel.confirm_delivery() waits after every
    # publish, and reaching under BlockingChannel for its async channel is private API.
    def _run(self, until: Callable[[], bool], timeout: float) -> bool:
        """Drive I/O until `until()` holds or `timeout` passes; return `until()`."""
        ioloop = self._ioloop
        if ioloop is None or until():
            return until()
        self._until = until
        deadline = ioloop.call_later(timeout, ioloop.stop)
        try:
            ioloop.start()
        except Exception as exc:  # pika lets some socket errors escape the loop
            self._failure = self._failure or f"I/O error: {self._scrub(exc)}"
        finally:
            self._until = None
            ioloop.remove_timeout(deadline)
        return until()

    def _wake(self) -> None:
        if self._until is not None and self._until() and self._ioloop is not None:
            self._ioloop.stop()

    def _connect(self) -> str | None:
        """Open connection, channel, confirm mode and exchange; return why not, or None."""
        params = self.connection_parameters()
        self._drop()
        self._failure = None
        self._ioloop = IOLoop()
        self._conn = SelectConnection(
            params, on_open_callback=self._on_open, on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed, custom_ioloop=self._ioloop)
        # pika bounds the handshake with stack_timeout; this deadline is only a backstop.
        self._run(lambda: self._ready or self._failure is not None, params.stack_timeout + 5)
        if self._ready:
            return None
        error = self._failure or f"timed out connecting to {self.config.safe_url}"
        self._drop()
        return error

    def _drop(self) -> None:
        conn, self._conn, self._channel, self._ready = self._conn, None, None, False
        try:
            if conn is not None:
                if not (conn.is_closed or conn.is_closing):
                    conn.close()
                if not self._run(lambda: conn.is_closed, CLOSE_TIMEOUT):
                    # pika has no public abort; a broker that stopped reading (alarm, hung
                    # host) never sends Close-Ok, and the socket must not leak.
                    conn._terminate_stream(pika.exceptions.ConnectionClosedByClient(200, "drop"))
                    self._run(lambda: conn.is_closed, CLOSE_TIMEOUT)
        finally:
            if self._ioloop is not None:
                self._ioloop.close()
                self._ioloop = None

    def _on_open(self, conn: Connection) -> None:
        conn.channel(on_open_callback=self._on_channel_open)

    def _on_channel_open(self, channel: Channel) -> None:
        self._channel = channel
        self._floor = self._next_tag = 1
        channel.add_on_close_callback(self._on_closed)
        channel.add_on_return_callback(self._on_return)
        channel.confirm_delivery(self._on_confirm, callback=self._on_confirm_mode)

    def _on_confirm_mode(self, _frame: Method) -> None:
        assert self._channel is not None
        if not self.config.exchange:  # the default exchange, which cannot be declared
            return self._on_declared(None)
        self._channel.exchange_declare(self.config.exchange, "topic", durable=True,
                                       callback=self._on_declared)

    def _on_declared(self, _frame: Method | None) -> None:
        self._ready = True
        self._wake()

    def _on_open_error(self, _conn: Connection, exc: BaseException | str) -> None:
        self._failure = f"cannot connect to {self.config.safe_url}: {self._scrub(exc)}"
        self._wake()

    def _on_closed(self, _conn_or_channel: object, exc: BaseException) -> None:
        # The first cause wins: a channel closed by the broker (404, 406) then closes all.
        self._failure = self._failure or f"broker connection closed: {self._scrub(exc)}"
        self._ready = False
        self._wake()

    def _on_return(self, _channel: Channel, _method: Basic.Return,
                   properties: BasicProperties, _body: bytes) -> None:
        # RabbitMQ sends basic.return before the ack of the same message.
        if self._batch is not None and properties.message_id in self._batch.ids:
            self._batch.returned.add(self._batch.ids[properties.message_id])

    def _on_confirm(self, frame: Method) -> None:
        batch, method = self._batch, frame.method
        if batch is None:
            return
        tag: int = method.delivery_tag
        tags = range(self._floor, tag + 1) if method.multiple else (tag,)
        if method.multiple:
            self._floor = max(self._floor, tag + 1)
        acked = isinstance(method, pika.spec.Basic.Ack)
        for t in tags:
            if (i := batch.tags.pop(t, None)) is not None:
                batch.results[i] = self._confirmed(batch, i) if acked else Result(
                    Outcome.RETRY, "nacked by broker (basic.nack)")
        self._wake()

    def _confirmed(self, batch: _InFlight, i: int) -> Result:
        if i not in batch.returned:
            return DELIVERED
        key, exchange = batch.keys[i], self.config.exchange
        if self.config.mandatory:
            return Result(Outcome.RETRY, f"unroutable: no queue bound for routing key {key!r} "
                          f"on exchange {exchange!r}")
        self.unroutable += 1
        log.warning("amqp output %s: unroutable message, no queue bound for routing key %r on "
                    "exchange %r; counted as delivered", self.name, key, exchange)
        return DELIVERED

    def _scrub(self, exc: BaseException | str) -> str:
        """One line, without the password, whatever pika put in the message."""
        if isinstance(exc, BaseException):
            exc = _root_cause(exc)
            # pika's exceptions say what happened in repr(); their str() is often empty.
            in_pika = type(exc).__module__.startswith("pika")
            exc = repr(exc) if in_pika else f"{type(exc).__name__}: {exc}"
        text = redact(" ".join(exc.split()))
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text


def _root_cause(exc: BaseException) -> BaseException:
    """The socket or broker error under pika's connection-workflow wrappers."""
    for _ in range(8):
        inner = getattr(exc, "exceptions", None) or (getattr(exc, "exception", None),)
        if not isinstance(inner[-1], BaseException):
            inner = exc.args[:1]
        if not inner or not isinstance(inner[-1], BaseException):
            return exc
        exc = inner[-1]
    return exc
