"""Capture triggers against a real PostgreSQL: payloads, keys, quoting, install/uninstall, CLI."""

from __future__ import annotations

import json
import select
import subprocess
import time
import uuid

import psycopg2
import pytest
from typer.testing import CliRunner

from skor_bridge.capture import triggers
from skor_bridge.capture.triggers import TableSpec, generate_sql, install, parse_config, uninstall
from skor_bridge.cli.triggers import triggers_app
from skor_bridge.errors import ConfigError, StartupError, TriggerError

runner = CliRunner()


def execute(db, sql, params=None):
    with db.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else None


def outbox(db):
    """Captured events, oldest first: (op, schema, table, row_key, data)."""
    return [
        tuple(row)
        for row in execute(
            db, "SELECT op, schema_name, table_name, row_key, data FROM skor.outbox ORDER BY id"
        )
    ]


def clear_outbox(db):
    execute(db, "DELETE FROM skor.outbox")


def row_json(db, table, where="true", params=None):
    sql = f"SELECT row_to_json(whole)::text FROM {table} whole WHERE {where}"
    return execute(db, sql, params)[0][0]


def user_triggers(db):
    """Every non-internal trigger in the database, as (table, trigger name)."""
    return sorted(
        execute(db, "SELECT tgrelid::regclass::text, tgname FROM pg_trigger WHERE NOT tgisinternal")
    )


def capture_functions(db):
    return sorted(
        r[0]
        for r in execute(
            db,
            "SELECT p.oid::regprocedure::text FROM pg_proc p WHERE p.prorettype = "
            "'trigger'::regtype AND (p.proname LIKE 'capture%' OR p.proname LIKE 'notify_skor%')",
        )
    )


def install_config(dsn, config, mode="durable"):
    install(dsn, parse_config(config), mode)


