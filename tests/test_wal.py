"""WAL capture end to end, on servers with wal_level=logical (PostgreSQL 18 and 15)."""

from __future__ import annotations

import json

import psycopg2
import pytest

from skor_bridge.capture import triggers
from skor_bridge.capture.wal import install as wal_install
from tests.helpers import bodies, execute, scalar

pytestmark = pytest.mark.slow


def _install(dsn, entries):
    return wal_install.install(dsn, triggers.parse_config(entries))


def test_changes_arrive_in_commit_order_with_no_trigger_on_the_table(wal_dsn_any, bridge, receiver):
    # Given a table captured in WAL mode
    dsn = wal_dsn_any
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY, name text, price numeric)")
    _install(dsn, [{"table": "items"}])
    assert scalar(dsn, "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'items'::regclass") == 0
    process = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    # When rows are inserted, updated and deleted
    execute(
        dsn,
        "INSERT INTO items VALUES (1, 'a', 1.50), (2, 'b', 2)",
        "UPDATE items SET name = 'c' WHERE id = 1",
        "DELETE FROM items WHERE id = 2",
    )
    # Then each change arrives with the whole row, DELETE's old row too
    assert receiver.wait_for(4, timeout=60), process.log
    expected = [
        ("INSERT", "items", "public", {"id": 1, "name": "a", "price": 1.50}),
        ("INSERT", "items", "public", {"id": 2, "name": "b", "price": 2}),
        ("UPDATE", "items", "public", {"id": 1, "name": "c", "price": 1.50}),
        ("DELETE", "items", "public", {"id": 2, "name": "b", "price": 2}),
    ]
    got = [(b["op"], b["table"], b["schema"], b["data"]) for b in bodies(receiver)]
    assert sorted(got, key=expected.index) == expected
    assert (
        b'"price":1.50' in receiver.delivered()[0].body
        or b'"price":1.50' in receiver.delivered()[1].body
    )
    # And the log holds them in commit order, numbered without gaps
    log = psycopg2.connect(dsn)
    with log.cursor() as cur:
        cur.execute("SELECT pos, op, data FROM skor.log ORDER BY pos")
        rows = cur.fetchall()
    log.close()
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    assert [(r[1], json.loads(r[2])) for r in rows] == [(e[0], e[3]) for e in expected]
    assert "wal capture" in process.log


_TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (a int, b text);
CREATE TYPE tagged AS ENUM ('x', 'y');
CREATE FUNCTION tagged_json(tagged) RETURNS json LANGUAGE sql IMMUTABLE
    AS $$ SELECT json_build_object('tag', $1::text) $$;
