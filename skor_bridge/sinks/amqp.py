"""RabbitMQ output: one persistent message per event on a durable topic exchange."""

from __future__ import annotations

import logging
import re
import time
import urllib.parse
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pika
import pika.exceptions
from pika.adapters.select_connection import IOLoop, SelectConnection

from skor_bridge.config import redact
from skor_bridge.errors import SinkError
from skor_bridge.sinks.base import DELIVERED, Outcome, Result, Sink, captured_at_text

if TYPE_CHECKING:
    from collections.abc import Callable

    from pika.channel import Channel
    from pika.connection import Connection
    from pika.frame import Method
    from pika.spec import Basic, BasicProperties, Confirm, Exchange

    from skor_bridge.config import AmqpConfig
    from skor_bridge.event import ChangeEvent
    from skor_bridge.sinks.base import Completion

log = logging.getLogger(__name__)

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
#: How RabbitMQ words a 406 for a message over its max_message_size.
_MAX_SIZE = re.compile(r"larger than configured max size (\d+)")


@dataclass(slots=True)
class _Sent:
    """A published message the broker has not confirmed yet."""

    ticket: int
    key: str
    message_id: str
    size: int
    at: float
    returned: bool = False


class AmqpSink(Sink):
    """Publishes each event as one persistent message to a durable topic exchange.

    Guarantee: an event is DELIVERED only after RabbitMQ confirmed it with basic.ack (for a
    persistent message in durable queues: written to disk). A nack, an unroutable message
    when `mandatory` is set, a lost connection or a confirm timeout make the event RETRY.
    Messages are published in submission order on one channel, so a queue sees them in that
    order. A message over the broker's max_message_size (406 PRECONDITION_FAILED) is REJECTED;
    so is every later one larger than the size the broker named.

    After the exchange was declared once, reconnects only check it (passive declare): an
    exchange deleted while the bridge runs is an output failure (RETRY) until someone
    restores it with its bindings, never silently re-created without them.

    Unroutable messages with `mandatory` off are DELIVERED, counted in `unroutable` and logged.

    The thread calling `submit`/`poll` drives the connection; nothing runs between calls, so
    one thread at a time. `poll(0)` only services the connection (heartbeats, noticing a
    closed socket); calling it on idle ticks keeps the broker from dropping a quiet one.
    """

    kind = "amqp"
    #: Messages awaiting confirms at once: the broker confirms persistent messages after a
    #: disk sync, which many messages in flight share.
    max_in_flight = 2000
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
        self._sent: dict[int, _Sent] = {}  # delivery tag -> message, in publish order
        self._ids: dict[str, int] = {}  # message_id -> delivery tag (for basic.return)
        self._done: list[Completion] = []
        #: Largest message the broker takes, once a 406 told us; larger ones are REJECTED.
        self._max_size: int | None = None
        #: After the first declare, reconnects only check the exchange exists.
        self._declared = False
        self.completion_bound = self.confirm_timeout

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

    def submit(self, ticket: int, event: ChangeEvent) -> None:
        try:
            key = self.config.routing_key.format(
                schema=event.schema, table=event.table, op=event.op.lower()
            )
        except (ValueError, KeyError, IndexError) as exc:
            return self._complete(
                ticket, Result(Outcome.REJECTED, f"bad routing key template: {exc}")
            )
        if len(key.encode()) > SHORTSTR_MAX or len(event.id.encode()) > SHORTSTR_MAX:
            return self._complete(
                ticket,
                Result(Outcome.REJECTED, f"routing key or message id over {SHORTSTR_MAX} bytes"),
            )
        body = render(event)
        if self._max_size is not None and len(body) > self._max_size:
            return self._complete(ticket, self._too_large(len(body)))
        if self._ready and not self._sent:
            # Reads what arrived while we were idle: a broker that closed this connection
            # (restart, missed heartbeats) is noticed now, not after publishing into it.
            self._run(lambda: self._failure is not None, 0)
        if self._failure is not None or (not self._ready and self._sent):
            self._fail_all()
        if not self._ready and (error := self._connect()) is not None:
            return self._complete(ticket, Result(Outcome.RETRY, error))
        assert self._channel is not None
        properties = pika.BasicProperties(
            content_type=dict(event.headers).get("content-type", "application/json"),
            delivery_mode=2,
            message_id=event.id,
            timestamp=int(event.captured_at) or int(time.time()),
            headers=headers(event),
        )
        tag = self._next_tag
        self._sent[tag] = _Sent(ticket, key, event.id, len(body), time.monotonic())
        self._ids[event.id] = tag
        self._next_tag += 1
        try:
            # Always mandatory: otherwise an unroutable message is acked like any other and
            # could be neither counted nor retried.
            self._channel.basic_publish(self.config.exchange, key, body, properties, mandatory=True)
        except (pika.exceptions.AMQPError, OSError) as exc:
            self._failure = self._failure or f"publish failed: {self._scrub(exc)}"
            return self._fail_all()
        if self._next_tag % FLUSH_EVERY == 0:
            # Writing as we go lets the broker work while we encode the next messages.
            self._run(lambda: self._failure is not None, 0)

    def poll(self, timeout: float) -> list[Completion]:
        if self._ioloop is not None:
            if self._sent:
                oldest = next(iter(self._sent.values())).at
                left = oldest + self.confirm_timeout - time.monotonic()
                self._run(
                    lambda: bool(self._done) or self._failure is not None,
                    max(0.0, min(timeout, left)),
                )
                if self._sent and time.monotonic() - oldest >= self.confirm_timeout:
                    self._failure = self._failure or (
                        f"no confirm from broker within {self.confirm_timeout:g}s"
                    )
            else:
                self._run(lambda: self._failure is not None, 0)
            if self._failure is not None:
                self._fail_all()
        done, self._done = self._done, []
        return done

    def _complete(self, ticket: int, result: Result) -> None:
        self._done.append((ticket, result))

    def _fail_all(self) -> None:
        """The connection or channel failed: every unconfirmed message is in doubt."""
        error = self._failure or "broker connection lost"
        # "message size 2097152 is larger than configured max size 1048576"
        if (match := _MAX_SIZE.search(error)) is not None:
            self._max_size = int(match[1])
        sent, self._sent, self._ids = self._sent, {}, {}
        for message in sent.values():
            if self._max_size is not None and message.size > self._max_size:
                self._complete(message.ticket, self._too_large(message.size))
            else:
                self._complete(message.ticket, Result(Outcome.RETRY, error))
        # Late acks would be ambiguous; a new channel starts its tags afresh.
        self._drop()

    def _too_large(self, size: int) -> Result:
        return Result(
            Outcome.REJECTED,
            f"message of {size} bytes is over the broker's "
            f"max_message_size ({self._max_size} bytes)",
        )

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
            params,
            on_open_callback=self._on_open,
            on_open_error_callback=self._on_open_error,
            on_close_callback=self._on_closed,
            custom_ioloop=self._ioloop,
        )
        # pika bounds the handshake with stack_timeout; this deadline is only a backstop
        # (also when the URL turned stack_timeout off: None).
        backstop = (params.stack_timeout or 15.0) + 5
        self._run(lambda: self._ready or self._failure is not None, backstop)
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
                    conn._terminate_stream(  # type: ignore[attr-defined]  # private, unstubbed
                        pika.exceptions.ConnectionClosedByClient(200, "drop")
                    )
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

    def _on_confirm_mode(self, _frame: Method[Confirm.SelectOk]) -> None:
        assert self._channel is not None
        if not self.config.exchange:  # the default exchange, which cannot be declared
            return self._on_declared(None)
        # Passive once declared: re-creating a deleted exchange would bring it back without
        # its bindings, and every later message would be unroutable.
        self._channel.exchange_declare(
            self.config.exchange,
            "topic",
            durable=True,
            passive=self._declared,
            callback=self._on_declared,
        )

    def _on_declared(self, _frame: Method[Exchange.DeclareOk] | None) -> None:
        self._declared = True
        self._ready = True
        self._wake()

    def _on_open_error(self, _conn: Connection, exc: BaseException | str) -> None:
        self._failure = f"cannot connect to {self.config.safe_url}: {self._scrub(exc)}"
        self._wake()

    def _on_closed(self, _conn_or_channel: object, exc: BaseException) -> None:
        # The first cause wins: a channel closed by the broker (404, 406) then closes all.
        if (
            self._declared
            and isinstance(exc, pika.exceptions.ChannelClosedByBroker)
            and exc.reply_code == 404
            and "exchange" in exc.reply_text
        ):
            reason = (
                f"exchange {self.config.exchange!r} does not exist (deleted?); it is "
                "not re-created without its bindings: restore it to resume"
            )
        else:
            reason = f"broker connection closed: {self._scrub(exc)}"
        self._failure = self._failure or reason
        self._ready = False
        self._wake()

    def _on_return(
        self, _channel: Channel, _method: Basic.Return, properties: BasicProperties, _body: bytes
    ) -> None:
        # RabbitMQ sends basic.return before the ack of the same message.
        tag = self._ids.get(properties.message_id or "")
        if tag is not None and tag in self._sent:
            self._sent[tag].returned = True

    def _on_confirm(self, frame: Method[Basic.Ack | Basic.Nack]) -> None:
        method = frame.method
        tag: int = method.delivery_tag
        tags = range(self._floor, tag + 1) if method.multiple else (tag,)
        if method.multiple:
            self._floor = max(self._floor, tag + 1)
        acked = isinstance(method, pika.spec.Basic.Ack)
        for t in tags:
            if (message := self._sent.pop(t, None)) is not None:
                if self._ids.get(message.message_id) == t:
                    del self._ids[message.message_id]
                self._complete(
                    message.ticket,
                    self._confirmed(message)
                    if acked
                    else Result(Outcome.RETRY, "nacked by broker (basic.nack)"),
                )
        self._wake()

    def _confirmed(self, message: _Sent) -> Result:
        if not message.returned:
            return DELIVERED
        key, exchange = message.key, self.config.exchange
        if self.config.mandatory:
            return Result(
                Outcome.RETRY,
                f"unroutable: no queue bound for routing key {key!r} on exchange {exchange!r}",
            )
        self.unroutable += 1
        if self.unroutable == 1 or self.unroutable % 1000 == 0:
            log.warning(
                "amqp output %s: unroutable message, no queue bound for routing key %r "
                "on exchange %r; counted as delivered (%d so far)",
                self.name,
                key,
                exchange,
                self.unroutable,
            )
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


def render(event: ChangeEvent) -> bytes:
    """The message body for one event (Skor's JSON body)."""
    return event.body()


def headers(event: ChangeEvent) -> dict[str, str | int]:
    return {
        "schema": event.schema,
        "table": event.table,
        "op": event.op,
        "position": event.position,
        "captured_at": captured_at_text(event),
    }


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
