"""HTTP webhook output: Skor's body, Standard Webhooks headers, kept-alive connections."""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import ssl
import time
from typing import TYPE_CHECKING

from skor_bridge.config import redact, shown_url, signing_key
from skor_bridge.errors import SinkError
from skor_bridge.sinks.base import DELIVERED, Outcome, Result, Sink
from skor_bridge.sinks.http1 import Http1Client, ProtocolError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from skor_bridge.config import WebhookConfig
    from skor_bridge.event import ChangeEvent

#: Statuses worth another try (as vector classifies them): timeouts, throttling, 5xx but 501.
RETRIABLE_STATUS = frozenset({408, 429}) | (frozenset(range(500, 600)) - {501})

#: Headers the sink always sets; a configured header of the same name is replaced.
FIXED_HEADERS = (("Content-Type", "application/json"), ("User-Agent", "skor-bridge"))


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in RETRIABLE_STATUS:
        return Outcome.RETRY
    return Outcome.REJECTED


class WebhookSink(Sink):
    """POSTs each event to one URL; an event counts as delivered only on a 2xx answer.

    Every attempt of one event carries the same `webhook-id` (the event id), so receivers
    can deduplicate the redeliveries that at-least-once implies. Events of one batch are
    sent concurrently over up to `concurrency` kept-alive connections; a batch never holds
    two events of one row, so this keeps per-row order.
    """

    kind = "webhook"

    def __init__(self, name: str, config: WebhookConfig) -> None:
        super().__init__(name)
        self.config = config
        self.max_batch = config.concurrency * 8
        self._key = signing_key(config.secret) if config.secret else None
        self._client: Http1Client | None = None
        self._safe_url = shown_url(config)

    def open(self) -> None:
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
        self._client = Http1Client(self.config.url, headers, self.config.concurrency,
                                   self.config.timeout, self.config.ca_file)

    def send(self, batch: Sequence[ChangeEvent]) -> list[Result]:
        if self._client is None:
            self.open()
        assert self._client is not None
        # The body is built once per event: a huge row is not copied again for signing.
        bodies = [event.body() for event in batch]
        answers = self._client.post_all(
            [(body, self._headers(event, body)) for event, body in zip(batch, bodies, strict=True)])
        return [self._result(answer) for answer in answers]

    def _headers(self, event: ChangeEvent, body: bytes) -> list[tuple[str, str]]:
        headers = [("webhook-id", event.id)]
        if self._key is not None:
            timestamp = str(int(time.time()))
            signed = f"{event.id}.{timestamp}.".encode() + body
            digest = hmac.new(self._key, signed, hashlib.sha256).digest()
            headers.append(("webhook-timestamp", timestamp))
            headers.append(("webhook-signature", "v1," + base64.b64encode(digest).decode()))
        return headers

    def _result(self, answer: int | BaseException) -> Result:
        if isinstance(answer, BaseException):
            if isinstance(answer, TimeoutError):
                return Result(Outcome.RETRY, f"timed out after {self.config.timeout:g}s")
            return Result(Outcome.RETRY, _one_line(answer))
        outcome = classify(answer)
        if outcome is Outcome.DELIVERED:
            return DELIVERED
        return Result(outcome, f"HTTP {answer} from {self._safe_url}")

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLCertVerificationError):
        text = (f"{exc.verify_message or exc.reason} (for a private CA, give "
                "--webhook-ca-file)")
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
