"""`skor-bridge run`: its options are generated from `skor_bridge.options`, where each is
declared once with its TOML key, SKOR_* variable, default and parser.

Every option reaches the command as the text the user typed: `settings` parses and
validates it, whatever its source, so a bad value is one line naming it as written.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from skor_bridge.cli.errors import expected_errors
from skor_bridge.options import OPTIONS, Option

EXAMPLE = """Example:

\b
  skor-bridge run --dsn postgresql://app@db/shop \\
    --webhook orders=https://hooks.example.com/in --tables 'public.*'
"""


def help_text(option: Option) -> str:
    """The option's help and its default ([ escaped: typer reads rich markup)."""
    if option.shown_default is None:
        return option.help
    return f"{option.help} \\[default: {option.shown_default}]"


def _parameter(option: Option) -> inspect.Parameter:
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


_POSITIONAL = [
    inspect.Parameter(
        "dsn_arg",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=(
            Annotated[
                str | None,
                typer.Argument(
                    metavar="[DSN]",
                    show_default=False,
                    help="Skor's positional form: DSN then URL.",
                ),
            ]
        ),
    ),
    inspect.Parameter(
        "url_arg",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=(Annotated[str | None, typer.Argument(metavar="[URL]", show_default=False)]),
    ),
    inspect.Parameter(
        "config",
        inspect.Parameter.KEYWORD_ONLY,
        default=None,
        annotation=(
            Annotated[
                Path | None,
                typer.Option(
                    "--config",
                    envvar="SKOR_CONFIG",
                    metavar="FILE",
                    show_default=False,
                    help="TOML file describing outputs and settings.",
                ),
            ]
        ),
    ),
]


def run(ctx: typer.Context, **given: Any) -> None:
    import os

    from skor_bridge import logs
    from skor_bridge.bridge import Bridge
    from skor_bridge.settings import build_config

    # Only what the command line itself gave: `settings` reads SKOR_* variables itself, so
    # that it knows (and can name) where each value came from.
    cli = {
        name: value
        for name, value in given.items()
        if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    }
    dsn_arg, url_arg, config = cli.pop("dsn_arg", None), cli.pop("url_arg", None), given["config"]
    if dsn_arg and not cli.get("dsn"):
        cli["dsn"] = dsn_arg
    if url_arg:
        cli["webhook"] = [*(cli.get("webhook") or []), url_arg]
    with expected_errors():
        cfg = build_config(cli, config, os.environ)
        logs.configure(cfg.log_level, cfg.log_format, cfg.show_full_urls)
        code = Bridge(cfg).run()
    raise typer.Exit(code)


run.__doc__ = f"""Deliver every captured change to the configured outputs until stopped.

{EXAMPLE}"""
_parameters = [
    inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
    *_POSITIONAL,
    *(_parameter(o) for o in OPTIONS if o.cli),
]
run.__signature__ = inspect.Signature(_parameters)  # type: ignore[attr-defined]
run.__annotations__ = {p.name: p.annotation for p in _parameters}


def register(app: typer.Typer) -> None:
    app.command(name="run")(run)
