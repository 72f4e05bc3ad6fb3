"""One validation path: every option from the command line, SKOR_* variables and the TOML file
goes through one parser, with one precedence, and a bad value is one line naming it."""

from __future__ import annotations

import re
import subprocess
import sys
from typing import TYPE_CHECKING

import pytest
from typer.testing import CliRunner

from skor_bridge.cli import app
from skor_bridge.errors import ConfigError
from skor_bridge.options import OPTIONS
from skor_bridge.settings import build_config

if TYPE_CHECKING:
    from pathlib import Path

    from click.testing import Result

DSN = "dbname=shop"
HOOK = "http://127.0.0.1:9/hook"


def config_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "skor.toml"
    path.write_text(text)
    return path


# (option, command line, SKOR_* variable, TOML line, expected Config attribute, value)
PRECEDENCE = [
    ("log_level", "error", "warning", 'log_level = "debug"', "log_level"),
    ("failover_timeout", "3", "4", "failover_timeout = 5", "failover_timeout"),
    ("batch_size", "10", "20", "batch_size = 30", "source.batch_size"),
    ("metrics_port", "9101", "9102", "metrics_port = 9103", "metrics_port"),
    ("start_from", "latest", "earliest", 'start_from = "2h"', "start_from"),
    ("retention", "1d", "2d", 'retention = "3d"', "retention_seconds"),
]
DEFAULTS = {
    "log_level": "INFO",
    "failover_timeout": 10.0,
    "source.batch_size": 2000,
    "metrics_port": None,
    "start_from": "auto",
    "retention_seconds": 7 * 86400.0,
}


def attribute(config: object, dotted: str) -> object:
    for part in dotted.split("."):
        config = getattr(config, part)
    return config


def parsed(option_name: str, raw: str) -> object:
    from skor_bridge.options import BY_NAME

    value = BY_NAME[option_name].parse(raw)
    return value.upper() if option_name == "log_level" else value


@pytest.mark.parametrize(("name", "cli", "env", "toml", "attr"), PRECEDENCE)
def test_command_line_beats_variable_beats_file_beats_default(tmp_path, name, cli, env, toml, attr):
    path = config_file(
        tmp_path, f'dsn = "{DSN}"\n{toml}\n[[outputs]]\ntype = "webhook"\nurl = "{HOOK}"\n'
    )
    variable = "SKOR_" + name.upper()
    everything = build_config({name: cli}, path, {variable: env})
    assert attribute(everything, attr) == parsed(name, cli)
    no_cli = build_config({}, path, {variable: env})
    assert attribute(no_cli, attr) == parsed(name, env)
    file_only = build_config({}, path, {})
    toml_value = toml.split(" = ", 1)[1].strip('"')
    assert attribute(file_only, attr) == parsed(name, toml_value)
    nothing = build_config({"dsn": DSN, "webhook": [HOOK]}, None, {})
    assert attribute(nothing, attr) == DEFAULTS[attr]


def test_an_empty_variable_counts_as_unset():
    config = build_config({"dsn": DSN, "webhook": [HOOK]}, None, {"SKOR_LOG_LEVEL": ""})
    assert config.log_level == "INFO"


# -- bad values: one line naming the option as the user wrote it ------------------------------

BAD_FLAGS = [
    (
        ["--log-level", "verbose"],
        "error: --log-level: expected one of debug, info, warning, error, got 'verbose'",
    ),
    (
        ["--metrics-port", "99999"],
        "error: --metrics-port: expected a whole number from 1 to 65535, got 99999",
    ),
    (["--log-format", "yaml"], "error: --log-format: expected one of text, json, got 'yaml'"),
    (
        ["--failover-timeout", "0"],
        "error: --failover-timeout: must be more than 0.5 seconds, got '0'",
    ),
    (["--start-from", "beginning"], "error: --start-from: expected latest, earliest"),
    (["--batch-size", "lots"], "error: --batch-size: expected a whole number at least 1"),
    (["--retention", "forever"], "error: --retention: expected a duration"),
    (["--mode", "lossy"], "error: --mode: expected one of durable, notify"),
    (["--webhook", "ftp://x/"], "error: --webhook: not an http(s) URL"),
    (["--header", "nocolon"], "error: --header: expected NAME:VALUE"),
    (
        ["--amqp", "amqp://h/", "--amqp-routing-key", "{x}"],
        "error: --amqp-routing-key: unknown field {x}",
    ),
    (["--tables", "a.b.c"], "error: --tables: expected TABLE or SCHEMA.TABLE globs"),
    (["--format", "xml"], "error: --format: expected one of skor, envelope, cloudevents"),
    (["--bogus"], "error: No such option: --bogus"),
]


