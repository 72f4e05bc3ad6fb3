"""`skor-bridge events list|retry|replay`: an output's events, dead letters and replays.

Commands only parse options, call `skor_bridge.ops` and print: an aligned table for a
terminal, or one JSON document with `--json` for scripts.
"""

from __future__ import annotations

import enum
import sys
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated, Any

import typer

from skor_bridge.cli.common import ERROR_WIDTH, DsnOpt, JsonOpt, database, print_json, table
from skor_bridge.cli.errors import expected_errors
from skor_bridge.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from psycopg2.extensions import connection

    from skor_bridge.ops.events import EventRow

events_app = typer.Typer(
    name="events",
    help="List an output's events, retry dead letters, replay delivered events.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class StatusChoice(enum.StrEnum):
    dead = "dead"
    retry = "retry"
    pending = "pending"
    delivered = "delivered"


TableOpt = Annotated[
    str | None,
    typer.Option(
        "--table", metavar="[SCHEMA.]TABLE", help="Only events of this table.", show_default=False
    ),
]


def register(app: typer.Typer) -> None:
    app.add_typer(events_app, name="events")


# -- events -----------------------------------------------------------------------------------


@events_app.command("list")
def list_events(
    dsn: DsnOpt = None,
    output: Annotated[
        str | None,
        typer.Option(
            help="Only this output's events. \\[default: every output]", show_default=False
        ),
    ] = None,
    status_: Annotated[
        StatusChoice | None,
        typer.Option(
            "--status",
            case_sensitive=False,
            show_default=False,
            help="dead, retry, pending or delivered. \\[default: all]",
        ),
    ] = None,
    table_: TableOpt = None,
    since: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            show_default=False,
            help="Captured at or after TIME: ISO-8601 or a time ago (10m, 2h, 7d).",
        ),
    ] = None,
    limit: Annotated[int, typer.Option(min=1, help="Show the newest N events.")] = 100,
    as_json: JsonOpt = False,
) -> None:
    """List events with their id, position, table, operation, capture time, attempts and last
    error, oldest first.

    Example: skor-bridge events list --dsn "$DSN" --status dead --since 2h
    """
    from skor_bridge.ops import events

    with expected_errors():
        flt = events.EventFilter(
            output=output,
            status=status_.value if status_ else None,
            table=events.parse_table(table_) if table_ else None,
            since=events.parse_time(since) if since else None,
            limit=limit,
        )
        with database(dsn, "events list") as conn:
            check_table(conn, flt.table)
            rows = events.list_events(conn, flt)
    if as_json:
        print_json({"events": [row.to_json() for row in rows]})
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
        [
            "ID",
            "OUTPUT",
            "STATUS",
            "POSITION",
            "TABLE",
            "OP",
            "CAPTURED AT",
            "ATTEMPTS",
            "LAST ERROR",
        ],
        [
            [
                r.event_id,
                r.output,
                r.status,
                "" if r.position is None else r.position,
                f"{r.schema}.{r.table}",
                r.op,
                r.captured_at.astimezone().strftime("%Y-%m-%d %H:%M:%S.%f")[:-3],
                "" if r.attempts is None else r.attempts,
                cell(r.last_error),
            ]
            for r in rows
        ],
        right={"POSITION", "ATTEMPTS"},
    )


