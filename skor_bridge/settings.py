"""Build the one Config from a TOML file, SKOR_* variables and command-line options.

Precedence, lowest first: defaults, the `--config` file, Skor's Docker variables (only
for what nothing else gave), then SKOR_* variables and options (typer merges those two).
Outputs: the file's `[[outputs]]` plus those given on the command line; a command-line
output replaces a file output of the same name (`webhook`, `webhook-2`, `amqp`, `kafka`).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skor_bridge.config import (
    AmqpConfig,
    Config,
    KafkaConfig,
    OutputConfig,
    RetryPolicy,
    SourceConfig,
    WebhookConfig,
    dsn_from_skor_env,
    parse_header,
    parse_option,
)
from skor_bridge.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping


@dataclass
class Options:
    """Command-line values; None means "not given" so lower layers can supply them."""

    dsn: str | None = None
    webhooks: list[str] = field(default_factory=list)
    webhook_secret: str | None = None
    headers: list[str] = field(default_factory=list)
    webhook_timeout: float | None = None
    webhook_concurrency: int | None = None
    webhook_ca_file: str | None = None
    max_attempts: int | None = None
    mode: str | None = None
    amqp: str | None = None
    amqp_exchange: str | None = None
    amqp_routing_key: str | None = None
    amqp_mandatory: bool | None = None
    kafka: str | None = None
    kafka_topic: str | None = None
    kafka_options: list[str] = field(default_factory=list)
    kafka_create_topics: bool | None = None
    kafka_partitions: int | None = None
    kafka_replication_factor: int | None = None
    poll_interval: float | None = None
    batch_size: int | None = None
    max_in_flight: int | None = None
    failover_timeout: float | None = None
    retention: str | None = None
    retention_interval: float | None = None
    start_from: str | None = None
    metrics_port: int | None = None
    log_level: str | None = None
    log_format: str | None = None


_TOP_KEYS = {
    "dsn", "mode", "poll_interval", "batch_size", "max_in_flight", "failover_timeout",
    "retention", "start_from", "metrics_port", "log_level", "log_format", "retry", "outputs",
    "partition_size", "retention_interval",
}
_RETRY_KEYS = {"max_attempts", "initial_backoff", "max_backoff"}


def load_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config: file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config: {path}: {exc}") from None
    unknown = set(data) - _TOP_KEYS
    if unknown:
        raise ConfigError(f"config: unknown key {sorted(unknown)[0]!r} in {path}")
    return data


def parse_duration(text: str | float | int) -> float:
    """'7d', '12h', '30m', '45s' or a number of seconds."""
    if isinstance(text, int | float):
        return float(text)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    value = text.strip().lower()
    try:
        if value and value[-1] in units:
            return float(value[:-1]) * units[value[-1]]
        return float(value)
    except ValueError:
        raise ConfigError(
            f"duration: expected e.g. 7d, 12h, 30m or seconds, got {text!r}") from None


def _retry(data: Mapping[str, Any], base: RetryPolicy, where: str) -> RetryPolicy:
    values = {k: data[k] for k in _RETRY_KEYS if k in data}
    if not values:
        return base
    merged = {
        "max_attempts": base.max_attempts,
        "initial_backoff": base.initial_backoff,
        "max_backoff": base.max_backoff,
        **values,
    }
    try:
        return RetryPolicy(**merged)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _file_output(index: int, data: Mapping[str, Any], retry: RetryPolicy) -> OutputConfig:
    where = f"config outputs[{index}]"
    kind = data.get("type")
    rest = {k: v for k, v in data.items() if k not in {"type", "name"} | _RETRY_KEYS}
    try:
        settings: WebhookConfig | AmqpConfig | KafkaConfig
        if kind == "webhook":
            headers = rest.pop("headers", {})
            settings = WebhookConfig(headers=tuple((str(k), str(v)) for k, v in headers.items()),
                                     **rest)
        elif kind == "amqp":
            settings = AmqpConfig(**rest)
        elif kind == "kafka":
            options = rest.pop("options", {})
            settings = KafkaConfig(options=tuple((str(k), str(v)) for k, v in options.items()),
                                   **rest)
        else:
            raise ConfigError(f"{where}: type must be webhook, amqp or kafka, got {kind!r}")
    except TypeError as exc:
        # dataclass constructors name the unexpected field; keep just that part.
        raise ConfigError(f"{where}: {str(exc).split('() ', 1)[-1]}") from None
    name = data.get("name") or (kind if index == 0 else f"{kind}-{index + 1}")
    return OutputConfig(str(name), kind, settings, _retry(data, retry, where))


def build_config(options: Options, config_file: Path | None, environ: Mapping[str, str]) -> Config:
    file = load_file(config_file) if config_file else {}

    def pick(name: str, default: Any = None) -> Any:
        value = getattr(options, name, None)
        return value if value is not None else file.get(name, default)

    dsn = options.dsn or file.get("dsn") or dsn_from_skor_env(environ)
    if not dsn:
        raise ConfigError("dsn: give --dsn, SKOR_DSN, a config file, or Skor's DBNAME/PGHOST")
    source_kwargs: dict[str, Any] = {"dsn": dsn, "mode": pick("mode", "durable")}
    for key in ("poll_interval", "batch_size"):
        if pick(key) is not None:
            source_kwargs[key] = pick(key)
    source = SourceConfig(**source_kwargs)

    retry = _retry(file.get("retry", {}), RetryPolicy(), "config retry")
    if options.max_attempts is not None:
        retry = RetryPolicy(options.max_attempts, retry.initial_backoff, retry.max_backoff)

    outputs: dict[str, OutputConfig] = {}
    for index, data in enumerate(file.get("outputs", [])):
        output = _file_output(index, data, retry)
        outputs[output.name] = output
    for output in _command_line_outputs(options, environ, retry):
        outputs[output.name] = output

    extra: dict[str, Any] = {}
    for key in ("max_in_flight", "failover_timeout", "start_from", "metrics_port",
                "log_level", "log_format", "retention_interval"):
        if pick(key) is not None:
            extra[key] = pick(key)
    if pick("retention") is not None:
        extra["retention_seconds"] = parse_duration(pick("retention"))
    if file.get("partition_size") is not None:
        extra["partition_size"] = int(file["partition_size"])
    return Config(source=source, outputs=tuple(outputs.values()), **extra)


def _command_line_outputs(
    options: Options, environ: Mapping[str, str], retry: RetryPolicy
) -> list[OutputConfig]:
    result = []
    webhooks = list(options.webhooks)
    if not webhooks and not options.amqp and not options.kafka and environ.get("WEBHOOKURL"):
        webhooks = [environ["WEBHOOKURL"]]  # Skor's Docker variable
    headers = tuple(parse_header(h) for h in options.headers)
    for index, url in enumerate(webhooks):
        hook: dict[str, Any] = {"url": url, "secret": options.webhook_secret, "headers": headers}
        if options.webhook_timeout is not None:
            hook["timeout"] = options.webhook_timeout
        if options.webhook_concurrency is not None:
            hook["concurrency"] = options.webhook_concurrency
        if options.webhook_ca_file is not None:
            hook["ca_file"] = options.webhook_ca_file
        name = "webhook" if index == 0 else f"webhook-{index + 1}"
        result.append(OutputConfig(name, "webhook", WebhookConfig(**hook), retry))
    if options.amqp:
        amqp: dict[str, Any] = {"url": options.amqp}
        for key, attr in (("exchange", "amqp_exchange"), ("routing_key", "amqp_routing_key"),
                          ("mandatory", "amqp_mandatory")):
            if getattr(options, attr) is not None:
                amqp[key] = getattr(options, attr)
        result.append(OutputConfig("amqp", "amqp", AmqpConfig(**amqp), retry))
    if options.kafka:
        kafka: dict[str, Any] = {
            "bootstrap": options.kafka,
            "options": tuple(parse_option(o) for o in options.kafka_options),
        }
        for key, attr in (("topic", "kafka_topic"), ("create_topics", "kafka_create_topics"),
                          ("partitions", "kafka_partitions"),
                          ("replication_factor", "kafka_replication_factor")):
            if getattr(options, attr) is not None:
                kafka[key] = getattr(options, attr)
        result.append(OutputConfig("kafka", "kafka", KafkaConfig(**kafka), retry))
    return result
