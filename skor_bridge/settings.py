"""Build the one Config from the command line, SKOR_* variables, a TOML file and defaults.

Precedence, highest first: the command line, the SKOR_* variable, the `--config` file, Skor's
Docker variables (DBNAME..., WEBHOOKURL: only for what nothing else gave), the default
declared in `skor_bridge.options`. Every value, whatever its source, goes through its
option's parser, and a bad one is one line naming it as the user wrote it (`--log-level`,
`SKOR_LOG_LEVEL`, `bridge.toml: log_level`, `bridge.toml: outputs[1].urll`).

Outputs: the file's `[[outputs]]` plus the command line's. Each keeps its name whatever the
other outputs are (`skor_bridge.identity`); a command-line output with the name or the
destination of a file output replaces it (it is the same output).
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, TypeVar

from skor_bridge import identity
from skor_bridge.config import (
    AmqpConfig,
    Config,
    KafkaConfig,
    OutputConfig,
    RetryPolicy,
    SinkSettings,
    SourceConfig,
    WebhookConfig,
    dsn_from_skor_env,
    parse_header,
    parse_option,
)
from skor_bridge.errors import ConfigError
from skor_bridge.options import NAME_PATTERN, OPTIONS, Option, output_keys, top_keys

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from pathlib import Path

T = TypeVar("T")
_KINDS = ("webhook", "amqp", "kafka")
#: Top-level file keys that hold other keys; `relay` is read by `skor-bridge relay` only
#: (skor_bridge.relay.config), so one file may serve a bridge and its relays.
_SECTIONS = {
    "retry": ("max_attempts", "initial_backoff", "max_backoff"),
    "outputs": (),
    "relay": (),
}
#: Output options that also have a bridge-wide value at the file's top level.
_FILE_WIDE = {
    "start_from": "start_from",
    "max_attempts": "retry.max_attempts",
    "initial_backoff": "retry.initial_backoff",
    "max_backoff": "retry.max_backoff",
}


@dataclass(frozen=True)
class Given:
    """A value and how the user wrote where it came from, for error messages."""

    value: Any
    where: str


def fail(where: str, reason: object) -> ConfigError:
    """'where: reason', dropping the field name a lower layer put in front of `reason`."""
    text = str(reason)
    head, sep, rest = text.partition(": ")
    if sep and " " not in head:
        text = rest
    return ConfigError(f"{where}: {text}")


def _parse(option: Option, raw: object, where: str) -> Any:
    try:
        return option.parse(raw)
    except ValueError as exc:
        raise fail(where, exc) from None


def load_file(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            data = tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"--config: file not found: {path}") from None
    except IsADirectoryError:
        raise ConfigError(f"--config: {path} is a directory") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None
    known = {*top_keys(), "start_from", *_SECTIONS}
    for key in data:
        if key not in known:
            raise ConfigError(
                f"{path}: unknown key {key!r}; expected one of {', '.join(sorted(known))}"
            )
    retry = data.get("retry", {})
    if not isinstance(retry, dict):
        raise ConfigError(f"{path}: retry: expected a table ([retry]), got {retry!r}")
    for key in retry:
        if key not in _SECTIONS["retry"]:
            raise ConfigError(
                f"{path}: unknown key 'retry.{key}'; expected one of "
                f"{', '.join(_SECTIONS['retry'])}"
            )
    return data


def _from_file(option: Option, file: Mapping[str, Any]) -> tuple[bool, object, str]:
    path = _FILE_WIDE.get(option.name) if option.scope == "output" else option.key
    if option.scope not in ("top", "output") or not path:
        return False, None, ""
    section: Mapping[str, Any] = file
    *parents, key = path.split(".")
    for parent in parents:
        section = section.get(parent, {})
    return (key in section), section.get(key), path


def resolve(
    cli: Mapping[str, object],
    environ: Mapping[str, str],
    file: Mapping[str, Any],
    label: str = "config",
) -> dict[str, Given]:
    """Every option's value and where it came from. `cli` holds only what the command line
    gave (None or [] for the rest); `label` names the file in messages."""
    values: dict[str, Given] = {}
    for option in OPTIONS:
        raw = cli.get(option.name)
        env = environ.get(option.env, "")
        in_file, file_value, file_key = _from_file(option, file)
        if raw not in (None, [], ()) and option.cli:
            given = _given(option, raw, option.flag)
        elif env.strip() and option.cli:
            given = _given(option, env.split() if option.style == "multi" else env, option.env)
        elif in_file:
            given = _given(option, file_value, f"{label}: {file_key}")
        else:
            given = Given([] if option.style == "multi" else option.default, "default")
        values[option.name] = given
    return values


def _given(option: Option, raw: object, where: str) -> Given:
    if option.style == "multi":
        items = raw if isinstance(raw, list | tuple) else [raw]
        return Given([_parse(option, item, where) for item in items], where)
    return Given(_parse(option, raw, where), where)


def build_config(
    cli: Mapping[str, object], config_file: Path | None, environ: Mapping[str, str]
) -> Config:
    file = load_file(config_file) if config_file else {}
    values = resolve(cli, environ, file, str(config_file) if config_file else "config")

    def value(name: str) -> Any:
        return values[name].value

    dsn = value("dsn") or dsn_from_skor_env(environ)
    if not dsn:
        raise ConfigError(
            "--dsn: give --dsn, SKOR_DSN, dsn in the --config file, or Skor's "
            "DBNAME/PGHOST variables"
        )
    source = _make(
        values["dsn"].where if value("dsn") else "DBNAME/PGHOST",
        lambda: SourceConfig(
            dsn=dsn,
            mode=value("mode"),
            poll_interval=value("poll_interval"),
            batch_size=value("batch_size"),
            compact_after=value("outbox_compact_after"),
            max_slot_lag=value("max_slot_lag"),
        ),
    )
    retry = _make(
        "retry",
        lambda: RetryPolicy(value("max_attempts"), value("initial_backoff"), value("max_backoff")),
    )
    outputs = _merge(
        _file_outputs(file, str(config_file), value("show_full_urls"), retry),
        _command_line_outputs(values, environ, retry),
    )
    return _make(
        "outputs",
        lambda: Config(
            source=source,
            outputs=tuple(output for output, _ in outputs),
            max_in_flight=value("max_in_flight"),
            failover_timeout=value("failover_timeout"),
            retention_seconds=value("retention"),
            retention_bytes=value("retention_size"),
            retention_interval=value("retention_interval"),
            partition_size=value("partition_size"),
            metrics_port=value("metrics_port"),
            metrics_host=value("metrics_host"),
            log_format=value("log_format"),
            log_level=value("log_level").upper(),
            start_from=value("start_from"),
            show_full_urls=value("show_full_urls"),
        ),
    )


def _make(where: str, build: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """build(*args, **kwargs); a ConfigError it raises is relabelled with `where`."""
    try:
        return build(*args, **kwargs)
    except ConfigError as exc:
        raise fail(where, exc) from None


# -- outputs ----------------------------------------------------------------------------------

Placed = tuple[OutputConfig, str]  # an output and where the user declared it


def _output(
    kind: str,
    settings: SinkSettings,
    name: str | None,
    legacy: str,
    common: Mapping[str, Any],
    retry: RetryPolicy,
    where: str,
) -> OutputConfig:
    if name is not None and not NAME_PATTERN.fullmatch(name):
        raise ConfigError(
            f"{where}: name: use letters, digits, '.', '_' or '-' (at most 63), got {name!r}"
        )
    return _make(
        where,
        lambda: OutputConfig(
            name=name or identity.derived_name(kind, settings),
            kind=kind,  # type: ignore[arg-type]
            settings=settings,
            retry=retry,
            tables=tuple(common["tables"]),
            format=common["format"],
            start_from=common.get("start_from"),
            legacy_name=legacy if legacy != name else None,
        ),
    )


def _file_outputs(
    file: Mapping[str, Any], label: str, full_urls: bool, retry: RetryPolicy
) -> list[Placed]:
    tables = file.get("outputs", [])
    if not isinstance(tables, list) or not all(isinstance(t, dict) for t in tables):
        raise ConfigError(f"{label}: outputs: expected [[outputs]] tables")
    result = []
    for index, table in enumerate(tables):
        where = f"{label}: outputs[{index}]"
        kind = table.get("type")
        if kind not in _KINDS:
            raise ConfigError(f"{where}.type: expected one of {', '.join(_KINDS)}, got {kind!r}")
        keys = output_keys(kind)
        parsed: dict[str, Any] = {}
        for key, raw in table.items():
            if key in ("type", "name"):
                continue
            if key not in keys:
                raise ConfigError(
                    f"{where}: unknown key {key!r} for a {kind} output; expected "
                    f"one of name, {', '.join(sorted(keys))}"
                )
            parsed[key] = (
                _mapping(raw, f"{where}.{key}")
                if key in ("headers", "options")
                else _parse(keys[key], raw, f"{where}.{key}")
            )
        name = table.get("name")
        if name is not None and not isinstance(name, str):
            raise ConfigError(f"{where}.name: expected a string, got {name!r}")
        common = {
            "tables": parsed.pop("tables", []),
            "format": parsed.pop("format", "skor"),
            "start_from": parsed.pop("start_from", None),
        }
        own_retry = _make(
            where,
            RetryPolicy,
            parsed.pop("max_attempts", retry.max_attempts),
            parsed.pop("initial_backoff", retry.initial_backoff),
            parsed.pop("max_backoff", retry.max_backoff),
        )
        if kind == "webhook":
            parsed["show_full_url"] = full_urls
        settings = _settings(kind, parsed, where)
        output = _output(
            kind,
            settings,
            name,
            name or identity.legacy_name(kind, index),
            common,
            own_retry,
            where,
        )
        result.append((output, where))
    return result


def _mapping(raw: object, where: str) -> tuple[tuple[str, str], ...]:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table of names to values, got {raw!r}")
    return tuple((str(k), str(v)) for k, v in raw.items())


def _settings(kind: str, fields: dict[str, Any], where: str) -> SinkSettings:
    cls = {"webhook": WebhookConfig, "amqp": AmqpConfig, "kafka": KafkaConfig}[kind]
    required = "bootstrap" if kind == "kafka" else "url"
    if required not in fields:
        raise ConfigError(f"{where}: a {kind} output needs {required}")
    settings: SinkSettings = _make(where, lambda: cls(**fields))
    return settings


def _split_name(text: str) -> tuple[str | None, str]:
    """'NAME=URL' -> (NAME, URL); a URL's own '=' comes after '://' or ':', never first."""
    head, sep, rest = text.partition("=")
    if sep and NAME_PATTERN.fullmatch(head) and ":" not in head:
        return head, rest
    return None, text


