"""How every command ends on an expected error: one line on stderr, no traceback."""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING

import typer

from skor_bridge.errors import ConfigError, SkorError

if TYPE_CHECKING:
    from collections.abc import Iterator


@contextmanager
def expected_errors() -> Iterator[None]:
    """Exit 2 for bad input (ConfigError), 1 for any other SkorError."""
    try:
        yield
    except SkorError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2 if isinstance(exc, ConfigError) else 1) from None
