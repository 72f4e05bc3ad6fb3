"""Every option of `skor-bridge run`, declared once: flag, TOML key, SKOR_* variable, default,
help and the parser that validates it, whatever the source.

A parser takes the value as the user gave it (a string from the command line or the
environment, a TOML value from the file) and returns the typed value, or raises ValueError
with the reason; `settings` prefixes the reason with the option as the user wrote it
(`--metrics-port`, `SKOR_METRICS_PORT`, `skor.toml: metrics_port`).

Output options (`scope` webhook/amqp/kafka/output) are the command line's outputs' settings and
the keys of a file's `[[outputs]]` tables (`key`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from skor_bridge import config
from skor_bridge.errors import ConfigError

Parser = Callable[[object], Any]
Style = Literal["value", "multi", "flag", "switch"]

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*", re.IGNORECASE)
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")


def text(value: object) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"expected a string, got {value!r}")


def checked(check: Callable[[str], object]) -> Parser:
    """A string that `check` (one of config's validators) accepts."""

    def parse(value: object) -> str:
        string = text(value)
        try:
            check(string)
        except ConfigError as exc:
            raise ValueError(str(exc)) from None
        return string

    return parse


def _file(path: str) -> None:
    import os

    if not os.path.isfile(path):
        raise ConfigError(f"no such file: {path}")


_template = checked(lambda template: config.check_template("template", template))


def choice(*allowed: str) -> Parser:
    def parse(value: object) -> str:
        word = text(value).strip().lower()
        if word not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}, got {value!r}")
        return word

    return parse


def integer(low: int, high: int | None = None) -> Parser:
    bounds = f"from {low} to {high}" if high is not None else f"at least {low}"

    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int | str):
            raise ValueError(f"expected a whole number {bounds}, got {value!r}")
        try:
            number = int(value)
        except ValueError:
            raise ValueError(f"expected a whole number {bounds}, got {value!r}") from None
        if number < low or (high is not None and number > high):
            raise ValueError(f"expected a whole number {bounds}, got {number}")
        return number

    return parse


def positive(low: float = 0.0) -> Parser:
    """A number of seconds (or a duration such as 30s, 2m) above `low`."""

    def parse(value: object) -> float:
        number = duration(value)
        if number <= low:
            raise ValueError(f"must be more than {low:g} seconds, got {value!r}")
        return number

    return parse


def duration(value: object) -> float:
    """'7d', '12h', '30m', '45s' or a number of seconds."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    match = _DURATION.fullmatch(value) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"expected a duration such as 45s, 30m, 12h, 7d, got {value!r}")
    return float(match[1]) * _UNITS[(match[2] or "s").lower()]


_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", re.IGNORECASE)


def size(value: object) -> int:
    """'1GB', '512MB', '64kB' (powers of 1024, as PostgreSQL counts) or a number of bytes."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    match = _SIZE.fullmatch(value) if isinstance(value, str) else None
    if not match or float(match[1]) <= 0:
        raise ValueError(f"expected a size such as 512MB or 1GB, got {value!r}")
    return int(float(match[1]) * 1024 ** " kmgt".index((match[2] or " ").lower()))


def boolean(value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"expected true or false, got {value!r}")


