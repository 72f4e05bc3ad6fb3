"""Numbered migrations of the bridge's own schema, `skor`, in the user's database.

Each module `vNNN_slug.py` here holds one step: a docstring saying why, and `SQL`, applied
in one transaction with the row that records it in `skor.migrations`. Steps are applied in
numeric order, each at most once, under an advisory lock, so two instances starting at once
or an install racing a start-up cannot apply one twice.

Rules for a new step (a database from any earlier release must keep working):
- never edit a step that has shipped; add the next number instead;
- write it so that it applies to a database at any earlier state (`IF NOT EXISTS`,
  `ADD COLUMN IF NOT EXISTS`), because `triggers generate` concatenates every step into a
  psql script that may run against a database that already has some of them.

The applied set is recorded, not only the highest number, so steps developed in parallel
that land out of numeric order are still each applied once. A database holding a step this
code does not know was upgraded by a newer release: we refuse to run against it rather
than write to a shape we do not understand.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING

from skor_bridge.errors import DatabaseError

if TYPE_CHECKING:
    from psycopg2.extensions import cursor

#: Serialises schema changes when several instances start at once ("skor").
DDL_LOCK = 0x736B6F72

_NAME = re.compile(r"^v(\d{3})_([a-z0-9_]+)$")

_BOOKKEEPING = """
CREATE SCHEMA IF NOT EXISTS skor;
CREATE TABLE IF NOT EXISTS skor.migrations (
    version    integer PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


class SchemaTooNew(DatabaseError):
    """The database was migrated by a newer release than this one."""


class SchemaMissing(DatabaseError):
    """The skor schema does not exist and the caller may not create it."""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def known() -> tuple[Migration, ...]:
    """Every step shipped with this code, in order."""
    steps = []
    for info in pkgutil.iter_modules(__path__):
        match = _NAME.match(info.name)
        if match is None:
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        steps.append(Migration(int(match[1]), match[2], module.SQL))
    steps.sort(key=lambda m: m.version)
    versions = [m.version for m in steps]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migrations share a number: {versions}")
    return tuple(steps)


def latest() -> int:
    return known()[-1].version


def _applied(cur: cursor) -> set[int] | None:
    """Versions recorded in the database; None when there is no skor schema at all."""
    cur.execute(
        "SELECT to_regclass('skor.migrations') IS NOT NULL, to_regnamespace('skor') IS NOT NULL"
    )
    has_table, has_schema = cur.fetchone() or (False, False)
    if not has_table:
        # A first-release database has the schema but no bookkeeping: nothing recorded.
        return set() if has_schema else None
    cur.execute("SELECT version FROM skor.migrations")
    return {row[0] for row in cur.fetchall()}


def _check_not_newer(applied: set[int]) -> None:
    unknown = sorted(applied - {m.version for m in known()})
    if unknown:
        raise SchemaTooNew(
            f"the skor schema has migration {unknown[-1]}, newer than this skor-bridge knows"
            f" (up to {latest()}): upgrade skor-bridge, or restore a backup taken before the"
            " upgrade"
        )


def pending(cur: cursor) -> list[Migration]:
    """Steps this database still needs (all of them when it has no skor schema)."""
    applied = _applied(cur) or set()
    _check_not_newer(applied)
    return [m for m in known() if m.version not in applied]


def migrate(cur: cursor, create: bool = True) -> list[int]:
    """Bring the skor schema up to date in the caller's transaction; the versions applied.

    Reads first without the lock, so a start-up against an up-to-date database takes no
    lock and runs no DDL. With `create=False` a database without the skor schema raises
    SchemaMissing instead of getting an empty one (a purged installation must not be
    recreated silently by a restart).
    """
    applied = _applied(cur)
    if applied is None and not create:
        raise SchemaMissing(
            "the skor schema does not exist in this database: run `skor-bridge triggers"
            " install` first"
        )
    if applied is not None:
        _check_not_newer(applied)
        if all(m.version in applied for m in known()):
            return []
    cur.execute("SELECT pg_advisory_xact_lock(%s)", (DDL_LOCK,))
    cur.execute(_BOOKKEEPING)
    applied = _applied(cur) or set()
    _check_not_newer(applied)
    done = []
    for step in known():
        if step.version in applied:
            continue
        cur.execute(step.sql)
        cur.execute(
            "INSERT INTO skor.migrations (version, name) VALUES (%s, %s)", (step.version, step.name)
        )
        done.append(step.version)
    cur.execute("UPDATE skor.meta SET value = %s WHERE key = 'schema_version'", (str(latest()),))
    return done


def script() -> str:
    """Every step as one psql script (see the module docstring for why that is safe)."""
    parts = [_BOOKKEEPING.strip()]
    for step in known():
        parts.append(f"-- migration {step.version}: {step.name}\n{step.sql.strip()}")
        parts.append(
            "INSERT INTO skor.migrations (version, name) VALUES"
            f" ({step.version}, '{step.name}') ON CONFLICT (version) DO NOTHING;"
        )
    parts.append(f"UPDATE skor.meta SET value = '{latest()}' WHERE key = 'schema_version';")
    return "\n\n".join(parts)
