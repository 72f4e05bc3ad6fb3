"""`skor-bridge relay`: a consumer-group worker delivering the bridge's topics to webhooks.

Its options are declared once: the relay's own in `skor_bridge.relay.config`, the rest are
`run`'s (`skor_bridge.options`), turned into typer parameters the same way.
"""

from __future__ import annotations

from typing import Any

import typer

from skor_bridge.cli.declared import config_parameter, option_parameter, sign, typed_on_command_line
from skor_bridge.cli.errors import expected_errors
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
    cli = typed_on_command_line(ctx, given)
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
sign(
    relay,
    [
        config_parameter("TOML file: webhook outputs, retry settings and a relay table."),
        *(option_parameter(o) for o in relay_options() if o.cli),
    ],
)


def register(app: typer.Typer) -> None:
    app.command(name="relay")(relay)
