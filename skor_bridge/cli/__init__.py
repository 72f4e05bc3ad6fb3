"""The `skor-bridge` command. Commands only build a Config and call into the package.

One module per command group; each has `register(app)` and imports its heavy dependencies
(psycopg2, pika, confluent_kafka, the bridge) inside its commands, so that `--help` and
`--version` stay fast.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Annotated, Any

import typer
import typer.core

# typer vendors click; its exceptions are only importable from there.
from typer._click.exceptions import ClickException

from skor_bridge import __version__


def _no_type_placeholders() -> None:
    """typer's help prints a type column (`<bool>` for every flag, `<str>`, `<int range>`)
    that tells a user little: show the metavar, the choices, or the option's name instead
    (`--limit N`-style placeholders come from each option's metavar)."""
    argument_type = typer.core.TyperArgument.display_type_rich

    def option(self: typer.core.TyperOption, ctx: Any) -> str | None:
        if self.is_flag:
            return None
        if self.metavar is not None:
            return self.metavar
        described = getattr(self, "type_descriptor", None)
        if described is not None and described.is_choice and described.choices:
            return "|".join(str(getattr(c, "value", c)) for c in described.choices)
        return (self.name or "value").upper()

    def argument(self: typer.core.TyperArgument, ctx: Any) -> str | None:
        return None if self.metavar else argument_type(self, ctx)

    typer.core.TyperOption.display_type_rich = option  # type: ignore[method-assign]
    typer.core.TyperArgument.display_type_rich = argument  # type: ignore[method-assign,assignment]


_no_type_placeholders()


class _OneLineErrors(typer.core.TyperGroup):
    """A usage error (unknown option, missing or bad value) ends like any other bad input:
    one line on stderr, exit code 2, instead of typer's framed usage box."""

    def main(
        self,
        args: Any = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        windows_expand_args: bool = True,
        **extra: Any,
    ) -> Any:
        try:
            code = super().main(args, prog_name, complete_var, False, windows_expand_args, **extra)
        except ClickException as exc:
            if not standalone_mode:
                raise
            where = getattr(getattr(exc, "ctx", None), "command_path", None)
            hint = f" (see {where} --help)" if where else ""
            typer.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(exc.exit_code)
        except typer.Abort:
            if not standalone_mode:
                raise
            typer.echo("Aborted!", err=True)
            sys.exit(1)
        if not standalone_mode:
            return code
        sys.exit(code if isinstance(code, int) else 0)


app = typer.Typer(
    name="skor-bridge",
    help="Capture PostgreSQL row changes and deliver them to webhooks, RabbitMQ and Kafka.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    cls=_OneLineErrors,
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
COMMAND_MODULES = (
    "run",
    "relay",
    "status",
    "outputs",
    "triggers",
    "events",
    "backfill",
    "demo",
    "bench",
)

for _module in COMMAND_MODULES:
    importlib.import_module(f"{__name__}.{_module}").register(app)


def main() -> None:
    logging.captureWarnings(True)
    app(prog_name="skor-bridge")


if __name__ == "__main__":
    main()
