"""The canonical row key: one row, one key, whoever writes it and however they spell it.

The capture triggers compute it (in plpgsql built by `KEY_LOOP`), and other producers of
events (backfill, WAL capture) use `row_key_sql` so that their events of a row land in the
same lane, with the same Kafka key, as the triggers' ones.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from skor_bridge.sqlquote import quote_literal

if TYPE_CHECKING:
    from collections.abc import Sequence


# The row key is the primary key as compact JSON ({"id":42}, {"a":1,"b":"x"}), taken from
# the row's JSON by name. Values whose text depends on the writer's session or spelling
# are made canonical, so one row has one key whoever writes it: timestamptz in UTC,
# numeric without trailing zeros, citext lower-cased (its equality). Each form falls back
# to the plain value when the JSON is not of the expected shape, so a later change of the
# column's type can never make the expression fail. No backslashes: the function body is
# parsed under the writer's standard_conforming_strings.
CANONICAL = {
    "plain": "(%1$s -> %2$L)::text",
    "utc": "CASE WHEN (%1$s ->> %2$L) ~ "
    "'^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}([.][0-9]+)?[+-][0-9]{2}"
    "(:[0-9]{2}){0,2}$' THEN rtrim(to_json((%1$s ->> %2$L)::timestamptz AT TIME ZONE "
    "'UTC')::text, '\"') || '+00:00\"' ELSE (%1$s -> %2$L)::text END",
    "numeric": "CASE WHEN json_typeof(%1$s -> %2$L) = 'number' THEN "
    "trim_scale((%1$s ->> %2$L)::numeric)::text ELSE (%1$s -> %2$L)::text END",
    "lower": "CASE WHEN json_typeof(%1$s -> %2$L) = 'string' THEN "
    "to_json(lower(%1$s ->> %2$L))::text ELSE (%1$s -> %2$L)::text END",
}

KEY_LOOP = f"""\
    FOR col, kind IN
        SELECT a.attname, CASE
            WHEN b.oid = 'pg_catalog.timestamptz'::pg_catalog.regtype THEN 'utc'
            WHEN b.oid = 'pg_catalog.numeric'::pg_catalog.regtype THEN 'numeric'
            WHEN b.typname = 'citext' THEN 'lower'
            ELSE 'plain' END
        FROM pg_catalog.pg_index i
        CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, n)
        JOIN pg_catalog.pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
        JOIN pg_catalog.pg_type t ON t.oid = a.atttypid
        JOIN pg_catalog.pg_type b
          ON b.oid = CASE WHEN t.typtype = 'd' THEN t.typbasetype ELSE t.oid END
        WHERE i.indrelid = target AND i.indisprimary
        ORDER BY k.n
    LOOP
        sep := CASE WHEN new_key IS NULL THEN '{{' ELSE ',' END || to_json(col)::text || ':';
        new_key := concat_ws(' || ', new_key, quote_literal(sep),
            format(CASE kind {
    " ".join(f"WHEN {quote_literal(k)} THEN {quote_literal(v)}" for k, v in CANONICAL.items())
} END, 'n', col));
        old_key := concat_ws(' || ', old_key, quote_literal(sep),
            format(CASE kind {
    " ".join(f"WHEN {quote_literal(k)} THEN {quote_literal(v)}" for k, v in CANONICAL.items())
} END, 'o', col));
        key_changed := concat_ws(' OR ', key_changed,
            format('OLD.%I IS DISTINCT FROM NEW.%I', col, col));
    END LOOP;
    new_key := coalesce(new_key || ' || ''}}''', 'NULL');
    old_key := coalesce(old_key || ' || ''}}''', 'NULL');
"""


def key_kind(type_name: str) -> str:
    """The canonical form a key column of this type gets (a `CANONICAL` key): the type as
    `format_type` or `regtype` writes it, domains resolved by the caller."""
    name = type_name.rsplit(".", 1)[-1].strip('"')
    if name in ("timestamp with time zone", "timestamptz"):
        return "utc"
    if name == "numeric" or name.startswith("numeric("):
        return "numeric"
    return "lower" if name == "citext" else "plain"


def row_key_sql(json_expr: str, key: Sequence[tuple[str, str]]) -> str:
    """SQL for the canonical `row_key` of a row whose JSON `json_expr` evaluates to, with
    `key` the primary key's (column, type) in key order: the same text the capture
    triggers write, for other producers of events (backfill, WAL) to key rows alike."""
    if not key:
        return "NULL"
    parts = []
    for number, (col, type_name) in enumerate(key):
        prefix = ("{" if number == 0 else ",") + json.dumps(col, ensure_ascii=False) + ":"
        template = CANONICAL[key_kind(type_name)]
        value = template.replace("%1$s", f"({json_expr})").replace("%2$L", quote_literal(col))
        parts += [quote_literal(prefix), value]
    return " || ".join([*parts, "'}'"])