def run_cli(args: list[str], env: dict[str, str] | None = None) -> Result:
    """`skor-bridge run ARGS` in this process (the same click machinery as the console
    script), with no SKOR_* variable but `env`'s."""
    import os

    unset: dict[str, str | None] = {k: None for k in os.environ if k.startswith("SKOR_")}
    return CliRunner().invoke(app, ["run", *args], env={**unset, **(env or {})})


@pytest.mark.parametrize(("args", "message"), BAD_FLAGS, ids=[a[0] for a, _ in BAD_FLAGS])
def test_a_bad_command_line_value_is_one_line_naming_the_flag_and_exit_2(args, message):
    result = run_cli(["--dsn", DSN, "--webhook", HOOK, *args])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert result.stderr.startswith(message), result.stderr


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SKOR_LOG_LEVEL", "loud", "error: SKOR_LOG_LEVEL: expected one of debug"),
        ("SKOR_METRICS_PORT", "http", "error: SKOR_METRICS_PORT: expected a whole number"),
        ("SKOR_WEBHOOK_TIMEOUT", "-1", "error: SKOR_WEBHOOK_TIMEOUT: expected a duration"),
        ("SKOR_WEBHOOK_TIMEOUT", "0", "error: SKOR_WEBHOOK_TIMEOUT: must be more than 0"),
        (
            "SKOR_AMQP_MANDATORY",
            "maybe",
            "error: Invalid value for '--amqp-mandatory' (env var: 'SKOR_AMQP_MANDATORY')",
        ),
    ],
)
def test_a_bad_variable_is_one_line_naming_the_variable(variable, value, message):
    result = run_cli(["--dsn", DSN, "--webhook", HOOK], {variable: value})
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(message), result.stderr


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('urll = "x"', "skor.toml: unknown key 'urll'; expected one of"),
        (
            'batch_size = "ten"',
            "skor.toml: batch_size: expected a whole number at least 1, got 'ten'",
        ),
        ("metrics_port = true", "skor.toml: metrics_port: expected a whole number"),
        ("log_level = 3", "skor.toml: log_level: expected a string, got 3"),
        ('[retry]\nmax_attempts = "5"\nbackoff = 1', "skor.toml: unknown key 'retry.backoff'"),
        (
            '[[outputs]]\ntype = "webhook"\nurll = "http://h/"',
            "skor.toml: outputs[0]: unknown key 'urll' for a webhook output; expected one of name,",
        ),
        (
            '[[outputs]]\ntype = "webhook"\nurl = "http://h/"\ntimeout = "soon"',
            "skor.toml: outputs[0].timeout: expected a duration",
        ),
        (
            '[[outputs]]\ntype = "webhook"\nurl = "http://h/"\ntables = "a.b.c"',
            "skor.toml: outputs[0].tables: expected TABLE or SCHEMA.TABLE",
        ),
        (
            '[[outputs]]\ntype = "smtp"',
            "skor.toml: outputs[0].type: expected one of webhook, amqp,",
        ),
        ('[[outputs]]\ntype = "kafka"', "skor.toml: outputs[0]: a kafka output needs bootstrap"),
        (
            '[[outputs]]\ntype = "amqp"\nurl = "amqp://h/"\nmax_attempts = 0',
            "skor.toml: outputs[0].max_attempts: expected a whole number at least 1, got 0",
        ),
        ("dsn = [", "skor.toml: not valid TOML"),
    ],
)
def test_a_bad_file_value_is_one_line_naming_the_file_and_key(tmp_path, toml, message):
    path = config_file(tmp_path, toml + "\n")
    with pytest.raises(ConfigError) as caught:
        build_config({"dsn": DSN, "webhook": [HOOK]}, path, {})
    text = str(caught.value)
    assert text.startswith(str(tmp_path / message)) or text.startswith(message), text
    assert "\n" not in text and "unexpected keyword" not in text and "instances of" not in text


