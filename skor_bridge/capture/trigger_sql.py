"""SQL text from names we do not control: quoting, generated names, shared fragments.

Table, schema and column names come from triggers.json, so they reach SQL only through
`quote_ident` and `quote_literal`, never pasted raw. Both the config model
(`TableSpec.qualified`) and the script generator use these, which is why they sit below
both: this module imports neither at runtime.
"""

from __future__ import annotations

import hashlib
import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from skor_bridge.capture.trigger_config import Op, TableSpec

#: PostgreSQL silently truncates longer names (NAMEDATALEN - 1): config refuses them, and
#: generated names are shortened to fit.
MAX_NAME_BYTES = 63


def quote_ident(name: str) -> str:
    """Always-quoted identifier: exact case, any character but NUL."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A string literal that reads the same whatever standard_conforming_strings is."""
    body = text.replace("'", "''")
    if "\\" in text:
        return "E'" + body.replace("\\", "\\\\") + "'"
    return "'" + body + "'"


def dollar_quote(body: str, tag: str = "skor") -> str:
    """`body` dollar-quoted with a tag that does not occur in it ($skor$, $skor1$, ...)."""
    number = 0
    while True:
        delimiter = f"${tag}{number or ''}$"
        # The string ends at the first delimiter, which must be the one we append.
        if (body + delimiter).find(delimiter) == len(body):
            return f"{delimiter}\n{body}\n{delimiter}"
        number += 1


def sql_comment(text: str) -> str:
    """`text` made safe for an SQL `--` comment: a line break would end the comment."""
    return re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]", lambda m: f"\\x{ord(m[0]):02x}", text)


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8")).hexdigest()[:8]


def capture_function_name(schema: str, table: str) -> str:
    """Durable function name: readable slug plus a hash of the exact names, <= 63 bytes."""
    slug = re.sub(r"[^a-z0-9_]", "_", f"{schema}_{table}".lower())
    return f"capture_{slug[:46]}_{_short_hash(schema, table)}"


def notify_name(schema: str, table: str, op: Op) -> str:
    """Skor's function and trigger name, `notify_skor_<table>_<op>`, shortened past 63 bytes."""
    name = f"notify_skor_{table}_{op}"
    if len(name.encode("utf-8")) <= MAX_NAME_BYTES:
        return name
    suffix = f"_{_short_hash(schema, table)}_{op}"
    room = MAX_NAME_BYTES - len("notify_skor_") - len(suffix)
    prefix = table.encode("utf-8")[:room].decode("utf-8", "ignore")
    return f"notify_skor_{prefix}{suffix}"


def data_expr(record: str, columns: tuple[str, ...] | None) -> str:
    """Skor's data expression with quoted names: the row, or only `columns` of it."""
    if columns is None:
        return f"row_to_json({record})"
    # The alias must not equal a selected column: PostgreSQL would pick the column.
    alias, number = "r", 0
    while alias in columns:
        number += 1
        alias = f"r{number}"
    picked = ", ".join(f"{record}.{quote_ident(col)}" for col in columns)
    return f"row_to_json((SELECT {alias} FROM (SELECT {picked}) AS {alias}))"


def row_record(op: Op) -> str:
    """The record a trigger for `op` captures: a DELETE has only OLD."""
    return "OLD" if op == "delete" else "NEW"


def when_clause(spec: TableSpec, op: Op) -> str:
    """The trigger's WHEN clause: changed `update_columns` and the user's `when`, if any."""
    conditions = []
    if op == "update" and spec.update_columns:
        changed = " OR ".join(
            f"OLD.{quote_ident(col)} IS DISTINCT FROM NEW.{quote_ident(col)}"
            for col in spec.update_columns
        )
        conditions.append(f"({changed})")
    if spec.when is not None:
        # Own lines, so that a trailing -- comment in the condition cannot hide our ")".
        conditions.append(f"(\n    {spec.when}\n)")
    return f"\n    WHEN ({' AND '.join(conditions)})" if conditions else ""
