"""Capture visibility: `triggers list`, what `triggers install` added and removed, an empty
file refused without --force, and `run` warning when nothing is captured."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from skor_bridge.cli import app
from skor_bridge.cli.triggers import changes
from tests.helpers import bodies, execute

TABLES = """
CREATE TABLE orders (id int PRIMARY KEY, status text, note text);
CREATE TABLE customers (id int PRIMARY KEY, name text);
CREATE TABLE payments (id int PRIMARY KEY, amount numeric);
"""


def cli(*args: str):
    return CliRunner().invoke(app, [str(a) for a in args])


def write(tmp_path, entries, name="triggers.json"):
    path = tmp_path / name
    path.write_text(json.dumps(entries))
    return path


def listed(dsn: str) -> dict[str, dict]:
    result = cli("triggers", "list", "--dsn", dsn, "--json")
    return {f"{t['schema']}.{t['table']}": t for t in json.loads(result.stdout)["tables"]}


def test_changes_name_what_was_added_removed_and_changed():
    before = {"public.a": ["insert"], "public.b": ["insert", "update"]}
    after = {"public.b": ["insert"], "public.c": ["delete"]}
    assert changes(before, after) == [
        "added public.c (delete)",
        "removed public.a (insert)",
        "changed public.b: insert, update -> insert",
    ]


@pytest.mark.slow
def test_triggers_list_shows_tables_ops_columns_and_problems(dsn, tmp_path):
    execute(dsn, TABLES)
    path = write(
        tmp_path,
        [
            {"table": "orders", "columns": {"insert": ["id", "status"], "update": "*"}},
            {"table": "customers", "columns": "*"},
        ],
    )
    assert cli("triggers", "install", path, "--dsn", dsn).exit_code == 0
    tables = listed(dsn)
    assert tables["public.orders"] == {
        "schema": "public",
        "table": "orders",
        "mode": "durable",
        "ops": ["insert", "update"],
        "columns": {"insert": ["id", "status"], "update": None},
        "condition": None,
        "problems": [],
    }
    assert tables["public.customers"]["ops"] == ["insert", "update", "delete"]
    text = cli("triggers", "list", "--dsn", dsn)
    assert text.exit_code == 0
    assert text.stdout.splitlines()[1].split() == [
        "public.customers",
        "durable",
        "insert,update,delete",
        "*",
        "-",
    ]
    # When a captured column is renamed, a trigger disabled and a table dropped
    execute(
        dsn,
        "ALTER TABLE orders RENAME COLUMN status TO state",
        'ALTER TABLE orders DISABLE TRIGGER "!skor_capture_update"',
        "DROP TABLE customers",
    )
    # Then each is a problem, and the command exits 1
    problems = listed(dsn)["public.orders"]["problems"]
    assert problems == [
        "update trigger is disabled",
        "column status does not exist any more (renamed or dropped?): events "
        "leave it out until triggers.json is updated and installed again",
    ]
    assert listed(dsn)["public.customers"]["problems"] == [
        "table does not exist any more (dropped or renamed?): nothing is captured"
    ]
    assert cli("triggers", "list", "--dsn", dsn).exit_code == 1
    # (while writes keep working: issue 9.6)
    execute(dsn, "INSERT INTO orders (id, state) VALUES (1, 'new')")


@pytest.mark.slow
def test_install_says_what_it_added_and_removed_and_refuses_an_empty_file(dsn, tmp_path):
    execute(dsn, TABLES)
    first = write(tmp_path, [{"table": "orders"}, {"table": "customers"}])
    result = cli("triggers", "install", first, "--dsn", dsn)
    assert "added public.orders (insert, update, delete)" in result.stderr
    second = write(
        tmp_path,
        [{"table": "customers", "columns": {"insert": "*"}}, {"table": "payments"}],
        "second.json",
    )
    result = cli("triggers", "install", second, "--dsn", dsn)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines()[:3] == [
        "added public.payments (insert, update, delete)",
        "removed public.orders (insert, update, delete)",
        "changed public.customers: insert, update, delete -> insert",
    ]
    # An empty file would remove everything: refused without --force
    empty = write(tmp_path, [], "empty.json")
    refused = cli("triggers", "install", empty, "--dsn", dsn)
    assert refused.exit_code == 2
    assert refused.stderr == (
        f"error: {empty} lists no table: installing it would remove "
        "every capture trigger (2 table(s) captured now); give --force "
        "to do that\n"
    )
    assert set(listed(dsn)) == {"public.customers", "public.payments"}
    forced = cli("triggers", "install", empty, "--dsn", dsn, "--force")
    assert forced.exit_code == 0 and "removed public.payments" in forced.stderr
    assert listed(dsn) == {}


@pytest.mark.slow
def test_run_warns_when_nothing_is_captured(dsn, bridge, receiver, tmp_path):
    # Given a database whose capture triggers were removed (the skor schema stays)
    execute(dsn, TABLES)
    assert (
        cli("triggers", "install", write(tmp_path, [{"table": "orders"}]), "--dsn", dsn).exit_code
        == 0
    )
    assert cli("triggers", "uninstall", "--dsn", dsn).exit_code == 0
    process = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    assert "nothing is captured: this database has no capture trigger" in process.log
    assert process.stop() == 0


@pytest.mark.slow
def test_a_table_renamed_while_the_bridge_is_down_is_delivered_under_its_configured_name(
    dsn, bridge, receiver, tmp_path
):
    # Given a table captured by triggers, and a run that delivered a change of it
    execute(dsn, TABLES)
    assert (
        cli("triggers", "install", write(tmp_path, [{"table": "orders"}]), "--dsn", dsn).exit_code
        == 0
    )
    first = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    execute(dsn, "INSERT INTO orders VALUES (1, 'new', '')")
    assert receiver.wait_for(1, timeout=60)
    assert first.stop() == 0
    # When the table is renamed while the bridge is down, and changed under its new name
    execute(dsn, "ALTER TABLE orders RENAME TO purchases")
    for n in range(1, 4):
        execute(
            dsn,
            f"UPDATE purchases SET note = '{n}' WHERE id = 1",
            f"INSERT INTO purchases VALUES ({n + 1}, 'new', '')",
        )
    execute(dsn, "DELETE FROM purchases WHERE id = 1")
    second = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    # Then every change arrives under the configured name, in each row's order
    assert receiver.wait_for(1 + 3 * 2 + 1, timeout=60), second.log
    got = [(e["table"], e["op"], e["data"]["id"], e["data"]["note"]) for e in bodies(receiver)]
    assert {table for table, *_ in got} == {"orders"}
    assert [(op, note) for _, op, row, note in got if row == 1] == [
        ("INSERT", ""),
        ("UPDATE", "1"),
        ("UPDATE", "2"),
        ("UPDATE", "3"),
        ("DELETE", "3"),
    ]
    # And the rename is said once at start-up, and `triggers list` reports it (not as a
    # dropped table, nor the renamed one as a stranger)
    assert second.log.count("was renamed to public.purchases") == 1, second.log
    tables = listed(dsn)
    assert list(tables) == ["public.orders"]
    assert tables["public.orders"]["ops"] == ["insert", "update", "delete"]
    assert tables["public.orders"]["problems"] == [
        "table was renamed to public.purchases: still captured, its events keep the name "
        "public.orders; update triggers.json and install again"
    ]
    assert cli("triggers", "list", "--dsn", dsn).exit_code == 1
