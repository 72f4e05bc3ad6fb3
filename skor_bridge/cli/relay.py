"""`skor-bridge relay`: a consumer-group worker delivering the bridge's topics to webhooks.

Its options are declared once: the relay's own in `skor_bridge.relay.config`, the rest are
`run`'s (`skor_bridge.options`), turned into typer parameters the same way.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any

import typer

from skor_bridge.cli.errors import expected_errors
from skor_bridge.cli.run import _parameter
from skor_bridge.relay.config import relay_options

EXAMPLE = """Example:

\b
  skor-bridge relay --kafka kafka:9092 --topic '^skor\\..*' --group billing \\
    --webhook https://billing.example.com/hooks --dead-letter-topic dead.billing
"""


def relay(ctx: typer.Context, **given: Any) -> None:
    import os

    from skor_bridge import logs
    from skor_bridge.relay.config import build_relay_config
    from skor_bridge.relay.service import Relay

    # Only what the command line gave: SKOR_* variables are read where the config is built.
    cli = {
        name: value
        for name, value in given.items()
        if getattr(ctx.get_parameter_source(name), "name", "") == "COMMANDLINE"
    }
    cli.pop("config", None)
    with expected_errors():
        cfg = build_relay_config(cli, given["config"], os.environ)
        logs.configure(cfg.log_level, cfg.log_format, cfg.show_full_urls)
        code = Relay(cfg).run()
    raise typer.Exit(code)


relay.__doc__ = f"""Deliver the Kafka records `run --kafka` writes to webhooks, as one worker
of a consumer group; run as many as there are partitions to share. Offsets are committed
only past delivered records.

{EXAMPLE}"""
_parameters = [
    inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=typer.Context),
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
                    help="TOML file: webhook outputs, retry settings and a relay table.",
                ),
            ]
        ),
    ),
    *(_parameter(o) for o in relay_options() if o.cli),
]
relay.__signature__ = inspect.Signature(_parameters)  # type: ignore[attr-defined]
relay.__annotations__ = {p.name: p.annotation for p in _parameters}


def register(app: typer.Typer) -> None:
    app.command(name="relay")(relay)
