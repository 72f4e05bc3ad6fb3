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


ConfigArg = Annotated[Path, typer.Argument(
    metavar="CONFIG", help="Skor's triggers.json: tables, and the columns to capture.",
    show_default=False)]
ModeOpt = Annotated[ModeChoice, typer.Option(
    "--mode", envvar="SKOR_MODE", case_sensitive=False,
    help="durable: triggers write skor.outbox, nothing is lost. notify: Skor's pg_notify "
    "triggers (rows over 8000 bytes fail the write). wal: no trigger, a logical replication "
    "slot (needs wal_level=logical and a REPLICATION role).")]
DsnOpt = Annotated[str, typer.Option(
    "--dsn", envvar="SKOR_DSN", show_default=False,
    help="libpq DSN or postgresql:// URI of the database.")]


@triggers_app.command()
def generate(config: ConfigArg, mode: ModeOpt = ModeChoice.durable) -> None:
    """Print the installation as SQL, for psql --single-transaction. Needs no database."""
    from skor_bridge.capture import triggers

    with expected_errors():
        specs = triggers.load_config(config)
        if mode is ModeChoice.wal:
            raise ConfigError("WAL capture has no SQL script (a slot cannot be created inside "
                              "one): use `skor-bridge triggers install CONFIG --mode wal`")
        sql = triggers.generate_sql(specs, _trigger_mode(mode))
    typer.echo(sql, nl=False)


@triggers_app.command()
def install(
    config: ConfigArg,
    dsn: DsnOpt,
    mode: ModeOpt = ModeChoice.durable,
    grant: Annotated[list[str] | None, typer.Option(
        help="Let this role's writes be captured (USAGE on schema skor, INSERT on "
        "skor.outbox); repeatable. Needed for roles other than the installer.")] = None,
) -> None:
    """Install the triggers in one transaction, replacing those installed before."""
    from skor_bridge.capture import triggers
    from skor_bridge.capture.wal import install as wal_install

    with expected_errors():
        specs = triggers.load_config(config)
        if mode is ModeChoice.wal:
            slot = wal_install.install(dsn, specs)
            triggers.uninstall(dsn)  # the triggers of an earlier install, if any
            typer.echo(f"replication slot {slot} (set max_slot_wal_keep_size)", err=True)
        else:
            triggers.install(dsn, specs, _trigger_mode(mode), grant_to=tuple(grant or ()))
            wal_install.uninstall(dsn)  # the slot of an earlier WAL install, if any
    for spec in specs:
        typer.echo(triggers.describe_spec(spec))
    typer.echo(f"installed {mode.value} capture on {len(specs)} table(s)", err=True)


@triggers_app.command()
def uninstall(
    dsn: DsnOpt,
    purge: Annotated[bool, typer.Option(
        "--purge", help="Also drop schema skor: the outbox, the log and dead letters.")] = False,
) -> None:
    """Remove every capture trigger and function, Skor's notify_skor_* ones included, and
    the replication slot and publication of WAL capture."""
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
