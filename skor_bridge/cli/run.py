"""`skor-bridge run`: its options are generated from `skor_bridge.options`, where each is
declared once with its TOML key, SKOR_* variable, default and parser.

Every option reaches the command as the text the user typed: `settings` parses and
validates it, whatever its source, so a bad value is one line naming it as written.
"""

from __future__ import annotations

import inspect
from typing import Annotated, Any

import typer

from skor_bridge.cli.declared import config_parameter, option_parameter, sign, typed_on_command_line
from skor_bridge.cli.errors import expected_errors
from skor_bridge.options import OPTIONS

EXAMPLE = """Example:

\b
  skor-bridge run --dsn postgresql://app@db/shop \\
    --webhook orders=https://hooks.example.com/in --tables 'public.*'
"""


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
    config_parameter("TOML file describing outputs and settings."),
]


def run(ctx: typer.Context, **given: Any) -> None:
    import os

    from skor_bridge import logs
    from skor_bridge.bridge import Bridge
    from skor_bridge.settings import build_config

    # Only what the command line itself gave: `settings` reads SKOR_* variables itself, so
    # that it knows (and can name) where each value came from.
    cli = typed_on_command_line(ctx, given)
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
sign(run, [*_POSITIONAL, *(option_parameter(o) for o in OPTIONS if o.cli)])


def register(app: typer.Typer) -> None:
    app.command(name="run")(run)
