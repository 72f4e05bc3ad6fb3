"""HTTP webhook output: Skor's body, Standard Webhooks headers, hundreds of requests at once.

The HTTP client is aiohttp (see the README's dependency notes): one asyncio loop owned by
the sink and run only inside `poll()`, in the output's worker thread, over kept-alive
connections, at most `concurrency` of them. What it does not do, on purpose: follow
redirects (a 3xx is the answer), read proxies or .netrc from the environment, keep
cookies, or read more than `MAX_BODY` of an answer (we need only its status).
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
from typing import TYPE_CHECKING

import aiohttp
import certifi
import yarl

from skor_bridge.config import redact, shown_url, signing_key
from skor_bridge.errors import SinkError
from skor_bridge.sinks.base import DELIVERED, Outcome, Result, Sink, captured_at_text

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

#: Most bytes of an answer's body read (the status is all we need). A longer body is
#: dropped with its connection rather than read: a hostile receiver cannot grow memory.
MAX_BODY = 64 * 1024

#: Longest status line or header line accepted in an answer, and most header lines.
MAX_LINE = 8190
MAX_HEADERS = 128

#: Kept-alive connections idle this long are closed (receivers often close at 60 s or less).
KEEPALIVE = 15.0


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
        self._url = yarl.URL(config.url, encoded=True)
        self._headers_fixed: list[tuple[str, str]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._done: list[Completion] = []
        self._wake: asyncio.Event | None = None

    def open(self) -> None:
        if self._session is not None:
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
        self._headers_fixed = headers
        context = ssl.create_default_context(cafile=self.config.ca_file or certifi.where())
        self._loop = asyncio.new_event_loop()
        self._session = self._loop.run_until_complete(self._make_session(context))
        self._wake = asyncio.Event()

    async def _make_session(self, context: ssl.SSLContext) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(
            limit=self.config.concurrency, ssl=context, keepalive_timeout=KEEPALIVE)
        return aiohttp.ClientSession(
            connector=connector, timeout=aiohttp.ClientTimeout(total=self.config.timeout),
            cookie_jar=aiohttp.DummyCookieJar(), auto_decompress=False, trust_env=False,
            skip_auto_headers=("Accept-Encoding",), max_line_size=MAX_LINE,
            max_field_size=MAX_LINE, raise_for_status=False)

    def submit(self, ticket: int, event: ChangeEvent) -> None:
        if self._session is None:
            self.open()
        assert self._loop is not None
        if not self._tasks:
            # After an idle spell: let the loop see connections the receiver closed
            # meanwhile, so they are not picked for this request.
            self._loop.run_until_complete(asyncio.sleep(0))
        # The body is built once per event: a huge row is not copied again for signing.
        body = render(event)
        task = self._loop.create_task(self._post(ticket, body, self._headers(event, body)))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def poll(self, timeout: float) -> list[Completion]:
        loop = self._loop
        if loop is not None and not self._done and self._tasks:
            loop.run_until_complete(self._wait(timeout))
        done, self._done = self._done, []
        return done

    async def _wait(self, timeout: float) -> None:
        assert self._wake is not None
        if timeout <= 0:
            await asyncio.sleep(0)  # lets new requests start and finished ones report
            return
        try:
            await asyncio.wait_for(self._wake.wait(), timeout)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _post(self, ticket: int, body: bytes, headers: list[tuple[str, str]]) -> None:
        assert self._wake is not None
        try:
            try:
                result = await self._attempt(body, headers)
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
                if isinstance(exc, aiohttp.ClientConnectorError):
                    raise
                # A kept-alive connection the receiver closed just as we reused it: once
                # more on a new one (same webhook-id, so a duplicate is recognisable).
                result = await self._attempt(body, headers)
        except TimeoutError:
            result = Result(Outcome.RETRY, f"timed out after {self.config.timeout:g}s",
                            backpressure=True)
        except (aiohttp.ClientError, OSError, ValueError) as exc:
            result = Result(Outcome.RETRY, _one_line(exc))
        self._done.append((ticket, result))
        self._wake.set()

    async def _attempt(self, body: bytes, headers: list[tuple[str, str]]) -> Result:
        assert self._session is not None
        async with self._session.post(self._url, data=body, headers=headers,
                                      allow_redirects=False) as response:
            # Read (a bounded part of) the body, so the connection can be reused.
            left = MAX_BODY
            while left > 0 and await response.content.read(left) != b"":
                left = MAX_BODY - response.content.total_bytes
            return self._result(response.status, response.headers.get("Retry-After"))

    def _headers(self, event: ChangeEvent, body: bytes) -> list[tuple[str, str]]:
        fixed = self._headers_fixed
        if event.headers:  # the output's format (e.g. CloudEvents' content type) wins
            names = {name.lower() for name, _ in event.headers}
            fixed = [h for h in fixed if h[0].lower() not in names] + list(event.headers)
        headers = [*fixed, ("webhook-id", event.id),
                   ("webhook-position", str(event.position)),
                   ("webhook-captured-at", captured_at_text(event))]
        if self._key is not None:
            timestamp = str(int(time.time()))
            signed = f"{event.id}.{timestamp}.".encode() + body
            digest = hmac.new(self._key, signed, hashlib.sha256).digest()
            headers.append(("webhook-timestamp", timestamp))
            headers.append(("webhook-signature", "v1," + base64.b64encode(digest).decode()))
        return headers

    def _result(self, status: int, retry_after: str | None) -> Result:
        outcome = classify(status)
        if outcome is Outcome.DELIVERED:
            return DELIVERED
        return Result(outcome, f"HTTP {status} from {self._safe_url}",
                      backpressure=status in PUSHBACK_STATUS,
                      retry_after=_retry_after(retry_after) if status in PUSHBACK_STATUS
                      else None)

    def close(self) -> None:
        loop, session, self._loop, self._session = self._loop, self._session, None, None
        tasks, self._tasks, self._done = self._tasks, set(), []
        if loop is None:
            return
        try:
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
            if session is not None:
                loop.run_until_complete(session.close())
            loop.run_until_complete(loop.shutdown_asyncgens())
        except Exception:  # close() must not raise; the connections are going anyway
            pass
        finally:
            loop.close()


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
    cause: BaseException = exc
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        cause = exc.certificate_error
    elif isinstance(exc, aiohttp.ClientConnectorError):
        cause = exc.os_error
    if isinstance(cause, ssl.SSLCertVerificationError):
        text = (f"{cause.verify_message or cause.reason} (for a private CA, give "
                "--webhook-ca-file)")
    elif isinstance(cause, ssl.SSLError):
        text = cause.reason or str(cause)
    elif isinstance(cause, OSError) and cause.errno is not None:
        # asyncio words a refused connection as "Connect call failed ('127.0.0.1', 9)".
        text = os.strerror(cause.errno)
    elif isinstance(exc, aiohttp.ClientResponseError):
        # Raised while parsing the answer: a status line or header that is not HTTP.
        text = f"invalid HTTP response: {exc.message}"
    elif isinstance(exc, aiohttp.ClientPayloadError):
        text = f"invalid HTTP response body: {exc}"
    elif isinstance(exc, aiohttp.ServerDisconnectedError):
        text = "the receiver closed the connection without an answer"
    elif isinstance(exc, aiohttp.ClientOSError):
        text = "the connection broke while sending the request"  # aiohttp's names the URL
    else:
        text = str(exc) or type(exc).__name__
    first = text.splitlines()[0] if text else type(cause).__name__
    return redact(f"{type(cause).__name__}: {first}")
