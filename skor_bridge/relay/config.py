"""The relay's one configuration object, and how the CLI and TOML file build it.

Options shared with `run` (webhooks, signing, retries, metrics, logs, librdkafka settings)
are `skor_bridge.options` declarations, resolved by `settings` exactly as for `run`; the
relay's own (`--kafka`, `--topic`, `--group`, `--dead-letter-topic`) are declared below,
with the same precedence: command line, SKOR_* variable, the file's `[relay]` table, default.

A relay reads the same kind of TOML file as `run`: `[[outputs]]` (webhooks only), `[retry]`,
`metrics_port`, `log_level`, `log_format`, `max_in_flight`..., plus a `[relay]` table with
`kafka`, `topics`, `group`, `dead_letter_topic` and `options` (librdkafka settings).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from skor_bridge.config import OutputConfig, RetryPolicy, WebhookConfig, parse_option
from skor_bridge.errors import ConfigError
from skor_bridge.options import BY_NAME, Option, strings, text
from skor_bridge.settings import (
    Given,
    _command_line_outputs,
    _file_outputs,
    _given,
    _make,
    _merge,
    load_file,
    resolve,
)

if TYPE_CHECKING:
    from collections.abc import Mapping
    from pathlib import Path

KAFKA = "Kafka input"


def _topic(value: object) -> str:
    topic = text(value).strip()
    if not topic:
        raise ValueError("expected a topic name or a ^regular expression")
    if topic.startswith("^"):
        try:
            re.compile(topic)
        except re.error as exc:
            raise ValueError(f"bad regular expression {topic!r} ({exc})") from None
    return topic


#: The relay's own options; `key` is the key of the file's [relay] table.
RELAY_OPTIONS: tuple[Option, ...] = (
    Option("kafka", text, "Kafka bootstrap servers.", "HOST:PORT[,...]", panel=KAFKA, key="kafka"),
    Option(
        "topic",
        _topic,
        "Topic to deliver, or a regular expression starting with ^ "
        "(e.g. '^skor\\..*'); repeatable.",
        "TOPIC|^REGEX",
        panel=KAFKA,
        style="multi",
        key="topics",
    ),
    Option(
        "group",
        text,
        "Consumer group id: the workers of one group share the partitions.",
        "GROUP",
        panel=KAFKA,
        key="group",
    ),
    Option(
        "dead_letter_topic",
        text,
        "Topic for records a webhook refused for good.",
        "TOPIC",
        "none: the row waits and is retried",
        panel=KAFKA,
        key="dead_letter_topic",
    ),
)

#: Options of `run` that mean the same for the relay.
SHARED = (
    "webhook",
    "webhook_secret",
    "header",
    "webhook_timeout",
    "webhook_concurrency",
    "webhook_ca_file",
    "kafka_option",
    "max_attempts",
    "max_in_flight",
    "metrics_port",
    "metrics_host",
    "log_level",
    "log_format",
    "show_full_urls",
    "initial_backoff",
    "max_backoff",
)

#: librdkafka settings the relay's guarantees rest on: offsets are committed by the relay,
#: only past records that are finished. An option that changes them is refused.
FIXED_OPTIONS: dict[str, str] = {
    "enable.auto.commit": "false",
    "enable.auto.offset.store": "false",
}


def relay_options() -> list[Option]:
    """Every option of `skor-bridge relay`, in --help order."""
    return [*RELAY_OPTIONS, *(BY_NAME[name] for name in SHARED)]


@dataclass(frozen=True)
class RelayConfig:
    """Guarantee: every record of `topics` reaches every webhook of `outputs` at least once,
    in offset order per key, or the dead-letter topic."""

    bootstrap: str
    #: Topic names, or regular expressions starting with "^" (librdkafka's convention).
    topics: tuple[str, ...]
    group: str
    outputs: tuple[OutputConfig, ...]
    dead_letter_topic: str | None = None
    #: Passed straight to librdkafka (SASL, SSL, session.timeout.ms...).
    options: tuple[tuple[str, str], ...] = field(default=(), repr=False)
    #: Records taken from Kafka and not finished, past which the worker stops fetching.
    max_in_flight: int = 20000
    metrics_port: int | None = None
    metrics_host: str = "127.0.0.1"
    log_level: str = "INFO"
    log_format: str = "text"
    show_full_urls: bool = False

    def __post_init__(self) -> None:
        if not self.bootstrap.strip():
            raise ConfigError("--kafka: give the Kafka bootstrap servers")
        if not self.topics:
            raise ConfigError("--topic: give at least one topic or ^regex")
        if not self.group.strip():
            raise ConfigError("--group: give a consumer group id")
        if not self.outputs:
            raise ConfigError("--webhook: give at least one webhook")
        for output in self.outputs:
            if output.kind != "webhook":
                raise ConfigError(
                    f"outputs: the relay delivers to webhooks only; "
                    f"{output.name!r} is {output.kind}"
                )
            # The body is the record as the bridge's Kafka output rendered and routed it.
            if output.format != "skor" or output.tables:
                raise ConfigError(
                    f"outputs: {output.name!r}: the relay sends each record's "
                    "value as it is; set format and tables on the bridge's "
                    "kafka output instead"
                )
        if self.dead_letter_topic is not None and self.reads(self.dead_letter_topic):
            raise ConfigError(
                f"--dead-letter-topic: {self.dead_letter_topic!r} is one of the "
                "topics read; dead letters would be delivered again"
            )
        for key, value in self.options:
            if FIXED_OPTIONS.get(key, value) != value:
                raise ConfigError(
                    f"--kafka-option: {key} must stay {FIXED_OPTIONS[key]} for the relay"
                )

    def reads(self, topic: str) -> bool:
        """Whether `topic` is one this relay subscribes to."""
        return any(re.match(t, topic) if t.startswith("^") else t == topic for t in self.topics)

    @property
    def revoke_timeout(self) -> float:
        """How long a revoked partition waits for requests in flight: one webhook timeout,
        plus room for the answer."""
        webhooks = [o.settings for o in self.outputs if isinstance(o.settings, WebhookConfig)]
        return max(w.timeout for w in webhooks) + 5.0


def build_relay_config(
    cli: Mapping[str, object], config_file: Path | None, environ: Mapping[str, str]
) -> RelayConfig:
    """`cli` holds only what the command line gave, by option name (as for `run`)."""
    file = load_file(config_file) if config_file else {}
    label = str(config_file) if config_file else "config"
    table = file.get("relay", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{label}: relay: expected a table ([relay]), got {table!r}")
    known = {o.key for o in RELAY_OPTIONS} | {"options"}
    for key in table:
        if key not in known:
            raise ConfigError(
                f"{label}: unknown key 'relay.{key}'; expected one of "
                f"{', '.join(sorted(k for k in known if k))}"
            )
    # The shared options resolve as `run`'s do; variables of `run`'s other options (such as
    # SKOR_KAFKA, which is the relay's input here) must not add outputs.
    shared_env = {
        BY_NAME[n].env: environ[BY_NAME[n].env] for n in SHARED if BY_NAME[n].env in environ
    }
    values = resolve({n: v for n, v in cli.items() if n in SHARED}, shared_env, file, label)
    own = {o.name: _resolve_own(o, cli, environ, table, label) for o in RELAY_OPTIONS}

    def value(name: str) -> Any:
        return values[name].value

    retry = _make(
        "retry",
        lambda: RetryPolicy(value("max_attempts"), value("initial_backoff"), value("max_backoff")),
    )
    skor_env = {k: environ[k] for k in ("WEBHOOKURL",) if k in environ}
    outputs = _merge(
        _file_outputs(file, label, value("show_full_urls"), retry),
        _command_line_outputs(values, skor_env, retry),
    )
    if value("kafka_option"):
        options = tuple(
            _make(values["kafka_option"].where, parse_option, o) for o in value("kafka_option")
        )
    else:
        raw = table.get("options", {})
        if not isinstance(raw, dict):
            raise ConfigError(
                f"{label}: relay.options: expected a table of librdkafka settings, got {raw!r}"
            )
        options = tuple((str(k), str(v)) for k, v in raw.items())
    # RelayConfig's errors name the flag already.
    return RelayConfig(
        bootstrap=own["kafka"].value or "",
        topics=tuple(own["topic"].value),
        group=own["group"].value or "",
        outputs=tuple(o for o, _ in outputs),
        dead_letter_topic=own["dead_letter_topic"].value,
        options=options,
        max_in_flight=value("max_in_flight"),
        metrics_port=value("metrics_port"),
        metrics_host=value("metrics_host"),
        log_level=value("log_level").upper(),
        log_format=value("log_format"),
        show_full_urls=value("show_full_urls"),
    )


def _resolve_own(
    option: Option,
    cli: Mapping[str, object],
    environ: Mapping[str, str],
    table: Mapping[str, Any],
    label: str,
) -> Given:
    raw = cli.get(option.name)
    env = environ.get(option.env, "")
    if raw not in (None, [], ()):
        return _given(option, raw, option.flag)
    if env.strip():
        return _given(option, strings(env) if option.style == "multi" else env, option.env)
    if option.key is not None and option.key in table:
        found = table[option.key]
        if option.style == "multi" and isinstance(found, str):
            found = [found]
        return _given(option, found, f"{label}: relay.{option.key}")
    return Given([] if option.style == "multi" else option.default, "default")
