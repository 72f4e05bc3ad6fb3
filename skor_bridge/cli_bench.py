"""Placeholder: commands are added by the bench work."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    pass
