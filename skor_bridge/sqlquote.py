"""SQL text from names we do not control: identifiers, literals, dollar quotes, comments.

The lowest layer of SQL generation: it imports nothing of the project, so the config
model and every script generator (trigger mode, WAL mode, backfill) can use it without
importing each other.
"""

from __future__ import annotations

import re

#: PostgreSQL silently truncates longer names (NAMEDATALEN - 1): config refuses them, and
#: generated names are shortened to fit.
MAX_NAME_BYTES = 63

#: C0 control characters and DEL. PostgreSQL ends a `--` comment at \r as well as \n, so
#: config text holding them could end a comment where our own checks did not see one.
CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f]")


def quote_ident(name: str) -> str:
    """Always-quoted identifier: exact case, any character but NUL."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    """A string literal that reads the same whatever standard_conforming_strings is."""
    body = text.replace("'", "''")
    if "\\" in text:
        return "E'" + body.replace("\\", "\\\\") + "'"
    return "'" + body + "'"


def qualified(schema: str, name: str) -> str:
    """`"schema"."name"`."""
    return f"{quote_ident(schema)}.{quote_ident(name)}"


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