CREATE CAST (tagged AS json) WITH FUNCTION tagged_json(tagged);
CREATE DOMAIN positive AS int CHECK (VALUE > 0);
CREATE DOMAIN labels AS text[];
CREATE TABLE golden (
    id int PRIMARY KEY, i2 int2, i8 int8, num numeric, f4 float4, f8 float8, b bool,
    t text, vc varchar(10), ch char(4), nm name, js json, jb jsonb, u uuid, by bytea,
    d date, tm time, ttz timetz, ts timestamp, tz timestamptz, iv interval,
    ia int[], ta text[], na numeric[], jba jsonb[], tza timestamptz[], ba bool[],
    m mood, ma mood[], p positive, l labels, pr pair, pra pair[], tg tagged,
    ip inet, cidr_ cidr, mac macaddr, pt point, bx box[], mn money, bt bit(3),
    vb varbit, tsv tsvector, rng int4range, o oid, da date[]
);
"""

_ROWS = [
    """(1, 32767, 9223372036854775807, 1.50, 1.5, 0.1, true, 'plain', 'vc', 'ab',
        'nm', ' {"a" : [1, 2]} ', '{"b": 1, "a": {"c": null}}',
        'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
        '\\x00ff10', '2024-02-29', '23:59:59.999999', '12:00+05:30', '2024-01-01 12:34:56.789',
        '2024-06-01 12:00:00+02', '1 year 2 mons 3 days 04:05:06.5',
        '{{1,2},{3,4}}', '{"a b",NULL,"NULL","q\\"uote","back\\\\slash",""}', '{1.5,NaN}',
        ARRAY['{"x": 1}'::jsonb, 'null'], '{"2024-01-01 00:00:00+00","infinity"}', '{t,f,NULL}',
        'happy', '{sad,ok}', 7, '{x,y}', '(1,"a, b")', ARRAY['(2,)'::pair, NULL], 'y',
        '192.168.0.1/24', '10.0.0.0/8', '08:00:2b:01:02:03', '(1.5,-2)', ARRAY['(1,2),(3,4)'::box],
        12.34, B'101', B'1', 'a fat cat', '[1,5)', 4000000000, '{2024-01-01,infinity}')""",
    """(2, -32768, -9223372036854775808, 'NaN', 'NaN', 'Infinity', false,
        E'ctl\\x01\\x1f\\x7f tab\\t nl\\n astral \\U0001F600 \\u2028 quote" back\\\\', 'é', 'xyz',
        'x y', 'null', '"just a string"', NULL, '\\x', 'infinity', '00:00', '00:00:00-08',
        '0044-03-15 12:00:00 BC', '1890-01-01 00:00:00+00:19:32', '-1 days -00:00:01',
        '{}', '{}', '{}', '{}', '{}', '{}', 'ok', '{}', 1, '{}', '(,)', '{}', 'x',
        '::1', '::/0', '00:00:00:00:00:00', '(0,0)', '{}', -1, B'000', B'', '', 'empty',
        0, '{}')""",
    """(3, NULL, NULL, '-Infinity', '-Infinity', '-0', NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        NULL, NULL, '-infinity', NULL, NULL, 'infinity', '-infinity', NULL, '[0:1]={7,8}',
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)""",
    """(4, 1, 1, 123456789012345678901234567890.123456789, 3.4028235e38, 1e-300, true,
        '', '', '', '', '[]', '[]', NULL, NULL, '10000-01-01', NULL, NULL,
        '10000-01-01 00:00:00', '2024-01-01 00:00:00.000001+00', '0', NULL, NULL, NULL,
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
        NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)""",
]


def _expected(dsn, table="golden"):
    """row_to_json of each row, in a session whose TimeZone is UTC (see render.py)."""
    import psycopg2

    conn = psycopg2.connect(dsn)
    with conn.cursor() as cur:
        cur.execute("SET TimeZone = 'UTC'")
        cur.execute(f"SELECT row_to_json(r)::text FROM {table} r ORDER BY id")
        rows = [r[0] for r in cur.fetchall()]
    conn.close()
    return rows


def _data_of(body: bytes) -> str:
    """The `data` member exactly as sent: bodies are spliced, so it is a prefix."""
    text = body.decode()
    assert text.startswith('{"data": ')
    return text[len('{"data": ') : text.rindex(', "table": ')]


def test_bodies_equal_row_to_json_for_every_common_type(wal_dsn_any, bridge, receiver):
    # Given a table with every common type, captured in WAL mode
    dsn = wal_dsn_any
    execute(dsn, _TYPES_DDL)
    _install(dsn, [{"table": "golden"}])
    process = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    # When tricky rows are inserted, then deleted
    execute(dsn, *(f"INSERT INTO golden VALUES {row}" for row in _ROWS))
    expected = _expected(dsn)
    execute(dsn, "DELETE FROM golden")
    # Then each INSERT's data and each DELETE's data is exactly row_to_json of the row
    assert receiver.wait_for(2 * len(_ROWS), timeout=60), process.log
    sent = receiver.delivered()
    # (rows are independent, so they may arrive in any order)
    inserts = sorted(
        (_data_of(r.body) for r in sent if b'"op": "INSERT"' in r.body),
        key=lambda data: json.loads(data)["id"],
    )
    deletes = sorted(
        (_data_of(r.body) for r in sent if b'"op": "DELETE"' in r.body),
        key=lambda data: json.loads(data)["id"],
    )
    for got, want in zip(inserts, expected, strict=True):
        assert got == want
    for got, want in zip(deletes, expected, strict=True):
        assert got == want


def _cli(*args):
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "skor_bridge", *args], capture_output=True, text=True, timeout=120
    )


def test_install_on_a_server_without_logical_wal_says_so_in_one_line(dsn, tmp_path):
    # Given the machine's server, whose wal_level is replica
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY)")
    config = tmp_path / "triggers.json"
    config.write_text('[{"table": "items"}]')
    # When WAL capture is installed
    result = _cli("triggers", "install", str(config), "--dsn", dsn, "--mode", "wal")
    # Then one line says why and how to change it, and nothing is installed
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "wal_level" in lines[0] and "logical" in lines[0], result.stderr
    assert "ALTER SYSTEM SET wal_level = logical" in lines[0]
    assert scalar(dsn, "SELECT to_regnamespace('skor') IS NULL")
    assert scalar(dsn, "SELECT count(*) FROM pg_publication") == 0


def test_a_slot_dropped_between_runs_stops_the_bridge_naming_the_slot(
    wal_dsn, bridge, receiver, tmp_path
):
    # Given WAL capture installed from the command line, and a run that delivered
    dsn = wal_dsn
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY)")
    config = tmp_path / "triggers.json"
    config.write_text('[{"table": "items"}]')
    result = _cli("triggers", "install", str(config), "--dsn", dsn, "--mode", "wal")
    assert result.returncode == 0, result.stderr
    slot = scalar(dsn, "SELECT slot_name FROM skor.wal_state")
    assert slot in result.stderr
    first = bridge("--dsn", dsn, "--webhook", receiver.url).wait_active()
    execute(dsn, "INSERT INTO items VALUES (1)")
    assert receiver.wait_for(1, timeout=60)
    assert first.stop() == 0
    # When the slot is dropped while the bridge is down
    execute(dsn, "SELECT pg_drop_replication_slot(%s)", params=(slot,))
    # Then the bridge refuses to start, with one line naming the slot, and no new slot
    second = bridge("--dsn", dsn, "--webhook", receiver.url)
    assert second.proc.wait(60) == 1
    errors = [line for line in second.log.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and slot in errors[0] and "does not exist" in errors[0], second.log
    assert "Traceback" not in second.log
    assert scalar(dsn, "SELECT count(*) FROM pg_replication_slots") == 0


def test_uninstall_drops_the_slot_and_the_publication(wal_dsn, tmp_path):
    dsn = wal_dsn
    execute(dsn, "CREATE TABLE items (id int PRIMARY KEY)")
    slot = _install(dsn, [{"table": "items"}])
    assert (
        scalar(dsn, "SELECT count(*) FROM pg_replication_slots WHERE slot_name = %s", (slot,)) == 1
    )
    # (a standby can take the slot over on PostgreSQL 17+: the fixture's server is 18)
    assert (
        scalar(dsn, "SELECT failover FROM pg_replication_slots WHERE slot_name = %s", (slot,))
        is True
    )
    result = _cli("triggers", "uninstall", "--dsn", dsn)
    assert result.returncode == 0, result.stderr
    assert slot in result.stdout
    assert scalar(dsn, "SELECT count(*) FROM pg_replication_slots") == 0
    assert scalar(dsn, "SELECT count(*) FROM pg_publication") == 0