@events_app.command()
def retry(
    dsn: DsnOpt = None,
    output: Annotated[
        str | None,
        typer.Option(
            help="Only this output's dead letters. \\[default: every output]", show_default=False
        ),
    ] = None,
    ids: Annotated[
        list[str] | None,
        typer.Option(
            "--id",
            metavar="ID",
            show_default=False,
            help="Event id of a dead letter; repeat for several.",
        ),
    ] = None,
    all_dead: Annotated[
        bool, typer.Option("--all-dead", help="Every dead letter (of --output, if given).")
    ] = False,
    include_superseded: Annotated[
        bool,
        typer.Option(
            "--include-superseded",
            help="Also dead letters whose row has a newer delivered "
            "event (skipped by default: sending them would leave receivers with an older "
            "version).",
        ),
    ] = False,
) -> None:
    """Deliver dead letters again with their original event ids; a running bridge picks them
    up within a second.

    Example: skor-bridge events retry --dsn "$DSN" --output orders-hook --all-dead
    """
    from skor_bridge.ops import events

    with expected_errors():
        if bool(ids) == all_dead:
            raise ConfigError("retry: give either --id ID (repeatable) or --all-dead")
        chosen = events.parse_ids(ids) if ids else None
        with database(dsn, "events retry") as conn:
            count, superseded = events.retry_dead(conn, output, chosen, include_superseded)
    typer.echo(f"{count} dead letter(s) queued for retry")
    if superseded:
        typer.echo(
            f"{superseded} dead letter(s) skipped: their row has a newer delivered event "
            "(--include-superseded retries them too)",
            err=True,
        )
    if chosen is not None and count + superseded < len(set(chosen)):
        typer.echo(
            f"{len(set(chosen)) - count - superseded} id(s) skipped: not dead letters"
            f"{' of ' + output if output else ''} (unknown, or already queued)",
            err=True,
        )


@events_app.command()
def replay(
    output: Annotated[
        str, typer.Option(help="The output to deliver to again.", show_default=False)
    ],
    since: Annotated[
        str,
        typer.Option(
            metavar="TIME",
            show_default=False,
            help="Captured at or after TIME: ISO-8601 or a time ago (10m, 2h, 7d).",
        ),
    ],
    dsn: DsnOpt = None,
    until: Annotated[
        str | None,
        typer.Option(
            metavar="TIME", show_default=False, help="Captured before TIME. \\[default: now]"
        ),
    ] = None,
    table_: TableOpt = None,
) -> None:
    """Deliver already-delivered events again, in their original order and with their
    original event ids (while they are still within the log's retention).

    Example: skor-bridge events replay --dsn "$DSN" --output orders-hook --since 2h --table orders
    """
    from skor_bridge.ops import events

    with expected_errors():
        flt = events.EventFilter(
            output=output,
            table=events.parse_table(table_) if table_ else None,
            since=events.parse_time(since, "since"),
            until=events.parse_time(until, "until") if until else None,
        )
        with database(dsn, "events replay") as conn, _progress() as progress:
            check_table(conn, flt.table)
            count = events.replay(conn, output, flt, progress)
    typer.echo(f"{count} event(s) queued for replay to {output}")


_TABLE_KNOWN = """
SELECT EXISTS (SELECT FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE c.relname = %(table)s AND c.relkind IN ('r', 'p')
                 AND (%(schema)s::text IS NULL OR n.nspname = %(schema)s))
    OR EXISTS (SELECT FROM skor.log WHERE table_name = %(table)s
                 AND (%(schema)s::text IS NULL OR schema_name = %(schema)s))
    OR EXISTS (SELECT FROM skor.dead_letters WHERE table_name = %(table)s
                 AND (%(schema)s::text IS NULL OR schema_name = %(schema)s))
    OR EXISTS (SELECT FROM skor.redeliveries WHERE table_name = %(table)s
                 AND (%(schema)s::text IS NULL OR schema_name = %(schema)s))
"""


def check_table(conn: connection, table: tuple[str | None, str] | None) -> None:
    """--table must name a table of the database or of the event log (dead letters and
    parked events included, which outlive retention): a typo would otherwise match nothing,
    silently. Every `events` command taking --table calls this."""
    if table is None:
        return
    schema, name = table
    with conn.cursor() as cur:
        cur.execute(_TABLE_KNOWN, {"schema": schema, "table": name})
        row = cur.fetchone()
    if not row or not row[0]:
        shown = f"{schema}.{name}" if schema else name
        raise ConfigError(f"--table: no table {shown!r} in this database or its event log")


@contextmanager
def _progress() -> Iterator[Any]:
    """A progress bar in a terminal; nothing when output is piped or captured."""
    if not sys.stdout.isatty():
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress(
        "queueing", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    ) as bar:
        task = bar.add_task("replay", total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
