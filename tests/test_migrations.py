"""The bridge's schema is upgraded through numbered migrations, and a database written by
the first release (a pg_dump kept in tests/fixtures) keeps working after an upgrade."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg2
import pytest

from skor_bridge import migrations
from skor_bridge.capture.schema import ensure_schema
from tests.helpers import bodies, execute, scalar, wait_until

RELEASE_1_DUMP = Path(__file__).parent / "fixtures" / "release-0.1.0.sql"


def _migrate(dsn, create=True):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            done = ensure_schema(cur, create=create)
        conn.commit()
        return done
    finally:
        conn.close()


def test_migrations_are_numbered_without_gaps_in_names_and_start_at_the_first_release():
    steps = migrations.known()
    assert steps[0].version == 1 and steps[0].name == "initial"
    assert [s.version for s in steps] == sorted({s.version for s in steps})
    # The psql script records every step, so a database made with it is not migrated twice.
    script = migrations.script()
    for step in steps:
        assert f"({step.version}, '{step.name}') ON CONFLICT" in script


def test_a_new_database_gets_every_migration_once_and_a_second_run_applies_nothing(dsn):
    assert _migrate(dsn) == [s.version for s in migrations.known()]
    assert _migrate(dsn) == []
    assert scalar(dsn, "SELECT count(*) FROM skor.migrations") == len(migrations.known())
    assert scalar(dsn, "SELECT value FROM skor.meta WHERE key = 'schema_version'") == str(
        migrations.latest()
    )


def test_an_up_to_date_database_is_checked_without_taking_the_ddl_lock(dsn):
    _migrate(dsn)
    holder = psycopg2.connect(dsn)
    with holder.cursor() as cur:  # Another instance mid-install holds the DDL lock.
        cur.execute("SELECT pg_advisory_lock(%s)", (migrations.DDL_LOCK,))
    try:
        conn = psycopg2.connect(dsn, options="-c lock_timeout=2000")
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = 2000")
            assert ensure_schema(cur) == []
        conn.close()
    finally:
        holder.close()


@pytest.mark.slow
def test_a_schema_newer_than_the_code_is_refused_with_one_line(dsn):
    _migrate(dsn)
    execute(dsn, "INSERT INTO skor.migrations (version, name) VALUES (999, 'from_the_future')")
    with pytest.raises(migrations.SchemaTooNew, match="migration 999, newer than"):
        _migrate(dsn)
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "skor_bridge",
            "run",
            "--dsn",
            dsn,
            "--webhook",
            "http://127.0.0.1:9/",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert "newer than this skor-bridge knows" in result.stderr
    assert "Traceback" not in result.stderr


def test_without_create_a_database_with_no_skor_schema_is_not_given_an_empty_one(dsn):
    with pytest.raises(migrations.SchemaMissing, match="triggers install"):
        _migrate(dsn, create=False)
    assert scalar(dsn, "SELECT to_regnamespace('skor') IS NULL") is True


def restore_release_1(dsn):
    subprocess.run(
        ["psql", "-q", "-v", "ON_ERROR_STOP=1", "-d", dsn, "-f", str(RELEASE_1_DUMP)],
        check=True,
        capture_output=True,
    )


@pytest.mark.slow
def test_a_first_release_database_is_upgraded_and_delivers_its_pending_events_once(
    dsn, bridge, receiver, tmp_path
):
    # Given a database created by release 0.1.0: 101 events delivered to `webhook`, then
    # 23 changes written while its bridge was stopped (20 updates, a delete, an insert of a
    # numeric with 21 significant digits, and one row of a second table)
    restore_release_1(dsn)
    assert scalar(dsn, "SELECT position FROM skor.outputs WHERE name = 'webhook'") == 101
    assert scalar(dsn, "SELECT to_regclass('skor.migrations')") is None

    # When this release's bridge runs against it
    process = bridge("--dsn", dsn, "--webhook", f"webhook={receiver.url}")
    # Then exactly the 23 pending events arrive, once, and nothing delivered before is resent
    assert receiver.wait_for(23)
    wait_until(
        lambda: scalar(dsn, "SELECT position FROM skor.outputs WHERE name = 'webhook'") == 124,
        message="progress saved after the pending events",
    )
    events = bodies(receiver)
    assert len(events) == 23
    assert len({r.headers["webhook-id"] for r in receiver.delivered()}) == 23
    accounts = [e for e in events if e["table"] == "accounts"]
    assert sorted(e["data"]["id"] for e in accounts if e["op"] == "UPDATE") == list(range(1, 21))
    assert [e["data"]["id"] for e in accounts if e["op"] == "DELETE"] == [100]
    inserted = [r.body for r in receiver.delivered() if b'"id":101' in r.body]
    assert b"12345.678900000000000001" in inserted[0]
    assert [e["data"] for e in events if e["table"] == "audit"] == [{"msg": "second"}]
    # and the schema was brought up to date on the way
    assert scalar(dsn, "SELECT max(version) FROM skor.migrations") == migrations.latest()

    # When the triggers are reinstalled with this release, asking for old rows
    triggers_file = tmp_path / "triggers.json"
    triggers_file.write_text(
        json.dumps([{"table": "accounts", "old": True}, {"table": "audit", "columns": ["msg"]}])
    )
    subprocess.run(
        [
            sys.executable,
            "-m",
            "skor_bridge",
            "triggers",
            "install",
            str(triggers_file),
            "--dsn",
            dsn,
        ],
        check=True,
        capture_output=True,
    )
    # Then changes keep flowing through the running bridge, captured by the new triggers
    # (which replaced the 0.1.0 functions in place), an UPDATE with its old row for the
    # envelope format, while Skor's body stays as it was
    before = scalar(dsn, "SELECT row_to_json(a)::text FROM accounts a WHERE id = 7")
    execute(dsn, "UPDATE accounts SET note = 'after upgrade' WHERE id = 7")
    assert receiver.wait_for(24)
    assert bodies(receiver)[-1]["data"]["note"] == "after upgrade"
    assert list(bodies(receiver)[-1]) == ["data", "table", "schema", "op"]
    assert scalar(dsn, "SELECT old FROM skor.log ORDER BY pos DESC LIMIT 1") == before
    # and the events the 0.1.0 triggers captured have no old row: NULL, not made up
    assert scalar(dsn, "SELECT count(*) FROM skor.log WHERE old IS NOT NULL") == 1
    assert process.stop() == 0

    # And `status` reads the upgraded database
    status = subprocess.run(
        [sys.executable, "-m", "skor_bridge", "status", "--dsn", dsn, "--json"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert status.returncode == 0, status.stderr
    snapshot = json.loads(status.stdout)
    assert "webhook" in json.dumps(snapshot)