def _command_line_outputs(
    values: Mapping[str, Given], environ: Mapping[str, str], retry: RetryPolicy
) -> list[Placed]:
    def value(name: str) -> Any:
        return values[name].value

    # --start-from is Config.start_from, the default of every output.
    common = {"tables": value("tables"), "format": value("format")}
    result: list[Placed] = []
    webhooks = [(url, values["webhook"].where) for url in value("webhook")]
    if not webhooks and not value("amqp") and not value("kafka") and environ.get("WEBHOOKURL"):
        webhooks = [(environ["WEBHOOKURL"], "WEBHOOKURL")]  # Skor's Docker variable
    headers = tuple(_make(values["header"].where, parse_header, h) for h in value("header"))
    settings: SinkSettings
    for index, (text, where) in enumerate(webhooks):
        name, url = _split_name(text)
        settings = _make(
            where,
            WebhookConfig,
            url=url,
            secret=value("webhook_secret"),
            headers=headers,
            timeout=value("webhook_timeout"),
            concurrency=value("webhook_concurrency"),
            ca_file=value("webhook_ca_file"),
            show_full_url=value("show_full_urls"),
        )
        result.append(
            (
                _output(
                    "webhook",
                    settings,
                    name,
                    identity.legacy_name("webhook", index),
                    common,
                    retry,
                    where,
                ),
                where,
            )
        )
    if value("amqp"):
        name, url = _split_name(value("amqp"))
        settings = _make(
            values["amqp"].where,
            lambda: AmqpConfig(
                url=url,
                exchange=value("amqp_exchange"),
                routing_key=value("amqp_routing_key"),
                mandatory=value("amqp_mandatory"),
            ),
        )
        result.append(
            (
                _output("amqp", settings, name, "amqp", common, retry, values["amqp"].where),
                values["amqp"].where,
            )
        )
    if value("kafka"):
        name, bootstrap = _split_name(value("kafka"))
        options = tuple(
            _make(values["kafka_option"].where, parse_option, o) for o in value("kafka_option")
        )
        settings = _make(
            values["kafka"].where,
            lambda: KafkaConfig(
                bootstrap=bootstrap,
                topic=value("kafka_topic"),
                options=options,
                create_topics=value("kafka_create_topics"),
                partitions=value("kafka_partitions"),
                replication_factor=value("kafka_replication_factor"),
            ),
        )
        result.append(
            (
                _output("kafka", settings, name, "kafka", common, retry, values["kafka"].where),
                values["kafka"].where,
            )
        )
    return result


