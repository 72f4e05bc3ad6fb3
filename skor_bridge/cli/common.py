"""What the operator's commands share: the database options, a connection, plain tables."""

from __future__ import annotations

import json
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer

from skor_bridge.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Iterator, Sequence

    from psycopg2.extensions import connection

#: Longest last-error text shown in a table cell; `--json` gives it whole.
ERROR_WIDTH = 60


DsnOpt = Annotated[
    str | None,
    typer.Option(
        "--dsn",
        envvar="SKOR_DSN",
        show_default=False,
        help="libpq DSN or postgresql:// URI of the database the bridge uses.",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document for scripts.")]


@contextmanager
def database(dsn: str | None, purpose: str) -> Iterator[connection]:
    """A connection for the command; a database error inside becomes one line."""
    import psycopg2

    from skor_bridge.db import describe
    from skor_bridge.errors import DatabaseError
    from skor_bridge.ops import open_database

    if not dsn:
        raise ConfigError("dsn: give --dsn or SKOR_DSN")
    conn = open_database(dsn, purpose)
    try:
        yield conn
    except psycopg2.Error as exc:
        raise DatabaseError(f"{purpose}: {describe(exc)}") from None
    finally:
        conn.close()


def print_json(document: object) -> None:
    typer.echo(json.dumps(document, indent=2, ensure_ascii=False))


def table(
    headers: Sequence[str],
    rows: Sequence[Sequence[object]],
    right: set[str] | frozenset[str] = frozenset(),
) -> str:
    """Columns separated by two spaces; numbers (the `right` columns) right-aligned."""
    cells = [[str(value) for value in row] for row in rows]
    widths = [max([len(h), *(len(row[i]) for row in cells)]) for i, h in enumerate(headers)]

    def line(values: Sequence[str]) -> str:
        parts = [
            value.rjust(width) if header in right else value.ljust(width)
            for value, width, header in zip(values, widths, headers, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), *(line(row) for row in cells)])


def duration(seconds: float) -> str:
    """3.2s, 4m12s, 2h03m, 1d04h."""
    if seconds < 60:
        return f"{seconds:.1f}s" if seconds < 10 else f"{seconds:.0f}s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    if hours < 24:
        return f"{hours}h{minutes:02d}m"
    days, hours = divmod(hours, 24)
    return f"{days}d{hours:02d}h"


def size(count: int) -> str:
    """Bytes in binary units: 512 B, 8.0 kB, 1.2 MB."""
    if count < 1024:
        return f"{count} B"
    value, unit = count / 1024, "kB"
    for bigger in ("MB", "GB"):
        if value < 1024:
            break
        value, unit = value / 1024, bigger
    return f"{value:.1f} {unit}"
