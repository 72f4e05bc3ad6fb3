"""The CLI package's shape: one way of registering commands, and a fast --help/--version."""

from __future__ import annotations

import subprocess
import sys

import typer.main

from skor_bridge.cli import COMMAND_MODULES, app

#: Imported only inside commands: loading them for `--help` costs a visible fraction of a second.
HEAVY = (
    "psycopg2",
    "pika",
    "confluent_kafka",
    "prometheus_client",
    "skor_bridge.bridge",
    "skor_bridge.dispatch",
    "skor_bridge.sinks",
)


def test_help_and_version_import_no_driver_or_pipeline_module():
    code = (
        "import sys; from skor_bridge.cli import app; "
        f"print(sorted(m for m in sys.modules if m.startswith({HEAVY!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"


def test_every_command_module_registers_at_least_one_command():
    import importlib

    for name in COMMAND_MODULES:
        probe = typer.Typer()
        importlib.import_module(f"skor_bridge.cli.{name}").register(probe)
        group = typer.main.get_command(probe)
        assert getattr(group, "commands", None) or group.name, name


def test_the_console_script_entry_point_is_the_package_main():
    import tomllib
    from pathlib import Path

    project = tomllib.loads(Path(__file__).parents[1].joinpath("pyproject.toml").read_text())
    assert project["project"]["scripts"]["skor-bridge"] == "skor_bridge.cli:main"
    names = set(typer.main.get_command(app).commands)  # type: ignore[attr-defined]
    assert {"run", "status", "triggers", "events", "demo", "bench"} <= names