def _merge(from_file: list[Placed], from_command_line: list[Placed]) -> list[Placed]:
    """The command line's outputs replace the file's with the same name or destination;
    any other two outputs with one name are an error naming both."""
    outputs = list(from_file)
    for output, where in from_command_line:
        key = identity.destination_key(output.kind, output.settings)
        for index, (old, _) in enumerate(outputs[: len(from_file)]):
            same_place = identity.destination_key(old.kind, old.settings) == key
            if old.name == output.name or (same_place and _derived(output)):
                name = output.name if not _derived(output) else old.name
                outputs[index] = (_renamed(output, name), where)
                break
        else:
            outputs.append((output, where))
    seen: dict[str, str] = {}
    for output, where in outputs:
        if output.name in seen:
            raise ConfigError(
                f"{seen[output.name]} and {where} are both the output named "
                f"{output.name!r}; give each a distinct name"
            )
        seen[output.name] = where
    # A legacy name now worn by another output is that output's progress, not to adopt.
    return [(replace(o, legacy_name=None) if o.legacy_name in seen else o, w) for o, w in outputs]


def _derived(output: OutputConfig) -> bool:
    return output.name == identity.derived_name(output.kind, output.settings)


def _renamed(output: OutputConfig, name: str) -> OutputConfig:
    return replace(output, name=name)
