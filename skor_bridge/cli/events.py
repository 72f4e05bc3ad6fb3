"""`skor-bridge status` and `skor-bridge events list|retry|replay`: the operator's view.

Commands only parse options, call `skor_bridge.ops` and print: an aligned table for a
terminal, or one JSON document with `--json` for scripts.
"""

from __future__ import annotations

import enum
import json
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from skor_bridge.cli.errors import expected_errors
from skor_bridge.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence
    from datetime import datetime

    from psycopg2.extensions import connection

    from skor_bridge.ops.events import EventRow
    from skor_bridge.ops.status import Status

events_app = typer.Typer(
    name="events",
    help="List an output's events, retry dead letters, replay delivered events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

#: Longest last-error text shown in a table cell; `--json` gives it whole.
ERROR_WIDTH = 60


class StatusChoice(enum.StrEnum):
    dead = "dead"
    retry = "retry"
    pending = "pending"
    delivered = "delivered"


DsnOpt = Annotated[str | None, typer.Option(
    "--dsn", envvar="SKOR_DSN", show_default=False,
    help="libpq DSN or postgresql:// URI of the database the bridge uses.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]
TableOpt = Annotated[str | None, typer.Option(
    "--table", metavar="[SCHEMA.]TABLE", help="Only events of this table.", show_default=False)]


def register(app: typer.Typer) -> None:
    app.command()(status)
    app.add_typer(events_app, name="events")


@contextmanager
def _database(dsn: str | None, purpose: str) -> Iterator[connection]:
    """A connection for the command; a database error inside becomes one line."""
    import psycopg2

    from skor_bridge.db import describe
    from skor_bridge.errors import DatabaseError
    from skor_bridge.ops import open_database

    if not dsn:
        raise ConfigError("dsn: give --dsn or SKOR_DSN")
    conn = open_database(dsn, purpose)
    try:
        yield conn
    except psycopg2.Error as exc:
        raise DatabaseError(f"{purpose}: {describe(exc)}") from None
    finally:
        conn.close()


def _print_json(document: object) -> None:
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


# -- status ---------------------------------------------------------------------------------


def status(dsn: DsnOpt = None, as_json: JsonOpt = False) -> None:
    """Show each output's backlog, lag and dead letters, the instances, and the log's size."""
    from skor_bridge.ops.status import collect

    with expected_errors(), _database(dsn, "status") as conn:
        snapshot = collect(conn)
    if as_json:
        _print_json(snapshot.to_json())
    else:
        typer.echo(render_status(snapshot))


def render_status(snapshot: Status) -> str:
    outputs = table(
        ["OUTPUT", "KIND", "POSITION", "PENDING", "LAG", "DELIVERED/1M", "DEAD", "LAST ERROR"],
        [[o.name, o.kind, o.position,
          f"{o.pending} ({o.parked} parked)" if o.parked else o.pending,
          duration(o.lag_seconds),
          o.delivered_last_minute,
          f"{o.dead_letters} (+{o.retrying} retrying)" if o.retrying else o.dead_letters,
          _last_error(o.last_error, o.last_error_at, snapshot.taken_at)]
         for o in snapshot.outputs],
        right={"POSITION", "PENDING", "LAG", "DELIVERED/1M", "DEAD"},
    ) if snapshot.outputs else "no outputs yet: no bridge has run against this database"
    instances = table(
        ["INSTANCE", "ROLE", "HEARTBEAT", "STARTED"],
        [[i.instance, i.role, f"{duration(i.heartbeat_age)} ago",
          i.started.astimezone().strftime("%Y-%m-%d %H:%M:%S")] for i in snapshot.instances],
    ) if snapshot.instances else "no instances: no bridge is running"
    log = snapshot.log
    log_line = (
        f"event log: head {log.head}, {log.rows} retained event(s) in {log.partitions} "
        f"partition(s), {size(log.log_bytes)}; outbox: {log.outbox_rows} row(s), "
        f"{size(log.outbox_bytes)}"
    )
    return f"{outputs}\n\n{instances}\n\n{log_line}"


def _last_error(error: str | None, at: datetime | None, now: datetime) -> str:
    if not error:
        return "-"
    text = error if len(error) <= ERROR_WIDTH else error[: ERROR_WIDTH - 1] + "…"
    if at is None:
        return text
    return f"{text} ({duration((now - at).total_seconds())} ago)"


# -- events -----------------------------------------------------------------------------------


@events_app.command("list")
def list_events(
    dsn: DsnOpt = None,
    output: Annotated[str | None, typer.Option(
        help="Only this output's events. [default: every output]", show_default=False)] = None,
    status_: Annotated[StatusChoice | None, typer.Option(
        "--status", case_sensitive=False, show_default=False,
        help="dead, retry, pending or delivered. [default: all]")] = None,
    table_: TableOpt = None,
    since: Annotated[str | None, typer.Option(
        metavar="TIME", show_default=False,
        help="Captured at or after TIME: ISO-8601 or a time ago (10m, 2h, 7d).")] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show the newest N events.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List events with their id, position, table, operation, capture time, attempts and last
    error, oldest first."""
    from skor_bridge.ops import events

    with expected_errors():
        flt = events.EventFilter(
            output=output, status=status_.value if status_ else None,
            table=events.parse_table(table_) if table_ else None,
            since=events.parse_time(since) if since else None, limit=limit,
        )
        with _database(dsn, "events list") as conn:
            rows = events.list_events(conn, flt)
    if as_json:
        _print_json({"events": [row.to_json() for row in rows]})
    elif rows:
        typer.echo(render_events(rows))
    else:
        typer.echo("no events match", err=True)


def render_events(rows: Sequence[EventRow]) -> str:
    def cell(text: str | None) -> str:
        if not text:
            return ""
        return text if len(text) <= ERROR_WIDTH else text[: ERROR_WIDTH - 1] + "…"

    return table(
        ["ID", "OUTPUT", "STATUS", "POSITION", "TABLE", "OP", "CAPTURED AT", "ATTEMPTS",
         "LAST ERROR"],
        [[r.event_id, r.output, r.status, "" if r.position is None else r.position,
          f"{r.schema}.{r.table}", r.op,
          r.captured_at.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
          "" if r.attempts is None else r.attempts, cell(r.last_error)] for r in rows],
        right={"POSITION", "ATTEMPTS"},
    )


@events_app.command()
def retry(
    dsn: DsnOpt = None,
    output: Annotated[str | None, typer.Option(
        help="Only this output's dead letters. [default: every output]",
        show_default=False)] = None,
    ids: Annotated[list[str] | None, typer.Option(
        "--id", metavar="ID", show_default=False,
        help="Event id of a dead letter; repeat for several.")] = None,
    all_dead: Annotated[bool, typer.Option(
        "--all-dead", help="Every dead letter (of --output, if given).")] = False,
) -> None:
    """Deliver dead letters again with their original event ids; a running bridge picks them
    up within a second."""
    from skor_bridge.ops import events

    with expected_errors():
        if bool(ids) == all_dead:
            raise ConfigError("retry: give either --id ID (repeatable) or --all-dead")
        chosen = events.parse_ids(ids) if ids else None
        with _database(dsn, "events retry") as conn:
            count = events.retry_dead(conn, output, chosen)
    typer.echo(f"{count} dead letter(s) queued for retry")
    if chosen is not None and count < len(set(chosen)):
        typer.echo(f"{len(set(chosen)) - count} id(s) skipped: not dead letters"
                   f"{' of ' + output if output else ''} (unknown, or already queued)", err=True)


@events_app.command()
def replay(
    output: Annotated[str, typer.Option(help="The output to deliver to again.",
                                        show_default=False)],
    since: Annotated[str, typer.Option(
        metavar="TIME", show_default=False,
        help="Captured at or after TIME: ISO-8601 or a time ago (10m, 2h, 7d).")],
    dsn: DsnOpt = None,
    until: Annotated[str | None, typer.Option(
        metavar="TIME", show_default=False, help="Captured before TIME. [default: now]")] = None,
    table_: TableOpt = None,
) -> None:
    """Deliver already-delivered events again, in their original order and with their
    original event ids (while they are still within the log's retention)."""
    from skor_bridge.ops import events

    with expected_errors():
        flt = events.EventFilter(
            output=output, table=events.parse_table(table_) if table_ else None,
            since=events.parse_time(since, "since"),
            until=events.parse_time(until, "until") if until else None,
        )
        with _database(dsn, "events replay") as conn, _progress() as progress:
            count = events.replay(conn, output, flt, progress)
    typer.echo(f"{count} event(s) queued for replay to {output}")


@contextmanager
def _progress() -> Iterator[Any]:
    """A progress bar in a terminal; nothing when output is piped or captured."""
    if not sys.stdout.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("queueing", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  transient=True) as bar:
        task = bar.add_task("replay", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update


# -- formatting -----------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[object]],
          right: set[str] | frozenset[str] = frozenset()) -> str:
    """Columns separated by two spaces; numbers (the `right` columns) right-aligned."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [value.rjust(width) if header in right else value.ljust(width)
                 for value, width, header in zip(values, widths, headers, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def duration(seconds: float) -> str:
    """3.2s, 4m12s, 2h03m, 1d04h."""
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def size(count: int) -> str:
    """Bytes in binary units: 512 B, 8.0 kB, 1.2 MB."""
    if count < 1024:
        return f"{count} B"
    value, unit = count / 1024, "kB"
    for bigger in ("MB", "GB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"
