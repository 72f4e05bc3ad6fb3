"""One configuration object, built by the CLI (or a TOML file) and passed down.

Nothing outside this module reads the environment. Every dataclass is frozen; fields that
hold secrets are excluded from `repr`, and DSNs/URLs are shown only through `redact()`.
"""

from __future__ import annotations

import base64
import os
import re
import string
import urllib.parse
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from skor_bridge.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping

Mode = Literal["durable", "notify", "wal"]
MODES: tuple[Mode, ...] = ("durable", "notify", "wal")

_KV_PASSWORD = re.compile(r"(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)", re.IGNORECASE)
_URL_USERINFO = re.compile(
    r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:@/]*):(?P<pw>[^@/]*)@", re.I
)
_URL_QUERY_SECRET = re.compile(r"([?&](?:password|sasl\.password|secret)=)[^&]*", re.I)


_HTTP_URL = re.compile(
    r"(?P<origin>https?://[^/\s?#'\"<>]+)(?P<rest>[/?#][^\s'\"<>]*)?", re.IGNORECASE
)


def redact(text: str, urls: bool = True) -> str:
    """Hide passwords in a DSN, URL or any message that may contain one; with `urls`, also
    the path and query of http(s) URLs (webhook tokens: ?token=, sig=, Slack's path)."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:***@", text)
    text = _KV_PASSWORD.sub(r"\1***", text)
    text = _URL_QUERY_SECRET.sub(r"\1***", text)
    if urls:
        text = _HTTP_URL.sub(
            lambda m: m["origin"] + ("/..." if (m["rest"] or "/") != "/" else m["rest"] or ""), text
        )
    return text


def redact_url(url: str) -> str:
    """scheme://host[:port]/... : a URL's path and query may hold a token (Slack's
    /services/T0/B0/XXXX, ?token=, ?sig=), so only where it points is shown."""
    parts = urllib.parse.urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return redact(url)
    host = parts.netloc.rpartition("@")[2]
    hidden = "/..." if parts.path.strip("/") or parts.query or parts.fragment else ""
    return f"{parts.scheme}://{host}{hidden}"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff with jitter (see `skor_bridge.backoff`), capped. `max_attempts=None`
    retries forever."""

    max_attempts: int | None = None
    initial_backoff: float = 0.5
    max_backoff: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts is not None and self.max_attempts < 1:
            raise ConfigError("max_attempts: must be at least 1")
        if self.initial_backoff <= 0 or self.max_backoff < self.initial_backoff:
            raise ConfigError("backoff: need 0 < initial_backoff <= max_backoff")


@dataclass(frozen=True)
class SourceConfig:
    dsn: str = field(repr=False)
    mode: Mode = "durable"
    #: How often an idle bridge looks for new events. Polling, not NOTIFY, wakes the durable
    #: capture because NOTIFY takes a database-wide lock at commit and serialises writers.
    poll_interval: float = 0.002
    #: Events moved from the outbox to the log, and read per output, in one round trip.
    batch_size: int = 2000
    #: Dead outbox rows (left by long transactions, or faster than autovacuum) past which
    #: the sequencer compacts the outbox (see `capture.outbox_upkeep`).
    compact_after: int = 10_000
    #: LISTEN channel of notify mode; Skor's triggers use "skor".
    channel: str = "skor"
    #: WAL mode: bytes of WAL the slot may hold back before /readyz fails (1 GiB).
    max_slot_lag: int = 1024**3
    #: Set by the bridge: a tag of the running instance that every one of its database
    #: sessions carries in application_name, so that an instance taking over can cut off
    #: each session of the one it replaces (see `leader`).
    instance_tag: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ConfigError(f"mode: must be one of {', '.join(MODES)}, got {self.mode!r}")
        check_dsn(self.dsn)
        if self.poll_interval <= 0:
            raise ConfigError("poll_interval: must be positive")
        if self.batch_size < 1:
            raise ConfigError("batch_size: must be at least 1")
        if self.compact_after < 1:
            raise ConfigError("compact_after: must be at least 1")

    @property
    def safe_dsn(self) -> str:
        return redact(self.dsn)

    def session(self, purpose: str) -> str:
        """The `purpose` of a database session of this instance (see `instance_tag`)."""
        return f"[{self.instance_tag}] {purpose}" if self.instance_tag else purpose


