"""The README's examples work: its triggers.json installs, and each entry captures what the
README says (in particular each `when` works for the operations it is given)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg2
import pytest
from typer.testing import CliRunner

from skor_bridge.cli import app

README = Path(__file__).parents[1] / "README.md"

TABLES = """
CREATE SCHEMA billing;
CREATE TABLE orders (id int PRIMARY KEY, note text);
CREATE TABLE customers (id int PRIMARY KEY, name text, email text, phone text);
CREATE TABLE billing.payments (id int PRIMARY KEY, status text, amount numeric);
CREATE TABLE invoices (id int PRIMARY KEY, total numeric);
CREATE TABLE shipments (id int PRIMARY KEY, status text, note text);
CREATE TABLE accounts (id int PRIMARY KEY, closed_at timestamptz);
CREATE TABLE audit_log (id int PRIMARY KEY, msg text);
"""


def readme_triggers() -> list[dict]:
    text = README.read_text()
    block = re.search(r"<!-- triggers-example -->\n```json\n(.*?)```", text, re.S)
    assert block, "the README's triggers.json example is missing"
    return json.loads(block[1])


def test_the_use_it_section_starts_from_a_file_the_user_writes():
    text = README.read_text()
    use_it = text[text.index("## Use it") : text.index("### triggers.json")]
    assert "> triggers.json" in use_it and "sample.triggers.json" not in use_it


@pytest.mark.slow
def test_the_readme_triggers_example_installs_and_captures_what_it_says(dsn, tmp_path):
    path = tmp_path / "triggers.json"
    path.write_text(json.dumps(readme_triggers()))
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    cur = conn.cursor()
    cur.execute(TABLES)
    result = CliRunner().invoke(app, ["triggers", "install", str(path), "--dsn", dsn])
    assert result.exit_code == 0, result.output
    for statement in [
        "INSERT INTO orders VALUES (1, 'a')",
        "INSERT INTO customers VALUES (1, 'ada', 'ada@example.com', '555')",
        "INSERT INTO billing.payments VALUES (1, 'new', 10)",
        "UPDATE billing.payments SET amount = 11",  # status unchanged: not captured
        "UPDATE billing.payments SET status = 'paid'",
        "INSERT INTO invoices VALUES (1, 500), (2, 2000)",  # only 2 (total > 1000)
        "INSERT INTO shipments VALUES (1, 'packed', '')",  # inserts not captured
        "UPDATE shipments SET note = 'x'",  # status unchanged
        "UPDATE shipments SET status = 'sent'",
        "INSERT INTO accounts VALUES (1, NULL), (2, now())",
        "DELETE FROM accounts",  # only 1 (open)
        "INSERT INTO audit_log VALUES (1, 'kept')",
        "SET app.capture = 'off'",
        "INSERT INTO audit_log VALUES (2, 'skipped')",
    ]:
        cur.execute(statement)
    cur.execute("SELECT schema_name || '.' || table_name, op, data FROM skor.outbox ORDER BY id")
    captured = [(table, op, json.loads(data)) for table, op, data in cur.fetchall()]
    conn.close()
    assert captured == [
        ("public.orders", "INSERT", {"id": 1, "note": "a"}),
        ("public.customers", "INSERT", {"id": 1, "name": "ada", "email": "ada@example.com"}),
        ("billing.payments", "INSERT", {"id": 1, "status": "new", "amount": 10}),
        ("billing.payments", "UPDATE", {"id": 1, "status": "paid"}),
        ("public.invoices", "INSERT", {"id": 2, "total": 2000}),
        ("public.shipments", "UPDATE", {"id": 1, "status": "sent", "note": "x"}),
        ("public.accounts", "DELETE", {"id": 1}),
        ("public.audit_log", "INSERT", {"id": 1, "msg": "kept"}),
    ]