def strings(value: object) -> list[str]:
    """A TOML list of strings, or one string (comma-separated on the command line)."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return [item.strip() for item in value if item.strip()]
    raise ValueError(f"expected a list of strings, got {value!r}")


def moment(spec: str, now: datetime | None = None) -> datetime:
    """An ISO-8601 time (local time without an offset) or a time ago (90s, 10m, 2h, 7d)."""
    text = spec.strip()
    match = _DURATION.fullmatch(text)
    if match and match[2]:
        return (now or datetime.now(UTC)) - timedelta(seconds=duration(text))
    parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text[-1:] in "zZ" else text)
    return parsed if parsed.tzinfo is not None else parsed.astimezone()


def start_from(value: object) -> str:
    """latest, earliest, a log position (a whole number) or a time (ISO-8601 or 10m ago)."""
    spec = text(value).strip().lower()
    if spec in ("latest", "earliest", "auto") or spec.isdigit():
        return spec
    try:
        moment(str(value))
    except ValueError:
        raise ValueError(
            "expected latest, earliest, a log position (123) or a time (2024-05-"
            f"01T12:00:00Z, or 2h for two hours ago), got {value!r}"
        ) from None
    return str(value).strip()


def table_pattern(value: object) -> list[str]:
    """Globs of schema.table or table ('orders', 'billing.*')."""
    patterns = strings(value)
    for pattern in patterns:
        if not re.fullmatch(r"[^.\s]+(\.[^.\s]+)?", pattern):
            raise ValueError(
                f"expected TABLE or SCHEMA.TABLE globs (orders, billing.*), got {pattern!r}"
            )
    return patterns


@dataclass(frozen=True)
class Option:
    name: str
    parse: Parser
    help: str
    metavar: str = "TEXT"
    #: Shown as [default: ...]; None shows nothing.
    shown_default: str | None = None
    default: Any = None
    panel: str | None = None
    style: Style = "value"
    #: Where it applies: top-level, or the settings of one output kind (or any output).
    scope: Literal["top", "webhook", "amqp", "kafka", "output"] = "top"
    #: The key in the TOML file (top level or inside [[outputs]]); None: not in the file.
    key: str | None = None
    cli: bool = True
    hidden: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def env(self) -> str:
        return "SKOR_" + self.name.upper()


WEBHOOK, AMQP, KAFKA, ROUTING, TUNING = (
    "Webhook output",
    "RabbitMQ output",
    "Kafka output",
    "Every output",
    "Tuning and operations",
)

OPTIONS: tuple[Option, ...] = (
    Option(
        "dsn",
        text,
        "libpq DSN or postgresql:// URI. Without it, Skor's DBNAME, PGUSER, "
        "PGPASS, PGHOST and PGPORT variables are used.",
        "DSN",
        key="dsn",
    ),
    Option(
        "mode",
        choice("durable", "notify", "wal"),
        "durable (outbox, nothing lost), notify "
        "(Skor's pg_notify, lossy) or wal (a replication slot; chosen by itself once "
        "installed with triggers install --mode wal).",
        "durable|notify|wal",
        "durable",
        "durable",
        key="mode",
    ),
    # -- outputs given on the command line
    Option(
        "webhook",
        text,
        "Webhook URL, optionally named: NAME=URL; repeat for several. "
        "Skor's WEBHOOKURL also works.",
        "[NAME=]URL",
        panel=WEBHOOK,
        style="multi",
        scope="webhook",
        key="url",
    ),
    Option(
        "webhook_secret",
        checked(config.signing_key),
        "whsec_<base64 key>: sign as Standard Webhooks do.",
        "whsec_KEY",
        panel=WEBHOOK,
        scope="webhook",
        key="secret",
    ),
    Option(
        "header",
        checked(config.parse_header),
        "Extra request header; repeatable.",
        "NAME:VALUE",
        panel=WEBHOOK,
        style="multi",
        scope="webhook",
        key="headers",
    ),
    Option(
        "webhook_timeout",
        positive(),
        "Seconds per request (connect, send, answer); past it, that row's event is retried.",
        "SECONDS",
        "10",
        10.0,
        WEBHOOK,
        scope="webhook",
        key="timeout",
    ),
    Option(
        "webhook_concurrency",
        integer(1),
        "Most requests in flight (different rows); adapts below it to the receiver's latency.",
        "N",
        "512",
        512,
        WEBHOOK,
        scope="webhook",
        key="concurrency",
    ),
    Option(
        "webhook_ca_file",
        checked(_file),
        "PEM file of the CA that signs an https receiver's certificate.",
        "FILE",
        "the public CA bundle",
        panel=WEBHOOK,
        scope="webhook",
        key="ca_file",
    ),
    Option(
        "amqp",
        text,
        "RabbitMQ amqp:// or amqps:// URL, optionally named: NAME=URL.",
        "[NAME=]URL",
        panel=AMQP,
        scope="amqp",
        key="url",
    ),
    Option(
        "amqp_exchange",
        text,
        "Durable topic exchange.",
        "EXCHANGE",
        "skor",
        "skor",
        AMQP,
        scope="amqp",
        key="exchange",
    ),
    Option(
        "amqp_routing_key",
        _template,
        "Template with {schema} {table} {op}.",
        "TEMPLATE",
        "{schema}.{table}.{op}",
        "{schema}.{table}.{op}",
        AMQP,
        scope="amqp",
        key="routing_key",
    ),
    Option(
        "amqp_mandatory",
        boolean,
        "Retry messages no queue receives, instead of counting them.",
        "",
        None,
        False,
        AMQP,
        style="flag",
        scope="amqp",
        key="mandatory",
    ),
    Option(
        "kafka",
        text,
        "Kafka bootstrap servers, optionally named: NAME=HOST:PORT[,...].",
        "[NAME=]HOST:PORT",
        panel=KAFKA,
        scope="kafka",
        key="bootstrap",
    ),
    Option(
        "kafka_topic",
        _template,
        "Template with {schema} {table} {op}.",
        "TEMPLATE",
        "skor.{schema}.{table}",
        "skor.{schema}.{table}",
        KAFKA,
        scope="kafka",
        key="topic",
    ),
    Option(
        "kafka_option",
        checked(config.parse_option),
        "librdkafka setting, passed through; repeatable.",
        "KEY=VALUE",
        panel=KAFKA,
        style="multi",
        scope="kafka",
        key="options",
    ),
    Option(
        "kafka_create_topics",
        boolean,
        "Create missing topics.",
        "",
        "create",
        True,
        KAFKA,
        style="switch",
        scope="kafka",
        key="create_topics",
    ),
    Option(
        "kafka_partitions",
        integer(1),
        "Partitions of created topics.",
        "N",
        "broker's",
        panel=KAFKA,
        scope="kafka",
        key="partitions",
    ),
    Option(
        "kafka_replication_factor",
        integer(1),
        "Replication of created topics.",
        "N",
        "broker's",
        panel=KAFKA,
        scope="kafka",
        key="replication_factor",
    ),
    # -- any output
    Option(
        "tables",
        table_pattern,
        "Only these tables reach the command line's outputs: "
        "globs of TABLE or SCHEMA.TABLE, comma-separated.",
        "GLOB[,GLOB]",
        "every table",
        (),
        ROUTING,
        scope="output",
        key="tables",
    ),
    Option(
        "format",
        choice("skor", "envelope", "cloudevents"),
        "Body of each message: skor "
        "({data, table, schema, op}), envelope (adds id, old, position...) or "
        "cloudevents (CloudEvents 1.0).",
        "skor|envelope|cloudevents",
        "skor",
        "skor",
        ROUTING,
        scope="output",
        key="format",
    ),
    Option(
        "start_from",
        start_from,
        "Where a new output starts: latest, earliest, a log "
        "position or a time (ISO-8601, or 2h for two hours ago).",
        "WHERE",
        "latest; earliest on a database that has delivered nothing yet",
        "auto",
        ROUTING,
        scope="output",
        key="start_from",
    ),
    Option(
        "max_attempts",
        integer(1),
        "Dead-letter an event after N failed attempts.",
        "N",
        "retry forever",
        panel=ROUTING,
        scope="output",
        key="max_attempts",
    ),
    Option(
        "initial_backoff",
        positive(),
        "First retry delay.",
        "SECONDS",
        "0.5",
        0.5,
        scope="output",
        key="initial_backoff",
        cli=False,
    ),
    Option(
        "max_backoff",
        positive(),
        "Longest retry delay.",
        "SECONDS",
        "60",
        60.0,
        scope="output",
        key="max_backoff",
        cli=False,
    ),
    Option(
        "show_full_urls",
        boolean,
        "Show webhook URLs whole (path and query) in logs, "
        "errors and status, instead of scheme://host/...: only where the URL holds no "
        "token.",
        "",
        None,
        False,
        TUNING,
        style="flag",
        key="show_full_urls",
    ),
    # -- tuning
    Option(
        "poll_interval",
        positive(),
        "Seconds between looks at an idle outbox.",
        "SECONDS",
        "0.002",
        0.002,
        TUNING,
        key="poll_interval",
    ),
    Option(
        "batch_size",
        integer(1),
        "Events moved or read per round trip.",
        "N",
        "2000",
        2000,
        TUNING,
        key="batch_size",
    ),
    Option(
        "outbox_compact_after",
        integer(1),
        "Durable mode: dead outbox rows (VACUUM held back by a long transaction) past which "
        "the bridge compacts the outbox.",
        "N",
        "10000",
        10_000,
        TUNING,
        key="outbox_compact_after",
        hidden=True,
    ),
    Option(
        "max_in_flight",
        integer(1),
        "Events held in memory per output.",
        "N",
        "20000",
        20000,
        TUNING,
        key="max_in_flight",
    ),
    Option(
        "failover_timeout",
        positive(0.5),
        "Seconds of missed heartbeats before a standby takes over (more than 0.5).",
        "SECONDS",
        "10",
        10.0,
        TUNING,
        key="failover_timeout",
    ),
    Option(
        "max_slot_lag",
        size,
        "WAL mode: WAL the replication slot may hold back on the "
        "server before /readyz fails and a warning is logged (1GB, 512MB...).",
        "BYTES",
        "1GB",
        1024**3,
        TUNING,
        key="max_slot_lag",
    ),
    Option(
        "retention",
        positive(),
        "Keep delivered events this long for replay.",
        "DURATION",
        "7d",
        7 * 86400.0,
        TUNING,
        key="retention",
    ),
    Option(
        "retention_size",
        size,
        "...and keep the log under this size on disk, whichever "
        "comes first; never dropping what an output has not delivered.",
        "SIZE",
        "1GB",
        1024**3,
        TUNING,
        key="retention_size",
    ),
    Option(
        "retention_interval",
        positive(),
        "Seconds between retention passes.",
        "SECONDS",
        "60",
        60.0,
        TUNING,
        key="retention_interval",
        hidden=True,
    ),
    Option(
        "partition_size",
        integer(1),
        "Positions per log partition.",
        "N",
        "100000",
        100_000,
        key="partition_size",
        cli=False,
    ),
    Option(
        "metrics_port",
        integer(1, 65535),
        "Serve /metrics, /healthz and /readyz on this port.",
        "PORT",
        "off",
        panel=TUNING,
        key="metrics_port",
    ),
    Option(
        "metrics_host",
        text,
        "Address the metrics server listens on (0.0.0.0: every interface).",
        "ADDRESS",
        "127.0.0.1",
        "127.0.0.1",
        TUNING,
        key="metrics_host",
    ),
    Option(
        "log_level",
        choice("debug", "info", "warning", "error"),
        "Least severe log lines shown.",
        "debug|info|warning|error",
        "info",
        "info",
        TUNING,
        key="log_level",
    ),
    Option(
        "log_format",
        choice("text", "json"),
        "One line of text or one JSON object per log line.",
        "text|json",
        "text",
        "text",
        TUNING,
        key="log_format",
    ),
)

BY_NAME = {option.name: option for option in OPTIONS}


def output_keys(kind: str) -> dict[str, Option]:
    """The keys a file's [[outputs]] table of this kind accepts (besides type and name)."""
    return {o.key: o for o in OPTIONS if o.key and o.scope in (kind, "output")}


def top_keys() -> dict[str, Option]:
    return {o.key: o for o in OPTIONS if o.key and o.scope == "top"}
