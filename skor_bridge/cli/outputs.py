"""`skor-bridge outputs list|forget`: the outputs this database knows, and dropping one."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from skor_bridge.cli.common import DsnOpt, JsonOpt, database, print_json, table
from skor_bridge.cli.errors import expected_errors

if TYPE_CHECKING:
    from collections.abc import Sequence

    from skor_bridge.ops.outputs import OutputRow

outputs_app = typer.Typer(
    name="outputs",
    help="List the outputs this database knows; forget one that is gone for good.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def register(app: typer.Typer) -> None:
    app.add_typer(outputs_app, name="outputs")


@outputs_app.command("list")
def list_(dsn: DsnOpt = None, as_json: JsonOpt = False) -> None:
    """Each output's name, type, destination, position, pending events and the instance
    that last ran it; `no` under SERVED: no running instance delivers to it.

    Example: skor-bridge outputs list --dsn postgresql://app@db/shop
    """
    from skor_bridge.ops.outputs import list_outputs

    with expected_errors(), database(dsn, "outputs list") as conn:
        rows = list_outputs(conn)
    if as_json:
        print_json({"outputs": [row.to_json() for row in rows]})
    elif rows:
        typer.echo(render(rows))
    else:
        typer.echo("no outputs yet: no bridge has run against this database", err=True)


def render(rows: Sequence[OutputRow]) -> str:
    return table(
        ["OUTPUT", "TYPE", "DESTINATION", "POSITION", "PENDING", "SERVED", "LAST SEEN BY"],
        [
            [
                r.name,
                r.kind,
                r.destination or "?",
                r.position,
                r.pending,
                "yes" if r.served else "no",
                f"{r.last_seen_by} ({r.last_seen_at.astimezone().strftime('%Y-%m-%d %H:%M')})"
                if r.last_seen_by and r.last_seen_at
                else "-",
            ]
            for r in rows
        ],
        right={"POSITION", "PENDING"},
    )


@outputs_app.command()
def forget(
    name: Annotated[
        str, typer.Argument(metavar="NAME", help="The output to forget.", show_default=False)
    ],
    dsn: DsnOpt = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Drop an output's progress, dead letters and parked events, so it no longer holds
    back the log's retention. Refused while a running bridge serves it; if it runs again
    later it starts as a new output.

    Example: skor-bridge outputs forget webhook-old.example.com-3f9a1c20 --dsn "$DSN" --yes
    """
    from skor_bridge.ops.outputs import forget as forget_output

    if not yes and not typer.confirm(
        f"Forget output {name!r}: its progress, dead letters and parked events?", err=True
    ):
        typer.echo("nothing forgotten", err=True)
        raise typer.Exit(1)
    with expected_errors(), database(dsn, "outputs forget") as conn:
        removed = forget_output(conn, name)
    dead = removed.get("skor.dead_letters", 0)
    parked = removed.get("skor.redeliveries", 0)
    typer.echo(
        f"forgot output {name}: {dead} dead letter(s) and {parked} parked or queued "
        "event(s) dropped"
    )
