"""Commands whose options are generated from declarations (`skor_bridge.options`,
`skor_bridge.relay.config`): each option's typer parameter, the `--config` file option,
and what the command line itself gave.

A generated command gets `**given` and a signature built here; only values typed on the
command line are passed on, because `settings` reads SKOR_* variables and the file itself,
so that it knows (and can name) where each value came from.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from skor_bridge.options import Option


def help_text(option: Option) -> str:
    """The option's help and its default ([ escaped: typer reads rich markup)."""
    if option.shown_default is None:
        return option.help
    return f"{option.help} \\[default: {option.shown_default}]"


def option_parameter(option: Option) -> inspect.Parameter:
    common: dict[str, Any] = {
        "envvar": option.env,
        "help": help_text(option),
        "show_default": False,
        "rich_help_panel": option.panel,
        "hidden": option.hidden,
    }
    annotation: Any
    if option.style in ("switch", "flag"):
        flags = f"{option.flag}/--no-{option.flag[2:]}" if option.style == "switch" else option.flag
        annotation = Annotated[bool | None, typer.Option(flags, metavar="", **common)]
    elif option.style == "multi":
        annotation = Annotated[
            list[str] | None, typer.Option(option.flag, metavar=option.metavar, **common)
        ]
    else:
        annotation = Annotated[
            str | None, typer.Option(option.flag, metavar=option.metavar, **common)
        ]
    return inspect.Parameter(
        option.name, inspect.Parameter.KEYWORD_ONLY, default=None, annotation=annotation
    )


def config_parameter(help_: str) -> inspect.Parameter:
    """`--config FILE` (also SKOR_CONFIG)."""
    option = typer.Option(
        "--config", envvar="SKOR_CONFIG", metavar="FILE", show_default=False, help=help_
    )
    return inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=Annotated[Path | None, option],
    )


def sign(command: Any, parameters: list[inspect.Parameter]) -> None:
    """Give `command(ctx, **given)` these parameters after its typer context."""
    everything = [
        inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
        *parameters,
    ]
    command.__signature__ = inspect.Signature(everything)
    command.__annotations__ = {p.name: p.annotation for p in everything}


def typed_on_command_line(ctx: typer.Context, given: dict[str, Any]) -> dict[str, Any]:
    return {
        name: value
        for name, value in given.items()
        if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    }
