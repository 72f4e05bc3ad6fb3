"""The scratch database the benchmark works in, created on the user's server and dropped.

`triggers install` replaces every capture trigger of a database, so the benchmark never
touches the user's own database: it creates `skor_bench_<random>` next to it, does
everything there, and drops it at the end, also after Ctrl-C or an error.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING

import psycopg2
import psycopg2.extensions

from skor_bridge.capture import triggers
from skor_bridge.config import redact

if TYPE_CHECKING:
    from skor_bridge.config import Mode

#: The benchmark's table, inside the scratch database.
TABLE = "skor_bench"

_TABLE_DDL = f"""
CREATE TABLE {TABLE} (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer   integer        NOT NULL,
    amount     numeric(12, 2) NOT NULL,
    status     text           NOT NULL,
    note       text,
    created_at timestamptz    NOT NULL DEFAULT now()
)
"""

#: Trigger configurations the write-cost runs alternate between.
CAPTURE_MODES = ("none", "durable", "notify")


def _autocommit(dsn: str) -> psycopg2.extensions.connection:
    conn = psycopg2.connect(dsn, connect_timeout=10, application_name="skor-bridge bench")
    conn.autocommit = True
    return conn


class ScratchDatabase:
    """`with ScratchDatabase(dsn) as db:` creates the database and table; exit drops it."""

    def __init__(self, admin_dsn: str) -> None:
        self.admin_dsn = admin_dsn
        self.name = f"skor_bench_{uuid.uuid4().hex[:10]}"
        self.dsn = psycopg2.extensions.make_dsn(admin_dsn, dbname=self.name)
        self.created = False
        self._spec = triggers.TableSpec(table=TABLE)

    @property
    def safe_dsn(self) -> str:
        return redact(self.dsn)

    def create(self) -> None:
        conn = _autocommit(self.admin_dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(f'CREATE DATABASE "{self.name}"')
        finally:
            conn.close()
        self.created = True
        self.execute(_TABLE_DDL)

    def drop(self) -> None:
        if not self.created:
            return
        conn = _autocommit(self.admin_dsn)
        try:
            with conn.cursor() as cur:
                # FORCE (PostgreSQL 13+) ends sessions a killed child may have left behind.
                cur.execute("SELECT current_setting('server_version_num')::int")
                row = cur.fetchone()
                force = " WITH (FORCE)" if row and row[0] >= 130000 else ""
                if not force:
                    cur.execute(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                        (self.name,),
                    )
                cur.execute(f'DROP DATABASE IF EXISTS "{self.name}"{force}')
        finally:
            conn.close()
        self.created = False

    def __enter__(self) -> ScratchDatabase:
        self.create()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.drop()

    # -- inside the scratch database ------------------------------------------------------------

    def execute(self, *statements: str) -> None:
        conn = _autocommit(self.dsn)
        try:
            with conn.cursor() as cur:
                for statement in statements:
                    cur.execute(statement)
        finally:
            conn.close()

    def integer(self, query: str) -> int:
        value = self.scalar(query)
        assert isinstance(value, int), (query, value)
        return value

    def scalar(self, query: str) -> object:
        conn = _autocommit(self.dsn)
        try:
            with conn.cursor() as cur:
                cur.execute(query)
                row = cur.fetchone()
                return row[0] if row else None
        finally:
            conn.close()

    def capture(self, mode: str) -> None:
        """Switch the table's triggers: "none", "durable" or "notify" (Skor's)."""
        if mode == "none":
            triggers.uninstall(self.dsn)
        else:
            capture_mode: Mode = "notify" if mode == "notify" else "durable"
            triggers.install(self.dsn, [self._spec], capture_mode)

    def empty_for_write_run(self) -> None:
        """Equal starting conditions for every write-cost run: empty table and outbox."""
        self.execute(f"TRUNCATE {TABLE}")
        if self.scalar("SELECT to_regclass('skor.outbox')") is not None:
            self.execute("TRUNCATE skor.outbox")
        self.checkpoint()  # so no run pays for an earlier run's dirty pages

    def fresh_bridge_state(self) -> None:
        """Empty table, durable triggers and a new skor schema: no outbox, log or output
        positions left from an earlier phase."""
        triggers.uninstall(self.dsn, purge=True)
        self.execute(f"TRUNCATE {TABLE}")
        triggers.install(self.dsn, [self._spec], "durable")
        self.execute("VACUUM ANALYZE")
        self.checkpoint()

    def checkpoint(self) -> None:
        """Write out what earlier phases dirtied, so a timed phase does not pay for their
        checkpoint (its I/O, and full-page images in the WAL of every first write to a
        page after it: the latency row's p99 went from 8 to 12 ms in a full run)."""
        try:
            self.execute("CHECKPOINT")
        except psycopg2.Error:
            pass  # needs superuser or pg_checkpoint; a nicety, not a requirement

    def fresh_with_existing_rows(self, rows: int) -> None:
        """As `fresh_bridge_state`, but with `rows` rows (ids 1..rows) written before the
        triggers were installed: rows no event carried, for a backfill to send."""
        triggers.uninstall(self.dsn, purge=True)
        self.execute(
            f"TRUNCATE {TABLE} RESTART IDENTITY",
            f"INSERT INTO {TABLE} (customer, amount, status, note)"
            f" SELECT g % 100000, (g % 100000) * 0.01, 'new', 'existing row'"
            f" FROM generate_series(1, {int(rows)}) AS g",
        )
        triggers.install(self.dsn, [self._spec], "durable")
        self.execute("VACUUM ANALYZE")

    def server_version(self) -> str:
        return str(self.scalar("SHOW server_version"))

    def rows(self) -> int:
        return self.integer(f"SELECT count(*) FROM {TABLE}")

    def max_id(self) -> int:
        return self.integer(f"SELECT coalesce(max(id), 0) FROM {TABLE}")
