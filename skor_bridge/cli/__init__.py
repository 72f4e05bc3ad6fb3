"""The `skor-bridge` command. Commands only build a Config and call into the package.

One module per command group; each has `register(app)` and imports its heavy dependencies
(psycopg2, pika, confluent_kafka, the bridge) inside its commands, so that `--help` and
`--version` stay fast.
"""

from __future__ import annotations

import importlib
import logging
from typing import Annotated

import typer

from skor_bridge import __version__

app = typer.Typer(
    name="skor-bridge",
    help="Capture PostgreSQL row changes and deliver them to webhooks, RabbitMQ and Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"skor-bridge {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """skor-bridge: Skor's triggers and payloads, delivered durably and in order."""


#: The command groups, in --help order; each module adds its commands through `register(app)`.
COMMAND_MODULES = ("run", "status", "triggers", "events", "demo", "bench")

for _module in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_module}").register(app)


def main() -> None:
    logging.captureWarnings(True)
    app(prog_name="skor-bridge")


if __name__ == "__main__":
    main()
