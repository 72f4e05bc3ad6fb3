"""`skor-bridge demo`: see the pipeline work in seconds, on an embedded PostgreSQL."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from skor_bridge.cli.errors import expected_errors

# No option reads an environment variable: a SKOR_DSN left in the shell must never point
# the demo at a real database. Only an explicit --dsn does.


def demo(
    dsn: Annotated[
        str | None,
        typer.Option(
            help="Use this existing database instead of an embedded one. The demo creates table "
            "public.skor_demo_orders there and drops it, and all else it added, on exit.",
            show_default=False,
        ),
    ] = None,
    kafka: Annotated[
        str | None,
        typer.Option(
            metavar="BOOTSTRAP",
            help="Also publish to this Kafka (topic skor-demo.<schema>."
            "<table>, deleted on exit) and read it back.",
            show_default=False,
        ),
    ] = None,
    amqp: Annotated[
        str | None,
        typer.Option(
            metavar="URL",
            help="Also publish to this RabbitMQ (exchange skor-demo, deleted on "
            "exit) and read it back.",
            show_default=False,
        ),
    ] = None,
    events: Annotated[
        int, typer.Option(min=1, help="Changes the demo makes: inserts, updates and deletes.")
    ] = 6,
    exit_when_done: Annotated[
        bool,
        typer.Option(
            "--exit",
            help="Print a summary and exit once every change arrived at every output: "
            "0, or 1 if some did not within --timeout.",
        ),
    ] = False,
    timeout: Annotated[
        float,
        typer.Option(
            min=0.1, help="Seconds to wait, after the last change, for every change to arrive."
        ),
    ] = 30.0,
    verbose: Annotated[
        bool, typer.Option("--verbose", "-v", help="Show the bridge's own log (INFO) on stderr.")
    ] = False,
) -> None:
    """Run the whole pipeline in one process and print every change as it arrives.

    Without --dsn it starts an embedded PostgreSQL in a temporary directory.

    It makes a few changes, then prints a psql command and shows your changes too.

    Ctrl-C stops the bridge and removes everything the demo created.

    Example: skor-bridge demo --exit
    """
    from skor_bridge.tools.demo import DemoOptions, run

    options = DemoOptions(
        dsn=dsn,
        amqp=amqp,
        kafka=kafka,
        events=events,
        exit=exit_when_done,
        timeout=timeout,
        verbose=verbose,
    )
    with expected_errors():
        code = run(options, sys.stdout)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command(name="demo")(demo)
