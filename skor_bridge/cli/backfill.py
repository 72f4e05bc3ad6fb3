"""`skor-bridge backfill`: send a captured table's existing rows to the outputs."""

from __future__ import annotations

import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from skor_bridge.cli.common import DsnOpt
from skor_bridge.cli.errors import expected_errors
from skor_bridge.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from skor_bridge.backfill.run import Progress


def register(app: typer.Typer) -> None:
    app.command()(backfill)


def backfill(
    table: Annotated[
        str,
        typer.Option(
            "--table",
            metavar="[SCHEMA.]TABLE",
            show_default=False,
            help="The captured table to send (schema public unless given).",
        ),
    ],
    dsn: DsnOpt = None,
    output: Annotated[
        list[str] | None,
        typer.Option(
            "--output",
            metavar="NAME",
            show_default=False,
            help="Send only to this output; repeatable. \\[default: every output]",
        ),
    ] = None,
    chunk_size: Annotated[
        int, typer.Option("--chunk-size", metavar="N", help="Rows read and sent per transaction.")
    ] = 1000,
) -> None:
    """Send every existing row of a captured table as a READ event, through the log.

    Needs a running bridge, which delivers the rows like any change: in order with the
    row's live changes, with retries and dead letters. Interrupted, it continues where it
    stopped when run again with the same table and outputs.

    Example: skor-bridge backfill --dsn "$DSN" --table public.orders --output orders-hook
    """
    from skor_bridge.backfill.run import Request
    from skor_bridge.backfill.run import backfill as run_backfill
    from skor_bridge.backfill.table import parse_name

    with expected_errors():
        if not dsn:
            raise ConfigError("dsn: give --dsn or SKOR_DSN")
        schema, name = parse_name(table)
        request = Request(dsn, schema, name, tuple(output or ()), chunk_size)
        with _reporter() as report:
            progress = run_backfill(request, report, lambda text: typer.echo(text, err=True))
    typer.echo(
        f"backfill of {progress.table}: {progress.rows_sent} rows sent as READ events"
        f" to {', '.join(progress.outputs) or 'every output'}"
    )


@contextmanager
def _reporter() -> Iterator[Callable[[Progress], None]]:
    """A progress bar on a terminal; elsewhere only a line when resuming."""
    if not sys.stderr.isatty():

        def report_line(progress: Progress) -> None:
            if progress.resumed and progress.rows_sent and not progress.finished:
                typer.echo(
                    f"resuming the backfill of {progress.table} after {progress.rows_sent} rows",
                    err=True,
                )
                progress.resumed = False  # said once

        yield report_line
        return

    from rich.console import Console
    from rich.progress import Progress as Bar

    with Bar(console=Console(stderr=True)) as bar:
        task = bar.add_task("backfill", total=None)

        def report_bar(progress: Progress) -> None:
            bar.update(
                task,
                description=f"backfill {progress.table}",
                completed=progress.rows_sent,
                total=max(progress.rows_total, progress.rows_sent) or None,
            )

        yield report_bar
