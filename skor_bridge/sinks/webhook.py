"""HTTP webhook output: Skor's body, Standard Webhooks headers, hundreds of requests at once.

The HTTP client is the bounded hand-written one in `sinks/http1.py` (aiohttp cost three to
four times the CPU per request in the same benchmark run: see the README's dependency
notes). One asyncio loop is owned by the sink and run only inside `poll()`, in the
output's worker thread, over kept-alive connections, at most `concurrency` of them. What
it does not do, on purpose: follow redirects (a 3xx is the answer), read proxies or .netrc
from the environment, keep cookies, or read more than `http1.MAX_BODY` of an answer (we
need only its status); a hostile answer (endless lines, smuggling framing, no answer) is a
failed attempt within the request timeout.
"""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import os
import ssl
import time
import urllib.parse
from typing import TYPE_CHECKING

from skor_bridge.config import redact, shown_url, signing_key
from skor_bridge.errors import SinkError
from skor_bridge.sinks.base import DELIVERED, Outcome, Result, Sink, captured_at_text
from skor_bridge.sinks.http1 import Http1Client, ProtocolError

if TYPE_CHECKING:
    from skor_bridge.config import WebhookConfig
    from skor_bridge.event import ChangeEvent
    from skor_bridge.sinks.base import Completion

#: Statuses worth another try (as vector classifies them): timeouts, throttling, 5xx but 501.
RETRIABLE_STATUS = frozenset({408, 429}) | (frozenset(range(500, 600)) - {501})

#: Statuses by which a receiver says "slow down": the engine lowers its concurrency.
PUSHBACK_STATUS = frozenset({429, 503})

#: Headers the sink always sets; a configured header of the same name is replaced.
FIXED_HEADERS = (("Content-Type", "application/json"), ("User-Agent", "skor-bridge"))


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in RETRIABLE_STATUS:
        return Outcome.RETRY
    return Outcome.REJECTED


def render(event: ChangeEvent) -> bytes:
    """The request body for one event (Skor's `{"data", "table", "schema", "op"}`)."""
    return event.body()


