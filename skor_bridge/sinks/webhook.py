"""HTTP webhook output: Skor's body, Standard Webhooks headers, kept-alive connections."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import requests
import requests.adapters

from skor_bridge.config import redact, signing_key
from skor_bridge.sinks.base import DELIVERED, Outcome, Result, Sink

if TYPE_CHECKING:
    from collections.abc import Sequence

    from skor_bridge.config import WebhookConfig
    from skor_bridge.event import ChangeEvent

#: Statuses worth another try (as vector classifies them): timeouts, throttling, 5xx but 501.
RETRIABLE_STATUS = frozenset({408, 429}) | (frozenset(range(500, 600)) - {501})


def classify(status: int) -> Outcome:
    if 200 <= status < 300:
        return Outcome.DELIVERED
    if status in RETRIABLE_STATUS:
        return Outcome.RETRY
    return Outcome.REJECTED


class WebhookSink(Sink):
    """POSTs each event to one URL; an event counts as delivered only on a 2xx answer.

    Every attempt of one event carries the same `webhook-id` (the event id), so receivers
    can deduplicate the redeliveries that at-least-once implies.
    """

    kind = "webhook"

    def __init__(self, name: str, config: WebhookConfig) -> None:
        super().__init__(name)
        self.config = config
        self.max_batch = config.concurrency * 8
        self._key = signing_key(config.secret) if config.secret else None
        self._session: requests.Session | None = None
        self._pool: ThreadPoolExecutor | None = None
        self._safe_url = redact(config.url)

    def open(self) -> None:
        session = requests.Session()
        adapter = requests.adapters.HTTPAdapter(
            pool_connections=1, pool_maxsize=self.config.concurrency, max_retries=0
        )
        session.mount("http://", adapter)
        session.mount("https://", adapter)
        # Environment proxies and .netrc would silently change where events go.
        session.trust_env = False
        session.headers.clear()
        session.headers.update(dict(self.config.headers))
        session.headers["Content-Type"] = "application/json"
        session.headers["User-Agent"] = "skor-bridge"
        self._session = session
        self._pool = ThreadPoolExecutor(self.config.concurrency, thread_name_prefix=self.name)

    def send(self, batch: Sequence[ChangeEvent]) -> list[Result]:
        if self._session is None or self._pool is None:
            self.open()
        if len(batch) == 1:
            return [self._post(batch[0])]
        assert self._pool is not None
        return list(self._pool.map(self._post, batch))

    def _post(self, event: ChangeEvent) -> Result:
        assert self._session is not None
        body = event.body()
        headers = {"webhook-id": event.id}
        if self._key is not None:
            timestamp = str(int(time.time()))
            signed = f"{event.id}.{timestamp}.".encode() + body
            digest = hmac.new(self._key, signed, hashlib.sha256).digest()
            headers["webhook-timestamp"] = timestamp
            headers["webhook-signature"] = "v1," + base64.b64encode(digest).decode()
        try:
            response = self._session.post(
                self.config.url, data=body, headers=headers, timeout=self.config.timeout,
                allow_redirects=False,
            )
        except requests.Timeout:
            return Result(Outcome.RETRY, f"timed out after {self.config.timeout:g}s")
        except requests.RequestException as exc:
            return Result(Outcome.RETRY, _one_line(exc))
        status = response.status_code
        response.close()
        outcome = classify(status)
        if outcome is Outcome.DELIVERED:
            return DELIVERED
        return Result(outcome, f"HTTP {status} from {self._safe_url}")

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
        if self._session is not None:
            self._session.close()
            self._session = None


def _one_line(exc: BaseException) -> str:
    # requests nests urllib3's message, which repeats the URL; keep the root cause short.
    cause: BaseException = exc
    while cause.__context__ is not None and cause.__context__ is not cause:
        cause = cause.__context__
    text = str(cause) or type(cause).__name__
    return redact(f"{type(exc).__name__}: {text.splitlines()[0]}")