def test_a_bad_file_value_through_the_cli_is_one_line_and_exit_2(tmp_path):
    path = config_file(tmp_path, 'urll = "x"\n')
    result = run_cli(["--dsn", DSN, "--webhook", HOOK, "--config", str(path)])
    assert result.exit_code == 2 and result.stderr.count("\n") == 1
    assert f"{path}: unknown key 'urll'" in result.stderr


def test_the_console_script_prints_the_same_one_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "skor_bridge",
            "run",
            "--dsn",
            DSN,
            "--webhook",
            HOOK,
            "--metrics-port",
            "99999",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == (
        "error: --metrics-port: expected a whole number from 1 to 65535, got 99999\n"
    )


def test_every_run_option_has_help_a_placeholder_and_its_default_shown():
    result = subprocess.run(
        [sys.executable, "-m", "skor_bridge", "run", "--help"],
        capture_output=True,
        text=True,
        env={"COLUMNS": "200"},
        check=True,
    )
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "<bool>" not in text and "<str>" not in text
    assert "list[str]" not in text and "Example:" in text
    for option in OPTIONS:
        if option.cli and not option.hidden:
            assert option.flag in text
            if option.shown_default is not None:
                assert f"[default: {option.shown_default}]" in text, option.name


def all_commands() -> list[list[str]]:
    import typer.main

    found: list[list[str]] = []

    def walk(group: object, path: list[str]) -> None:
        for name, command in sorted(getattr(group, "commands", {}).items()):
            if getattr(command, "commands", None):
                walk(command, [*path, name])
            elif not command.hidden:
                found.append([*path, name])

    walk(typer.main.get_command(app), [])
    return found


@pytest.mark.parametrize("command", all_commands(), ids=" ".join)
def test_every_command_help_has_an_example_and_readable_placeholders(command):
    result = CliRunner().invoke(app, [*command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = " ".join(result.stdout.replace("│", " ").split())
    assert "Example:" in text, command
    assert not re.search(r"<(str|int|float|bool|path|list)", text), text
    assert "[default: " in text or command[-1] in (
        "status",
        "list",
        "forget",
        "uninstall",
        "retry",
        "replay",
    ), command


def _unknown_table_is_one_line(dsn: str, command: list[str]) -> None:
    runner = CliRunner()
    for table in ("nosuch", "public.nosuch"):
        result = runner.invoke(app, ["events", *command, "--dsn", dsn, "--table", table])
        assert result.exit_code == 2, result.output
        assert result.stdout == ""
        assert result.stderr == (
            f"error: --table: no table {table!r} in this database or its event log\n"
        )


# Every `events` subcommand that takes --table checks it (retry has no --table).
@pytest.mark.slow
def test_an_unknown_table_to_replay_is_one_line(dsn, capture_table):
    capture_table("CREATE TABLE items (id int PRIMARY KEY)", "items")
    _unknown_table_is_one_line(dsn, ["replay", "--output", "x", "--since", "1h"])


@pytest.mark.slow
def test_an_unknown_table_to_list_is_one_line(dsn, capture_table):
    capture_table("CREATE TABLE items (id int PRIMARY KEY)", "items")
    _unknown_table_is_one_line(dsn, ["list"])
    # A table that exists (here only in the database, with no events yet) is accepted.
    result = CliRunner().invoke(app, ["events", "list", "--dsn", dsn, "--table", "items"])
    assert result.exit_code == 0, result.output
    assert result.stderr == "no events match\n"