def compact(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def cli(*args, env=None):
    return runner.invoke(triggers_app, [str(a) for a in args], env=env)


def write_config(tmp_path, config, name="triggers.json"):
    path = tmp_path / name
    path.write_text(config if isinstance(config, str) else json.dumps(config), encoding="utf-8")
    return path


def psql(dsn, script_path):
    return subprocess.run(
        [
            "psql",
            dsn,
            "--single-transaction",
            "-v",
            "ON_ERROR_STOP=1",
            "-q",
            "-X",
            "-f",
            str(script_path),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


# -- payloads ------------------------------------------------------------------------------


def test_the_four_skor_config_shapes_capture_the_rows_skor_would_send(db, dsn):
    # Given one table per triggers.json shape
    execute(
        db,
        """
        CREATE TABLE plain (id int PRIMARY KEY, name text, price numeric);
        CREATE TABLE star (id int PRIMARY KEY, name text, price numeric);
        CREATE TABLE listed (id int PRIMARY KEY, name text, price numeric);
        CREATE TABLE per_op (id int PRIMARY KEY, name text, price numeric);
    """,
    )
    install_config(
        dsn,
        [
            {"table": "plain"},
            {"table": "star", "columns": "*"},
            {"table": "listed", "columns": ["price", "id"]},
            {
                "table": "per_op",
                "columns": {"insert": "*", "update": ["id", "name"], "delete": ["id"]},
            },
        ],
    )
    for table in ("plain", "star", "listed", "per_op"):
        # When a row is inserted, updated and deleted
        execute(db, f"INSERT INTO {table} VALUES (1, 'ä \"x\"', 1.50)")
        inserted = row_json(db, table)
        execute(db, f"UPDATE {table} SET name = 'new', price = 2")
        updated = row_json(db, table)
        execute(db, f"DELETE FROM {table}")
        events = outbox(db)
        clear_outbox(db)
        # Then INSERT and UPDATE carry the new row, DELETE the old one, cut to the columns
        assert [e[:3] for e in events] == [
            ("INSERT", "public", table),
            ("UPDATE", "public", table),
            ("DELETE", "public", table),
        ]
        data = [e[4] for e in events]
        if table in ("plain", "star"):
            assert data == [inserted, updated, updated]
        elif table == "listed":
            assert data == ['{"price":1.50,"id":1}', '{"price":2,"id":1}', '{"price":2,"id":1}']
        else:
            assert data == [inserted, '{"id":1,"name":"new"}', '{"id":1}']
        assert all(e[3] == '{"id":1}' for e in events)


def test_a_per_operation_map_captures_only_the_listed_operations(db, dsn):
    # Given a table whose map lists only insert (in Skor's upper case) and delete
    execute(db, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    install_config(dsn, [{"table": "t", "columns": {"INSERT": ["v"], "delete": "*"}}])
    assert user_triggers(db) == [("t", "!skor_capture_delete"), ("t", "!skor_capture_insert")]
    # When all three operations happen
    execute(db, "INSERT INTO t VALUES (1, 'a'); UPDATE t SET v = 'b'; DELETE FROM t")
    # Then the update is not captured
    assert [(e[0], e[4]) for e in outbox(db)] == [
        ("INSERT", '{"v":"a"}'),
        ("DELETE", '{"id":1,"v":"b"}'),
    ]


TYPES_DDL = """
CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy');
CREATE TYPE pair AS (x int, y text);
CREATE TABLE everything (
    id serial PRIMARY KEY,
    i2 int2, i4 int4, i8 int8, num numeric, num_scaled numeric(12, 4), r4 real, f8 float8,
    b bool, t text, vc varchar(20), ch char(6), raw bytea, d date, tm time, tmtz timetz,
    ts timestamp, tstz timestamptz, iv interval, u uuid, j json, jb jsonb, ints int[],
    texts text[], grid int[][], m mood, c pair, ip inet, net cidr, mac macaddr, cash money,
    bits varbit, pt point, span int4range, tsv tsvector, x xml
);
"""

TYPES_ROWS = [
    # extremes and awkward text
    """(32767, -2147483648, 9223372036854775807, 12345678901234567890.123456789, 1.5,
        'NaN', 'Infinity', true, E'h\u00e9llo \U0001f600 "q" \\\\ back\\nline\\ttab\\u0001 \u2028',
        'varchar ''quoted''', 'ab', '\\x00ff10', '2024-02-29', '23:59:59.999999',
        '12:00:00+05:30', '1999-12-31 23:59:59.123456', '2024-06-01 12:34:56.789+02',
        '1 year 2 mons 3 days 04:05:06.789', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
        '{"b": 1,  "a": [1, 2.50]}', '{"b": 1, "a": [1, 2.50], "u": "\u00fc"}', '{1,NULL,3}',
        '{"a b","c\\"d",NULL,""}', '{{1,2},{3,4}}', 'happy', ROW(1, 'x"y'), '192.168.0.1/24',
        '10.0.0.0/8', '08:00:2b:01:02:03', 12.34, B'1011', '(1.5,-2)', '[1,10)',
        'a fat cat', '<a href="x">t</a>')""",
    # negatives, empties
    """(-32768, 0, -9223372036854775808, -0.000001, 0, 1.5e-10, '-Infinity', false, '', '',
        '', '', '0001-01-01', '00:00', '00:00+00', '2000-01-01', '-infinity', '-1 day',
        '00000000-0000-0000-0000-000000000000', '[]', '{}', '{}', '{}', '{}', 'sad',
        ROW(NULL, NULL), '::1', '::/0', '00:00:00:00:00:00', -1, B'', '(0,0)', 'empty', '',
        '')""",
]


def test_every_common_column_type_is_captured_exactly_as_row_to_json_renders_it(db, dsn):
    # Given a table with one column of each common type, in a non-UTC session
    execute(db, TYPES_DDL + "SET TIME ZONE 'America/New_York'")
    install_config(dsn, [{"table": "everything"}])
    columns = (
        "i2, i4, i8, num, num_scaled, r4, f8, b, t, vc, ch, raw, d, tm, tmtz, ts, tstz, "
        "iv, u, j, jb, ints, texts, grid, m, c, ip, net, mac, cash, bits, pt, span, tsv, x"
    )
    expected = []
    # When rows with extreme, empty and NULL values are inserted, updated and deleted
    for values in TYPES_ROWS:
        (new_id,) = execute(db, f"INSERT INTO everything ({columns}) VALUES {values} RETURNING id")[
            0
        ]
        expected.append(row_json(db, "everything", "id = %s", (new_id,)))
    (null_id,) = execute(db, "INSERT INTO everything DEFAULT VALUES RETURNING id")[0]
    expected.append(row_json(db, "everything", "id = %s", (null_id,)))
    execute(db, "UPDATE everything SET f8 = 'NaN', num = 1e-20, t = t || '!' WHERE id = 1")
    expected.append(row_json(db, "everything", "id = 1"))
    expected.append(row_json(db, "everything", "id = 2"))
    execute(db, "DELETE FROM everything WHERE id = 2")
    # Then every event's data is PostgreSQL's row_to_json text, byte for byte
    events = outbox(db)
    assert [e[0] for e in events] == ["INSERT"] * 3 + ["UPDATE", "DELETE"]
    assert [e[4] for e in events] == expected
    first = json.loads(events[0][4])
    assert first["i8"] == 9223372036854775807
    assert '"num":12345678901234567890.123456789' in events[0][4]
    assert first["t"].startswith('h\u00e9llo \U0001f600 "q" \\ back\nline\ttab\u0001')
    assert json.loads(events[2][4]) == {"id": 3, **{c.strip(): None for c in columns.split(",")}}


def test_row_key_is_the_primary_key_as_compact_json_in_key_order(db, dsn):
    # Given single, composite (declared out of column order), text and absent primary keys
    execute(
        db,
        """
        CREATE TABLE single (id bigint PRIMARY KEY, v text);
        CREATE TABLE composite (a text, b int, v text, PRIMARY KEY (b, a));
        CREATE TABLE texty ("K ey" text PRIMARY KEY, v text);
        CREATE TABLE keyless (id int UNIQUE, v text);
    """,
    )
    install_config(
        dsn, [{"table": t, "columns": ["v"]} for t in ("single", "composite", "texty", "keyless")]
    )
    odd = 'it\'s "q" \u00fc \U0001f600 \\ \t \u0001'
    # When rows change, including their keys
    execute(
        db,
        """
        INSERT INTO single VALUES (9223372036854775807, 'a');
        UPDATE single SET id = 42;
        DELETE FROM single;
        INSERT INTO composite VALUES ('x', 1, 'a');
        INSERT INTO keyless VALUES (1, 'a');
    """,
    )
    execute(db, "INSERT INTO texty VALUES (%s, 'a'); DELETE FROM texty", (odd,))
    # Then row_key is NEW's key for INSERT/UPDATE and OLD's for DELETE, keys in PK order;
    # a key change is a DELETE of the old key and an INSERT of the new one
    keys = [(e[2], e[0], e[3]) for e in outbox(db)]
    assert keys == [
        ("single", "INSERT", '{"id":9223372036854775807}'),
        ("single", "DELETE", '{"id":9223372036854775807}'),
        ("single", "INSERT", '{"id":42}'),
        ("single", "DELETE", '{"id":42}'),
        ("composite", "INSERT", '{"b":1,"a":"x"}'),
        ("keyless", "INSERT", None),
        ("texty", "INSERT", compact({"K ey": odd})),
        ("texty", "DELETE", compact({"K ey": odd})),
    ]


@pytest.mark.slow
def test_rows_of_300_kb_and_5_mb_are_captured_without_error(db, dsn):
    # Given a durable capture
    execute(db, "CREATE TABLE blobs (id int PRIMARY KEY, body text)")
    install_config(dsn, [{"table": "blobs"}])
    # When large rows are written
    for number, size in ((1, 300_000), (2, 5_000_000)):
        execute(db, "INSERT INTO blobs VALUES (%s, repeat('x', %s))", (number, size))
    # Then both are captured whole
    events = outbox(db)
    assert [len(json.loads(e[4])["body"]) for e in events] == [300_000, 5_000_000]


def test_a_rolled_back_transaction_leaves_nothing_in_the_outbox(db, dsn):
    # Given a durable capture
    execute(db, "CREATE TABLE t (id int PRIMARY KEY)")
    install_config(dsn, [{"table": "t"}])
    # When a transaction writes and rolls back
    db.autocommit = False
    execute(db, "INSERT INTO t VALUES (1)")
    db.rollback()
    db.autocommit = True
    # Then no event exists
    assert outbox(db) == []


def test_update_columns_and_when_limit_which_changes_are_captured(db, dsn):
    # Given an UPDATE filter on price and a condition on every operation
    execute(db, "CREATE TABLE t (id int PRIMARY KEY, price int, note text, hidden bool)")
    install_config(
        dsn,
        [
            {
                "table": "t",
                "update_columns": ["price"],
                "when": "current_setting('app.quiet', true) IS DISTINCT FROM 'on'",
            }
        ],
    )
    # When a note changes, then a price, then a quiet session writes
    execute(db, "INSERT INTO t VALUES (1, 10, 'a', false)")
    execute(db, "UPDATE t SET note = 'b'")
    execute(db, "UPDATE t SET price = 11")
    execute(db, "UPDATE t SET price = 11")
    execute(db, "SET app.quiet = 'on'; UPDATE t SET price = 12; DELETE FROM t")
    # Then only the insert and the real price change were captured
    assert [(e[0], json.loads(e[4])["price"]) for e in outbox(db)] == [
        ("INSERT", 10),
        ("UPDATE", 11),
    ]


def test_durable_trigger_functions_neither_notify_nor_open_subtransactions(db, dsn):
    execute(db, "CREATE TABLE t (id int PRIMARY KEY)")
    install_config(dsn, [{"table": "t"}])
    (source,) = execute(db, "SELECT prosrc FROM pg_proc WHERE proname LIKE 'capture%'")[0]
    assert "pg_notify" not in source and "EXCEPTION" not in source.upper()


# -- identifiers and injection -------------------------------------------------------------


def test_odd_identifiers_install_and_capture_correctly(db, dsn):
    # Given a quoted schema, table and columns, including unicode and 63-byte names
    long_schema, long_table = "s" * 63, "\u00e9" * 31 + "t"
    execute(
        db,
        f"""
        CREATE SCHEMA "My Schema";
        CREATE TABLE "My Schema"."Odd ""Table"" name" (
            "Weird Col""umn" int PRIMARY KEY, "名前 ünï" text, "Upper" text, r int);
        CREATE SCHEMA {long_schema};
        CREATE TABLE {long_schema}."{long_table}" (id int PRIMARY KEY);
    """,
    )
    install_config(
        dsn,
        [
            {
                "schema": "My Schema",
                "table": 'Odd "Table" name',
                "columns": ['Weird Col"umn', "名前 ünï", "r"],
                "update_columns": ["Upper"],
            },
            {"schema": long_schema, "table": long_table},
        ],
    )
    # When rows change
    execute(
        db,
        """
        INSERT INTO "My Schema"."Odd ""Table"" name" VALUES (7, 'ü', 'A', 1);
        UPDATE "My Schema"."Odd ""Table"" name" SET "名前 ünï" = 'skipped';
        UPDATE "My Schema"."Odd ""Table"" name" SET "Upper" = 'B';
    """,
    )
    execute(db, f'INSERT INTO {long_schema}."{long_table}" VALUES (1)')
    # Then names come through exactly
    events = outbox(db)
    assert events == [
        (
            "INSERT",
            "My Schema",
            'Odd "Table" name',
            '{"Weird Col\\"umn":7}',
            '{"Weird Col\\"umn":7,"名前 ünï":"ü","r":1}',
        ),
        (
            "UPDATE",
            "My Schema",
            'Odd "Table" name',
            '{"Weird Col\\"umn":7}',
            '{"Weird Col\\"umn":7,"名前 ünï":"skipped","r":1}',
        ),
        ("INSERT", long_schema, long_table, '{"id":1}', '{"id":1}'),
    ]
    assert all(len(f.encode()) < 80 for f in capture_functions(db))


VICTIM = "CREATE TABLE victim (id int); INSERT INTO victim VALUES (1);"
EVIL = [
    'x"; DROP TABLE victim; --',
    "'; DROP TABLE victim; --",
    "$$; DROP TABLE victim; $$",
    "$skor$; DROP TABLE victim; $skor$",
    "a */ DROP TABLE victim; /* --",
    "%s %I %L \\'; DROP TABLE victim; --",
]


@pytest.mark.slow
@pytest.mark.parametrize("field", ["table", "schema", "column", "update_column"])
def test_injection_through_a_missing_name_is_a_clear_error_and_harms_nothing(db, dsn, field):
    # Given a victim table and an existing target table
    execute(db, VICTIM + "CREATE TABLE target (id int PRIMARY KEY)")
    for evil in EVIL:
        entry = {"table": "target"}
        if field in ("table", "schema"):
            entry[field] = evil
        elif field == "column":
            entry["columns"] = [evil]
        else:
            entry["update_columns"] = [evil]
        # When the evil name is installed
        with pytest.raises(TriggerError) as info:
            install_config(dsn, [entry])
        # Then it is reported as missing, and nothing else happened
        assert "does not exist" in str(info.value)
        assert "\n" not in str(info.value).replace(evil, "")
        assert execute(db, "SELECT count(*) FROM victim") == [(1,)]
        assert user_triggers(db) == []


def test_existing_tables_with_hostile_names_are_quoted_everywhere(db, dsn, tmp_path):
    # Given tables and columns whose names try to break out of identifiers, literals,
    # dollar quotes, format() and comments
    execute(db, VICTIM)
    config = []
    for number, evil in enumerate(EVIL):
        execute(
            db,
            f'CREATE TABLE "{evil.replace(chr(34), chr(34) * 2)}" '
            f'(k{number} int PRIMARY KEY, "{evil.replace(chr(34), chr(34) * 2)}" text)',
        )
        config.append({"table": evil, "columns": [f"k{number}", evil]})
    path = write_config(tmp_path, config)
    for mode in ("durable", "notify"):
        # When installed through the API, and through psql from `generate`
        install(dsn, triggers.load_config(path), mode)
        result = cli("generate", path, "--mode", mode)
        assert result.exit_code == 0
        script = tmp_path / f"{mode}.sql"
        script.write_text(result.stdout, encoding="utf-8")
        applied = psql(dsn, script)
        assert applied.returncode == 0, applied.stderr
        # Then every table has its triggers and the victim survived
        assert len(user_triggers(db)) == 3 * len(EVIL)
        assert execute(db, "SELECT count(*) FROM victim") == [(1,)]
    install(dsn, triggers.load_config(path), "durable")
    for number, evil in enumerate(EVIL):
        table = ('"' + evil.replace('"', '""') + '"').replace("%", "%%")  # psycopg2 placeholders
        execute(db, f"INSERT INTO {table} VALUES (%s, %s)", (number, evil))
    events = outbox(db)
    assert [(e[2], json.loads(e[4])) for e in events] == [
        (evil, {f"k{number}": number, evil: evil}) for number, evil in enumerate(EVIL)
    ]


def test_a_when_condition_cannot_escape_its_parentheses():
    # Given conditions that try to end the WHEN clause or the statement
    bad = [
        "true) EXECUTE FUNCTION evil(",
        "true; DROP TABLE victim",
        "(true",
        "'unterminated",
        "true /* unterminated",
        "$x$ unterminated",
        "e'\\'' ) OR (true",
    ]
    good = [
        "id > 0",
        "note = ')' AND (x = ';')",
        "note = E'\\')'",
        'NEW.")" = $q$)$q$',
        "true -- trailing comment",
        "a /* (nested /* ) */ ; */ = b",
    ]
    for when in bad:
        with pytest.raises(ConfigError, match='"when" must be one SQL condition'):
            TableSpec(table="t", when=when)
    for when in good:
        assert TableSpec(table="t", when=when).when == when


def test_a_bad_when_condition_is_reported_with_postgresql_message(db, dsn):
    # Given a valid table and a condition PostgreSQL rejects
    execute(db, "CREATE TABLE t (id int PRIMARY KEY)")
    for when, message in (("NEW.nope > 1", "nope"), ("id >", "syntax error")):
        # When it is installed
        with pytest.raises(TriggerError) as info:
            install_config(dsn, [{"table": "t", "columns": {"insert": "*"}, "when": when}])
        # Then the error is PostgreSQL's, on one line, naming the table; nothing is installed
        assert message in str(info.value) and str(info.value).startswith('"public"."t": ')
        assert "\n" not in str(info.value)
        assert user_triggers(db) == []


# -- install, reinstall, uninstall ---------------------------------------------------------


def test_installing_again_replaces_what_was_installed_before(db, dsn):
    # Given capture on a and b, and a trigger left by Skor itself on c
    execute(
        db,
        """
        CREATE TABLE a (id int PRIMARY KEY, v text);
        CREATE TABLE b (id int PRIMARY KEY, v text);
        CREATE TABLE c (id int PRIMARY KEY);
        CREATE FUNCTION public.notify_skor_c_insert() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN PERFORM pg_notify('skor', 'x'); RETURN NULL; END $$;
        CREATE TRIGGER notify_skor_c_insert AFTER INSERT ON c
            FOR EACH ROW EXECUTE PROCEDURE public.notify_skor_c_insert();
    """,
    )
    install_config(dsn, [{"table": "a"}, {"table": "b"}])
    # When only b is installed, with other columns
    install_config(dsn, [{"table": "b", "columns": ["v"]}])
    # Then a and c lost their triggers and b captures the new columns
    assert user_triggers(db) == [
        ("b", f"!skor_capture_{op}") for op in ("delete", "insert", "update")
    ]
    assert len(capture_functions(db)) == 1
    execute(
        db, "INSERT INTO a VALUES (1, 'x'); INSERT INTO b VALUES (1, 'y'); INSERT INTO c VALUES (1)"
    )
    assert [(e[2], e[4]) for e in outbox(db)] == [("b", '{"v":"y"}')]


def test_uninstall_removes_every_trigger_and_purge_removes_the_schema(db, dsn):
    # Given durable capture on a and Skor's own notify trigger on b
    execute(db, "CREATE TABLE a (id int PRIMARY KEY); CREATE TABLE b (id int PRIMARY KEY)")
    install_config(dsn, [{"table": "a"}])
    execute(
        db,
        """
        CREATE FUNCTION public.notify_skor_b_insert() RETURNS trigger LANGUAGE plpgsql
            AS $$ BEGIN RETURN NULL; END $$;
        CREATE TRIGGER notify_skor_b_insert AFTER INSERT ON b
            FOR EACH ROW EXECUTE PROCEDURE public.notify_skor_b_insert();
    """,
    )
    # When uninstalled without purge
    assert uninstall(dsn) == 2
    # Then no trigger or function is left, but the outbox is kept
    assert user_triggers(db) == [] and capture_functions(db) == []
    assert execute(db, "SELECT to_regclass('skor.outbox') IS NOT NULL") == [(True,)]
    # When uninstalled with --purge through the CLI
    result = cli("uninstall", "--purge", env={"SKOR_DSN": dsn})
    # Then the skor schema is gone too
    assert result.exit_code == 0, result.output
    assert "removed 0 trigger function(s) and schema skor" in result.stdout
    assert execute(db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'skor'") == [(0,)]


def test_install_through_the_cli_prints_one_line_per_table(db, dsn, tmp_path):
    # Given the sample configuration's tables
    execute(
        db,
        """
        CREATE TABLE orders (id int PRIMARY KEY);
        CREATE TABLE customers (id int PRIMARY KEY);
        CREATE TABLE products (id int PRIMARY KEY, name text, price numeric);
        CREATE TABLE payments (id int PRIMARY KEY, status text);
    """,
    )
    # When the sample is installed through the CLI
    result = cli("install", "triggers/sample.triggers.json", "--dsn", dsn)
    # Then each table is summarised and its triggers exist
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [
        "public.orders: insert, update, delete",
        "public.customers: insert, update, delete",
        "public.products: insert, update, delete",
        "public.payments: insert, update, delete",
    ]
    assert len(user_triggers(db)) == 12


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"table": "nope"}, 'table "public"."nope" does not exist'),
        ({"table": "ok", "schema": "nope"}, 'table "nope"."ok" does not exist'),
        (
            {"table": "ok", "columns": ["id", "nope"]},
            'column "nope" of table "public"."ok" does not exist',
        ),
        (
            {"table": "ok", "columns": {"delete": ["nope"]}},
            'column "nope" of table "public"."ok" does not exist',
        ),
        (
            {"table": "ok", "update_columns": ["nope"]},
            'column "nope" of table "public"."ok" does not exist',
        ),
        ({"table": "ok_view"}, '"public"."ok_view" is not a table'),
    ],
)
def test_a_missing_table_or_column_fails_and_installs_nothing(db, dsn, tmp_path, entry, message):
    # Given an installed capture, and a new config whose second entry names something missing
    execute(
        db,
        "CREATE TABLE ok (id int PRIMARY KEY); CREATE TABLE other (id int PRIMARY KEY);"
        "CREATE VIEW ok_view AS SELECT * FROM ok",
    )
    install_config(dsn, [{"table": "other"}])
    before = user_triggers(db)
    # When it is installed
    result = cli("install", write_config(tmp_path, [{"table": "other"}, entry]), "--dsn", dsn)
    # Then one error line, exit 1, and the previous installation is untouched
    assert result.exit_code == 1
    assert result.stderr == f"error: {message}\n"
    assert user_triggers(db) == before


def test_a_failed_first_install_leaves_no_trace(db, dsn, tmp_path):
    execute(db, "CREATE TABLE ok (id int PRIMARY KEY)")
    result = cli(
        "install", write_config(tmp_path, [{"table": "ok"}, {"table": "nope"}]), "--dsn", dsn
    )
    assert result.exit_code == 1
    assert user_triggers(db) == []
    assert execute(db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'skor'") == [(0,)]


MALFORMED = [
    (
        '[{"table": "a",}]',
        "triggers.json: invalid JSON at line 1, column 16: "
        "Expecting property name enclosed in double quotes",
    ),
    ('{"table": "a"}', "triggers.json: expected a list of tables, got an object"),
    ('["a"]', 'triggers.json entry 1: expected an object with a "table" key, got a string'),
    ('[{"schema": "s"}]', 'triggers.json entry 1: "table" is required'),
    ('[{"table": ""}]', 'triggers.json entry 1: "table" is empty'),
    ('[{"table": 42}]', 'triggers.json entry 1: "table" must be a string, got a number'),
    (
        '[{"table": "a", "schema": null}]',
        'triggers.json entry 1: "schema" must be a string, got null',
    ),
    (
        '[{"table": "' + "x" * 64 + '"}]',
        'triggers.json entry 1: "table" is longer than 63 bytes, PostgreSQL\'s limit for a name',
    ),
    (
        '[{"table": "a"}, {"table": "b", "colums": "*"}]',
        "triggers.json entry 2: unknown key "
        '"colums" (expected table, schema, columns, update_columns, when, old)',
    ),
    (
        '[{"table": "a"}, {"table": "b", "columns": 42}]',
        'triggers.json entry 2: "columns" must '
        'be "*", a list of column names or a map of insert/update/delete',
    ),
    (
        '[{"table": "a", "columns": "id"}]',
        'triggers.json entry 1: "columns" must be "*", a list '
        "of column names or a map of insert/update/delete",
    ),
    (
        '[{"table": "a", "columns": []}]',
        'triggers.json entry 1: "columns" must not be an empty list',
    ),
    (
        '[{"table": "a", "columns": ["id", 1]}]',
        'triggers.json entry 1: "columns" must hold column names (strings), got a number',
    ),
    (
        '[{"table": "a", "columns": ["id", "id"]}]',
        'triggers.json entry 1: "columns" lists column "id" twice',
    ),
    (
        '[{"table": "a", "columns": {}}]',
        'triggers.json entry 1: "columns" must capture at least one of insert, update, delete',
    ),
    (
        '[{"table": "a", "columns": {"upsert": "*"}}]',
        'triggers.json entry 1: "columns" has '
        'unknown operation "upsert" (use insert, update, delete)',
    ),
    (
        '[{"table": "a", "columns": {"update": "id"}}]',
        'triggers.json entry 1: "columns.update" must be "*" or a list of column names',
    ),
    (
        '[{"table": "a", "columns": {"delete": []}}]',
        'triggers.json entry 1: "columns.delete" must not be an empty list',
    ),
    (
        '[{"table": "a"}, {"table": "b"}, {"table": "a", "schema": "public"}]',
        "triggers.json entry 3: table public.a is already configured by entry 1",
    ),
    ('[{"table": "a", "table": "b"}]', 'triggers.json entry 1: key "table" is given twice'),
    (
        '[{"table": "a", "update_columns": "id"}]',
        'triggers.json entry 1: "update_columns" must be a list of column names',
    ),
    (
        '[{"table": "a", "update_columns": []}]',
        'triggers.json entry 1: "update_columns" must not be an empty list',
    ),
    (
        '[{"table": "a", "columns": {"insert": "*"}, "update_columns": ["id"]}]',
        'triggers.json entry 1: "update_columns" needs the update operation to be captured',
    ),
    (
        '[{"table": "a", "when": true}]',
        'triggers.json entry 1: "when" must be a string holding an SQL condition',
    ),
    (
        '[{"table": "a", "when": "true; DROP TABLE x"}]',
        "triggers.json entry 1: \"when\" must be one SQL condition: it contains ';'",
    ),
]


@pytest.mark.parametrize("text, message", MALFORMED)
def test_a_malformed_config_is_one_line_naming_entry_and_field(tmp_path, text, message):
    # Given a malformed triggers.json
    path = write_config(tmp_path, text)
    # When it is generated
    result = cli("generate", path)
    # Then exit 2 with one line naming the entry and field
    assert result.exit_code == 2
    assert result.stderr == f"error: {message.replace('triggers.json', str(path), 1)}\n"
    assert result.stdout == ""


def test_a_malformed_config_installs_nothing(db, dsn, tmp_path):
    execute(db, "CREATE TABLE a (id int PRIMARY KEY)")
    path = write_config(tmp_path, [{"table": "a"}, {"table": "a"}])
    result = cli("install", path, "--dsn", dsn)
    assert result.exit_code == 2 and "already configured by entry 1" in result.stderr
    assert user_triggers(db) == []


def test_a_missing_config_file_is_a_config_error(tmp_path):
    result = cli("generate", tmp_path / "absent.json")
    assert result.exit_code == 2
    assert result.stderr == f"error: {tmp_path / 'absent.json'}: No such file or directory\n"


# -- notify mode ---------------------------------------------------------------------------


def listen(dsn):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    execute(conn, "LISTEN skor")
    return conn


def notifications(conn, count, timeout=5.0):
    deadline = time.monotonic() + timeout
    while len(conn.notifies) < count and time.monotonic() < deadline:
        select.select([conn], [], [], deadline - time.monotonic())
        conn.poll()
    return [n.payload for n in conn.notifies]


def test_notify_mode_sends_skor_payloads_from_skor_named_triggers(db, dsn):
    # Given notify-mode capture, as Skor installed it, on a plain and an oddly named table
    long_table = "t" * 60
    execute(
        db,
        f"""
        CREATE TABLE orders (id int PRIMARY KEY, note text);
        CREATE TABLE "Odd ""N"" é" (id int PRIMARY KEY, note text);
        CREATE TABLE {long_table} (id int PRIMARY KEY);
    """,
    )
    install_config(
        dsn,
        [
            {"table": "orders"},
            {"table": 'Odd "N" é', "columns": ["note"]},
            {"table": long_table, "columns": {"insert": "*"}},
        ],
        mode="notify",
    )
    assert [f for f in capture_functions(db) if "orders" in f] == [
        f"notify_skor_orders_{op}()" for op in ("delete", "insert", "update")
    ]
    listener = listen(dsn)
    try:
        # When rows change
        execute(db, "INSERT INTO orders VALUES (1, 'a\"b')")
        expected = [
            execute(
                db,
                "SELECT json_build_object('table', 'orders', 'schema', "
                "'public', 'op', 'INSERT', 'data', row_to_json(t))::text "
                "FROM orders t",
            )[0][0]
        ]
        execute(
            db,
            """INSERT INTO "Odd ""N"" é" VALUES (2, 'x');"""
            f"INSERT INTO {long_table} VALUES (3); DELETE FROM orders",
        )
        payloads = notifications(listener, 4)
    finally:
        listener.close()
    # Then each payload is Skor's json_build_object text
    assert payloads[0] == expected[0]
    assert payloads[0] == (
        '{"table" : "orders", "schema" : "public", "op" : "INSERT", '
        '"data" : {"id":1,"note":"a\\"b"}}'
    )
    assert [json.loads(p) for p in payloads[1:]] == [
        {"table": 'Odd "N" é', "schema": "public", "op": "INSERT", "data": {"note": "x"}},
        {"table": long_table, "schema": "public", "op": "INSERT", "data": {"id": 3}},
        {"table": "orders", "schema": "public", "op": "DELETE", "data": {"id": 1, "note": 'a"b'}},
    ]
    # And nothing went to the outbox
    assert outbox(db) == []


def test_notify_mode_fails_writes_over_8000_bytes_and_durable_mode_does_not(db, dsn):
    # Given notify-mode capture (Skor's documented limit)
    execute(db, "CREATE TABLE t (id int PRIMARY KEY, body text)")
    install_config(dsn, [{"table": "t"}], mode="notify")
    # When a row over 8000 bytes is written, then the write itself fails
    with pytest.raises(psycopg2.errors.InvalidParameterValue, match="payload string too long"):
        execute(db, "INSERT INTO t VALUES (1, repeat('x', 8000))")
    assert execute(db, "SELECT count(*) FROM t") == [(0,)]
    # When durable mode replaces it, the same write succeeds and is captured
    install_config(dsn, [{"table": "t"}])
    execute(db, "INSERT INTO t VALUES (1, repeat('x', 8000))")
    assert len(outbox(db)) == 1


# -- generate + psql, connection errors ----------------------------------------------------


def test_generated_sql_applied_with_psql_installs_working_triggers(db, dsn, tmp_path):
    # Given tables and the output of `triggers generate`, made without any database
    execute(
        db,
        "CREATE TABLE a (x text, y int, PRIMARY KEY (y, x)); "
        "CREATE TABLE b (id int PRIMARY KEY, v text)",
    )
    config = write_config(
        tmp_path,
        [{"table": "a"}, {"table": "b", "columns": {"update": ["v"]}, "update_columns": ["v"]}],
    )
    result = cli("generate", config)
    assert result.exit_code == 0
    script = tmp_path / "triggers.sql"
    script.write_text(result.stdout, encoding="utf-8")
    # When psql applies it in one transaction
    applied = psql(dsn, script)
    assert applied.returncode == 0 and applied.stderr == ""
    # Then the triggers capture like install's, with primary keys found at apply time
    execute(
        db,
        "INSERT INTO a VALUES ('k', 1); INSERT INTO b VALUES (1, 'v');"
        "UPDATE b SET v = 'w'; UPDATE b SET id = 2",
    )
    assert [(e[0], e[2], e[3], e[4]) for e in outbox(db)] == [
        ("INSERT", "a", '{"y":1,"x":"k"}', '{"x":"k","y":1}'),
        ("UPDATE", "b", '{"id":1}', '{"v":"w"}'),
        ("DELETE", "b", '{"id":1}', '{"v":"w"}'),
        ("INSERT", "b", '{"id":2}', '{"v":"w"}'),
    ]


def test_psql_applying_a_config_with_a_missing_table_changes_nothing(db, dsn, tmp_path):
    execute(db, "CREATE TABLE a (id int PRIMARY KEY)")
    result = cli(
        "generate", write_config(tmp_path, [{"table": "a"}, {"table": "gone"}]), "--mode", "notify"
    )
    script = tmp_path / "triggers.sql"
    script.write_text(result.stdout, encoding="utf-8")
    applied = psql(dsn, script)
    assert applied.returncode != 0 and 'table "public"."gone" does not exist' in applied.stderr
    assert user_triggers(db) == []


def test_an_unreachable_database_is_a_one_line_startup_error_without_the_password(tmp_path):
    secret = "s3cr3t-Pa55"
    config = write_config(tmp_path, [{"table": "a"}])
    for dsn in (
        f"postgresql://skor:{secret}@127.0.0.1:1/db",
        f"host=127.0.0.1 port=1 user=skor password={secret} dbname=db",
    ):
        # When install or uninstall cannot connect
        with pytest.raises(StartupError) as info:
            install(dsn, triggers.load_config(config))
        # Then the error is one line and hides the password
        assert secret not in str(info.value) and "\n" not in str(info.value)
        result = cli("uninstall", "--dsn", dsn)
        assert result.exit_code == 1
        assert result.stderr.startswith("error: cannot connect to PostgreSQL")
        assert secret not in result.output and len(result.stderr.splitlines()) == 1


def test_generate_rejects_an_unknown_mode(tmp_path):
    result = cli("generate", write_config(tmp_path, [{"table": "a"}]), "--mode", "lossy")
    assert result.exit_code == 2
    with pytest.raises(ConfigError, match="mode: must be one of durable, notify"):
        generate_sql([TableSpec(table="a")], "lossy")  # type: ignore[arg-type]


def test_install_with_grant_lets_another_role_write_to_captured_tables(dsn, db, tmp_path):
    # Given a table written by a role that does not own schema skor
    role = f"writer_{uuid.uuid4().hex[:8]}"
    with db.cursor() as cur:
        cur.execute("CREATE TABLE items (id int PRIMARY KEY)")
        cur.execute(f'CREATE ROLE "{role}" LOGIN')
        cur.execute(f'GRANT INSERT ON items TO "{role}"')
    try:
        # When the triggers are installed with --grant for that role
        config = write_config(tmp_path, [{"table": "items"}])
        result = runner.invoke(
            triggers_app, ["install", str(config), "--dsn", dsn, "--grant", role]
        )
        assert result.exit_code == 0, result.output
        conn = psycopg2.connect(dsn + f" user={role}")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("INSERT INTO items VALUES (1)")
        conn.close()
        # Then its write was captured
        with db.cursor() as cur:
            cur.execute("SELECT count(*) FROM skor.outbox")
            assert cur.fetchone()[0] == 1
    finally:
        with db.cursor() as cur:
            cur.execute("DROP TABLE items CASCADE")
            cur.execute(f'REVOKE ALL ON ALL TABLES IN SCHEMA skor FROM "{role}"')
            cur.execute(f'REVOKE ALL ON SCHEMA skor FROM "{role}"')
            cur.execute(f'DROP ROLE "{role}"')
