"""`skor-bridge triggers`: generate, install and remove the capture triggers.

Commands only read triggers.json and call `skor_bridge.capture.triggers`.
"""

from __future__ import annotations

import enum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from skor_bridge.cli.errors import expected_errors
from skor_bridge.errors import ConfigError

if TYPE_CHECKING:
    from skor_bridge.config import Mode

triggers_app = typer.Typer(
    name="triggers",
    help="Generate, install or remove the triggers that capture row changes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


class ModeChoice(enum.StrEnum):
    durable = "durable"
    notify = "notify"
    wal = "wal"


def _trigger_mode(mode: ModeChoice) -> Mode:
    return "notify" if mode is ModeChoice.notify else "durable"


ConfigArg = Annotated[
    Path,
    typer.Argument(
        metavar="CONFIG",
        help="Skor's triggers.json: tables, and the columns to capture.",
        show_default=False,
    ),
]
ModeOpt = Annotated[
    ModeChoice,
    typer.Option(
        "--mode",
        envvar="SKOR_MODE",
        case_sensitive=False,
        help="durable: triggers write skor.outbox, nothing is lost. notify: Skor's pg_notify "
        "triggers (rows over 8000 bytes fail the write). wal: no trigger, a logical replication "
        "slot (needs wal_level=logical and a REPLICATION role).",
    ),
]
DsnOpt = Annotated[
    str,
    typer.Option(
        "--dsn",
        envvar="SKOR_DSN",
        show_default=False,
        help="libpq DSN or postgresql:// URI of the database.",
    ),
]


@triggers_app.command()
def generate(config: ConfigArg, mode: ModeOpt = ModeChoice.durable) -> None:
    """Print the installation as SQL, for psql --single-transaction. Needs no database.

    Example: skor-bridge triggers generate triggers.json > capture.sql
    """
    from skor_bridge.capture import triggers

    with expected_errors():
        specs = triggers.load_config(config)
        if mode is ModeChoice.wal:
            raise ConfigError(
                "WAL capture has no SQL script (a slot cannot be created inside "
                "one): use `skor-bridge triggers install CONFIG --mode wal`"
            )
        sql = triggers.generate_sql(specs, _trigger_mode(mode))
    typer.echo(sql, nl=False)


@triggers_app.command()
def install(
    config: ConfigArg,
    dsn: DsnOpt,
    mode: ModeOpt = ModeChoice.durable,
    grant: Annotated[
        list[str] | None,
        typer.Option(
            metavar="ROLE",
            help="No longer needed (writers need no privilege: capture runs as "
            "the installing role); revokes what earlier releases granted this role on "
            "skor.outbox.",
        ),
    ] = None,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Install even a file that lists no table, removing every capture trigger.",
        ),
    ] = False,
) -> None:
    """Install the triggers in one transaction, replacing those installed before, and say
    which tables it added, removed or changed.

    Example: skor-bridge triggers install triggers.json --dsn postgresql://app@db/shop
    """
    from skor_bridge.capture import triggers
    from skor_bridge.capture.wal import install as wal_install

    with expected_errors():
        specs = triggers.load_config(config)
        before = _installed(dsn)
        if not specs and not force:
            raise ConfigError(
                f"{config} lists no table: installing it would remove every "
                f"capture trigger ({len(before)} table(s) captured now); give "
                "--force to do that"
            )
        notes: list[str] = []
        if mode is ModeChoice.wal:
            slot = wal_install.install(dsn, specs)
            triggers.uninstall(dsn)  # the triggers of an earlier install, if any
            typer.echo(f"replication slot {slot} (set max_slot_wal_keep_size)", err=True)
        else:
            notes = triggers.install(dsn, specs, _trigger_mode(mode), grant_to=tuple(grant or ()))
            wal_install.uninstall(dsn)  # the slot of an earlier WAL install, if any
        after = _installed(dsn)
    for spec in specs:
        typer.echo(triggers.describe_spec(spec))
    for line in [*changes(before, after), *notes]:
        typer.echo(line, err=True)
    typer.echo(f"installed {mode.value} capture on {len(specs)} table(s)", err=True)


def _installed(dsn: str) -> dict[str, list[str]]:
    from skor_bridge.capture import inventory
    from skor_bridge.db import connect

    conn = connect(dsn, "triggers install")
    try:
        with conn.cursor() as cur:
            return inventory.summary(inventory.captured(cur))
    finally:
        conn.close()


def changes(before: dict[str, list[str]], after: dict[str, list[str]]) -> list[str]:
    """`added public.orders (insert, update)`, `removed ...`, `changed ...: a -> b`."""
    lines = [f"added {t} ({', '.join(after[t])})" for t in after if t not in before]
    lines += [f"removed {t} ({', '.join(before[t])})" for t in before if t not in after]
    lines += [
        f"changed {t}: {', '.join(before[t])} -> {', '.join(after[t])}"
        for t in after
        if t in before and before[t] != after[t]
    ]
    return lines


@triggers_app.command("list")
def list_(
    dsn: DsnOpt,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON document.")] = False,
) -> None:
    """What is captured: each table's mode, operations and columns as installed, and
    problems (a dropped or renamed column or table, a trigger missing or disabled).

    Example: skor-bridge triggers list --dsn postgresql://app@db/shop
    """
    import json

    from skor_bridge.capture import inventory
    from skor_bridge.db import connect

    with expected_errors():
        conn = connect(dsn, "triggers list")
        try:
            with conn.cursor() as cur:
                entries = inventory.captured(cur)
        finally:
            conn.close()
    if as_json:
        typer.echo(json.dumps({"tables": [e.to_json() for e in entries]}, indent=2))
        return
    if not entries:
        typer.echo(
            "nothing is captured: install triggers with skor-bridge triggers install", err=True
        )
        raise typer.Exit(1)
    from skor_bridge.cli.common import table

    def columns(entry: inventory.Captured) -> str:
        if not entry.columns:
            return "?"
        shown = {op: "*" if cols is None else ",".join(cols) for op, cols in entry.columns.items()}
        if len(set(shown.values())) == 1:
            return next(iter(shown.values()))
        return "; ".join(f"{op}: {cols}" for op, cols in shown.items())

    typer.echo(
        table(
            ["TABLE", "MODE", "OPS", "COLUMNS", "PROBLEMS"],
            [
                [
                    f"{e.schema}.{e.table}",
                    e.mode,
                    ",".join(e.ops) or "-",
                    columns(e),
                    "; ".join(e.problems) or "-",
                ]
                for e in entries
            ],
        )
    )
    if any(e.problems for e in entries):
        raise typer.Exit(1)


@triggers_app.command()
def uninstall(
    dsn: DsnOpt,
    purge: Annotated[
        bool,
        typer.Option(
            "--purge", help="Also drop schema skor: the outbox, the log and dead letters."
        ),
    ] = False,
) -> None:
    """Remove every capture trigger and function, Skor's notify_skor_* ones included, and
    the replication slot and publication of WAL capture.

    Example: skor-bridge triggers uninstall --dsn postgresql://app@db/shop
    """
    from skor_bridge.capture import triggers
    from skor_bridge.capture.wal import install as wal_install
    from skor_bridge.capture.wal.slot import PUBLICATION

    with expected_errors():
        slot = wal_install.uninstall(dsn)
        dropped = triggers.uninstall(dsn, purge=purge)
    if slot:
        typer.echo(f"removed replication slot {slot} and publication {PUBLICATION}")
    typer.echo(f"removed {dropped} trigger function(s)" + (" and schema skor" if purge else ""))


def register(app: typer.Typer) -> None:
    app.add_typer(triggers_app, name="triggers")