@dataclass(frozen=True)
class WebhookConfig:
    url: str
    #: Standard Webhooks signing key, "whsec_<base64>".
    secret: str | None = field(default=None, repr=False)
    headers: tuple[tuple[str, str], ...] = ()
    #: Seconds one request may take (connecting, sending, the answer); past it, that row's
    #: event is retried. An event's attempts together are bounded by the retry policy.
    timeout: float = 10.0
    #: Most requests in flight at once (each on its own kept-alive connection); the
    #: engine adapts below it to the receiver's latency and pushback.
    concurrency: int = 512
    #: PEM file of the CA(s) that sign an https receiver's certificate, instead of the
    #: public bundle (certifi): for receivers behind a private CA.
    ca_file: str | None = None
    #: Show the URL whole in errors (`--show-full-urls`); else scheme://host/... only.
    show_full_url: bool = False

    def __post_init__(self) -> None:
        parsed = urllib.parse.urlsplit(self.url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ConfigError(f"webhook: not an http(s) URL: {redact(self.url)!r}")
        if self.secret is not None:
            signing_key(self.secret)
        for name, _ in self.headers:
            if not re.fullmatch(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", name):
                raise ConfigError(f"header: invalid header name {name!r}")
        if self.timeout <= 0 or self.concurrency < 1:
            raise ConfigError("webhook: timeout must be positive and concurrency at least 1")
        if self.ca_file is not None and not os.path.isfile(self.ca_file):
            raise ConfigError(f"webhook_ca_file: no such file: {self.ca_file}")


def shown_url(config: WebhookConfig) -> str:
    """The webhook's URL as errors and status show it."""
    return redact(config.url, urls=not config.show_full_url)


def signing_key(secret: str) -> bytes:
    """Decode a Standard Webhooks secret ("whsec_" + base64)."""
    raw = secret.removeprefix("whsec_")
    try:
        key = base64.b64decode(raw, validate=True)
    except ValueError:
        raise ConfigError("webhook_secret: expected whsec_<base64 key>") from None
    if not key:
        raise ConfigError("webhook_secret: the key is empty")
    return key


@dataclass(frozen=True)
class AmqpConfig:
    url: str = field(repr=False)
    exchange: str = "skor"
    routing_key: str = "{schema}.{table}.{op}"
    #: Unroutable messages become retried failures instead of counted warnings.
    mandatory: bool = False

    def __post_init__(self) -> None:
        if urllib.parse.urlsplit(self.url).scheme not in ("amqp", "amqps"):
            raise ConfigError(f"amqp: not an amqp:// or amqps:// URL: {redact(self.url)!r}")
        check_template("amqp_routing_key", self.routing_key)

    @property
    def safe_url(self) -> str:
        return redact(self.url)


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str
    topic: str = "skor.{schema}.{table}"
    #: Passed straight to librdkafka (SASL, SSL, compression, linger...).
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    create_topics: bool = True
    partitions: int | None = None
    replication_factor: int | None = None

    def __post_init__(self) -> None:
        if not self.bootstrap.strip():
            raise ConfigError("kafka: bootstrap servers are empty")
        check_template("kafka_topic", self.topic)


SinkSettings = WebhookConfig | AmqpConfig | KafkaConfig


Format = Literal["skor", "envelope", "cloudevents"]
FORMATS: tuple[Format, ...] = ("skor", "envelope", "cloudevents")


@dataclass(frozen=True)
class OutputConfig:
    """One output. `name` keys its delivery progress and dead letters in the database; it
    is given by the user or derived from the destination (see `skor_bridge.identity`)."""

    name: str
    kind: Literal["webhook", "amqp", "kafka"]
    settings: SinkSettings
    retry: RetryPolicy = RetryPolicy()
    #: Globs of SCHEMA.TABLE or TABLE this output receives; empty: every table.
    tables: tuple[str, ...] = ()
    #: The body of each message (see `skor_bridge.formats`).
    format: Format = "skor"
    #: Where the output starts when the database has no progress for it yet; None: the
    #: bridge-wide `Config.start_from`.
    start_from: str | None = None
    #: The name the first release gave this output by its position; its progress row is
    #: adopted once if none exists under `name` (upgrades lose and repeat nothing).
    legacy_name: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}", self.name):
            raise ConfigError(f"output name: use letters, digits, '.', '_' or '-': {self.name!r}")
        if self.format not in FORMATS:
            raise ConfigError(f"format: expected one of {', '.join(FORMATS)}, got {self.format!r}")

    @property
    def destination(self) -> str:
        """Where it delivers, for people: secrets and URL paths hidden."""
        settings = self.settings
        if isinstance(settings, WebhookConfig):
            return redact_url(settings.url)
        if isinstance(settings, AmqpConfig):
            return f"{redact(settings.url)} exchange {settings.exchange}"
        return f"{settings.bootstrap} topic {settings.topic}"


@dataclass(frozen=True)
class Config:
    source: SourceConfig
    outputs: tuple[OutputConfig, ...]
    #: Most events held in memory per output; a stuck row holds back others only past this.
    max_in_flight: int = 20000
    #: A standby takes over when the active instance has been gone this long.
    failover_timeout: float = 10.0
    #: Delivered events are kept this long for replay, then their partitions are dropped.
    retention_seconds: float = 7 * 24 * 3600.0
    #: ... and the log is kept under this many bytes on disk, whichever limit comes first;
    #: never by dropping what an output has not passed.
    retention_bytes: int = 1024**3
    #: Positions per log partition; retention drops whole partitions.
    partition_size: int = 100_000
    #: Seconds between the active instance's retention passes (shorter in tests).
    retention_interval: float = 60.0
    metrics_port: int | None = None
    #: Loopback by default: /metrics is for a local scraper unless the operator opens it.
    metrics_host: str = "127.0.0.1"
    log_format: Literal["text", "json"] = "text"
    log_level: str = "INFO"
    #: Where a new output starts: "auto" (latest if the database has delivered events
    #: before, else earliest), "latest", "earliest", a log position, or a time.
    start_from: str = "auto"
    #: Show webhook URLs whole in logs, errors and status (they may hold tokens).
    show_full_urls: bool = False

    def __post_init__(self) -> None:
        if not self.outputs:
            raise ConfigError("outputs: give at least one of --webhook, --amqp, --kafka")
        names = [o.name for o in self.outputs]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ConfigError(f"outputs: two outputs are named {duplicates[0]!r}")
        if self.max_in_flight < 1:
            raise ConfigError("max_in_flight: must be at least 1")
        if self.retention_bytes < 1:
            raise ConfigError("retention_size: must be positive")


_TEMPLATE_FIELDS = {"schema", "table", "op"}


def check_template(field_name: str, template: str) -> None:
    try:
        names = {name for _, name, _, _ in string.Formatter().parse(template) if name}
    except ValueError as exc:
        raise ConfigError(f"{field_name}: malformed template {template!r} ({exc})") from None
    unknown = names - _TEMPLATE_FIELDS
    if unknown:
        raise ConfigError(
            f"{field_name}: unknown field {{{sorted(unknown)[0]}}}; use schema, table, op"
        )


def check_dsn(dsn: str) -> None:
    """Reject a DSN libpq cannot parse, naming the problem without echoing the password."""
    from psycopg2.extensions import parse_dsn

    try:
        parse_dsn(dsn)
    except Exception as exc:  # psycopg2 raises ProgrammingError with libpq's message
        reason = redact(str(exc).strip().splitlines()[0]) if str(exc).strip() else "unparsable"
        raise ConfigError(f"dsn: {reason}") from None


def dsn_from_skor_env(env: Mapping[str, str]) -> str | None:
    """Skor's Docker variables (DBNAME, PGUSER, PGPASS, PGHOST, PGPORT) as a libpq DSN.

    Skor documented PGPASS="''" for "no password", so a value of two single quotes means none.
    """
    keys = {
        "DBNAME": "dbname",
        "PGUSER": "user",
        "PGPASS": "password",
        "PGHOST": "host",
        "PGPORT": "port",
    }
    if not any(env.get(k) for k in ("DBNAME", "PGHOST")):
        return None
    parts = []
    for var, key in keys.items():
        value = env.get(var)
        if value is None or value == "" or (var == "PGPASS" and value == "''"):
            continue
        escaped = value.replace("\\", "\\\\").replace("'", "\\'")
        parts.append(f"{key}='{escaped}'")
    return " ".join(parts)


def parse_header(text: str) -> tuple[str, str]:
    name, sep, value = text.partition(":")
    if not sep or not name.strip():
        raise ConfigError(f"header: expected NAME:VALUE, got {text!r}")
    return name.strip(), value.strip()


def parse_option(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"kafka_option: expected key=value, got {key!r}")
    return key.strip(), value.strip()