class WebhookSink(Sink):
    """POSTs each event to one URL; an event counts as delivered only on a 2xx answer.

    Every attempt of one event carries the same `webhook-id` (the event id), so receivers
    can deduplicate the redeliveries that at-least-once implies. Each request is bounded by
    `timeout` seconds (connecting, sending and the answer together); up to `concurrency`
    requests run at once, each on its own kept-alive connection.
    """

    kind = "webhook"
    adaptive = True

    def __init__(self, name: str, config: WebhookConfig) -> None:
        super().__init__(name)
        self.config = config
        self.max_in_flight = config.concurrency
        self.max_batch = config.concurrency
        self.completion_bound = config.timeout + 1.0
        self._key = signing_key(config.secret) if config.secret else None
        self._safe_url = shown_url(config)
        self._headers_fixed: list[tuple[str, str]] = []
        self._head_fixed = b""
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: Http1Client | None = None
        self._done: list[Completion] = []

    def open(self) -> None:
        if self._client is not None:
            return
        fixed = {name.lower() for name, _ in FIXED_HEADERS}
        headers = [(k, v) for k, v in self.config.headers if k.lower() not in fixed]
        headers += FIXED_HEADERS
        for name, value in headers:
            if any(c in value for c in "\r\n\0"):
                raise SinkError(f"webhook: header {name} holds a line break or NUL")
        try:
            "".join(v for _, v in headers).encode("latin-1")
        except UnicodeEncodeError:
            raise SinkError("webhook: header values must be Latin-1 text") from None
        if urllib.parse.urlsplit(self.config.url).username is not None:
            # Credentials in the URL become the client's Basic authentication; they win.
            headers = [(k, v) for k, v in headers if k.lower() != "authorization"]
        self._headers_fixed = headers
        self._head_fixed = _head_lines(headers)
        # Headers go with each request (not in the client's fixed prefix), so that an
        # output format's own (e.g. CloudEvents' content type) can replace a fixed one.
        self._loop = asyncio.new_event_loop()
        self._client = Http1Client(
            self._loop,
            self.config.url,
            (),
            self.config.concurrency,
            self.config.timeout,
            self._answered,
            self.config.ca_file,
        )

    def submit(self, ticket: int, event: ChangeEvent) -> None:
        if self._client is None:
            self.open()
        assert self._client is not None
        # The body is built once per event: a huge row is not copied again for signing.
        body = render(event)
        self._client.start(ticket, self._head(event, body), body)

    def poll(self, timeout: float) -> list[Completion]:
        loop, client = self._loop, self._client
        if loop is not None and client is not None and not self._done and client.active:
            # Run the loop until the first answer (`_answered` stops it) or the timeout:
            # every answer already read in that turn comes back together.
            timer = loop.call_later(timeout, loop.stop) if timeout > 0 else None
            if timer is None:
                loop.call_soon(loop.stop)  # one turn: what is ready, nothing waited for
            try:
                loop.run_forever()
            finally:
                if timer is not None:
                    timer.cancel()
        done, self._done = self._done, []
        return done

    def _answered(
        self, ticket: int, status: int, retry_after: str | None, exc: BaseException | None
    ) -> None:
        if exc is None:
            result = self._result(status, retry_after)
        elif isinstance(exc, TimeoutError):
            result = Result(
                Outcome.RETRY, f"timed out after {self.config.timeout:g}s", backpressure=True
            )
        else:
            result = Result(Outcome.RETRY, _one_line(exc))
        self._done.append((ticket, result))
        loop = self._loop
        if loop is not None and loop.is_running():
            loop.stop()

    def _head(self, event: ChangeEvent, body: bytes) -> bytes:
        """The header lines of one request, past the client's fixed prefix."""
        fixed = self._head_fixed
        if event.headers:  # the output's format (e.g. CloudEvents' content type) wins
            names = {name.lower() for name, _ in event.headers}
            merged = [h for h in self._headers_fixed if h[0].lower() not in names]
            fixed = _head_lines(merged + list(event.headers))
        head = b"%swebhook-id: %s\r\nwebhook-position: %d\r\nwebhook-captured-at: %s\r\n" % (
            fixed,
            event.id.encode("latin-1"),
            event.position,
            captured_at_text(event).encode("ascii"),
        )
        if self._key is not None:
            timestamp = str(int(time.time()))
            signed = f"{event.id}.{timestamp}.".encode() + body
            digest = hmac.new(self._key, signed, hashlib.sha256).digest()
            head += b"webhook-timestamp: %s\r\nwebhook-signature: v1,%s\r\n" % (
                timestamp.encode("ascii"),
                base64.b64encode(digest),
            )
        return head

    def _result(self, status: int, retry_after: str | None) -> Result:
        outcome = classify(status)
        if outcome is Outcome.DELIVERED:
            return DELIVERED
        return Result(
            outcome,
            f"HTTP {status} from {self._safe_url}",
            backpressure=status in PUSHBACK_STATUS,
            retry_after=_retry_after(retry_after) if status in PUSHBACK_STATUS else None,
        )

    def close(self) -> None:
        loop, client, self._loop, self._client = self._loop, self._client, None, None
        self._done = []
        if loop is None:
            return
        try:
            if client is not None:
                loop.run_until_complete(client.aclose())
            # Let the transports run their connection_lost callbacks before the loop goes.
            loop.run_until_complete(asyncio.sleep(0))
        except Exception:  # noqa: BLE001 - close() must not raise; the connections are going
            pass
        finally:
            loop.close()


def _head_lines(headers: list[tuple[str, str]]) -> bytes:
    return "".join(f"{name}: {value}\r\n" for name, value in headers).encode("latin-1")


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = f"{exc.verify_message or exc.reason} (for a private CA, give --webhook-ca-file)"
    elif isinstance(exc, ssl.SSLError):
        text = exc.reason or str(exc)
    elif isinstance(exc, OSError) and exc.errno is not None:
        # asyncio words a refused connection as "Connect call failed ('127.0.0.1', 9)".
        text = os.strerror(exc.errno)
    elif isinstance(exc, ProtocolError):
        text = str(exc)
    else:
        text = str(exc) or type(exc).__name__
    first = text.splitlines()[0] if text else type(exc).__name__
    return redact(f"{type(exc).__name__}: {first}")
