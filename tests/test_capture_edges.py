"""Trigger capture on real schemas and hostile input (issue 9 items 1-6, 8, 9; issue 16.2).

Every test talks to the machine's PostgreSQL; each item's test failed before its fix.
"""

from __future__ import annotations

import json
import threading
import time
import uuid

import psycopg2
import pytest

from skor_bridge.capture import triggers
from skor_bridge.capture.triggers import TableSpec, capture_function_name, install
from skor_bridge.errors import ConfigError, TriggerError
from skor_bridge.event import ChangeEvent
from tests.test_triggers import cli, execute, install_config, outbox, user_triggers, write_config


def connect(dsn, **settings):
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    for name, value in settings.items():
        execute(conn, f"SET {name} = %s", (value,))
    return conn


def events(db):
    """(op, table, row_key, data as dict) per captured event, oldest first."""
    return [(op, table, key, json.loads(data)) for op, _, table, key, data in outbox(db)]


# -- 9.1 user triggers ---------------------------------------------------------------------


def test_a_user_after_trigger_that_sorts_first_cannot_reorder_a_rows_events(db, dsn, tmp_path):
    # Given a user AFTER ROW trigger named to fire before ours, updating the row just written
    execute(
        db,
        """
        CREATE TABLE t (id int PRIMARY KEY, v text, filled text);
        CREATE FUNCTION fill() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN UPDATE t SET filled = 'yes' WHERE id = NEW.id; RETURN NULL; END $$;
        CREATE TRIGGER "A_fill" AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION fill();
        CREATE TRIGGER "0fill" AFTER INSERT ON t FOR EACH ROW EXECUTE FUNCTION fill();
    """,
    )
    result = cli("install", write_config(tmp_path, [{"table": "t"}]), "--dsn", dsn)
    assert result.exit_code == 0, result.output
    # Then install names the other AFTER ROW triggers
    assert '"A_fill"' in result.stderr and '"0fill"' in result.stderr
    # When a row is inserted (two rows in one statement)
    execute(db, "INSERT INTO t (id, v) VALUES (1, 'a'), (2, 'b')")
    # Then each row's INSERT (with the row as inserted) comes before the UPDATEs it caused
    got = [(op, key, data["filled"]) for op, _, key, data in events(db)]
    for number in (1, 2):
        key = f'{{"id":{number}}}'
        assert [(op, filled) for op, k, filled in got if k == key] == [
            ("INSERT", None),
            ("UPDATE", "yes"),
            ("UPDATE", "yes"),
        ]


# -- 9.2 deferrable keys -------------------------------------------------------------------


def test_a_deferrable_primary_key_is_refused_with_one_line_naming_it(db, dsn, tmp_path):
    execute(
        db,
        "CREATE TABLE ok (id int PRIMARY KEY);"
        "CREATE TABLE d (id int, CONSTRAINT d_key PRIMARY KEY (id)"
        " DEFERRABLE INITIALLY DEFERRED)",
    )
    result = cli("install", write_config(tmp_path, [{"table": "ok"}, {"table": "d"}]), "--dsn", dsn)
    assert result.exit_code == 1
    assert len(result.stderr.splitlines()) == 1
    assert '"d_key"' in result.stderr and "DEFERRABLE" in result.stderr
    assert user_triggers(db) == []


# -- 9.3 partitioned tables ----------------------------------------------------------------

PARTITIONED = """
CREATE TABLE m (id int, region text, v text, PRIMARY KEY (id, region)) PARTITION BY LIST (region);
CREATE TABLE m_eu PARTITION OF m FOR VALUES IN ('eu');
CREATE TABLE m_us PARTITION OF m FOR VALUES IN ('us');
"""


def test_partitioned_table_events_carry_the_root_name_and_moves_are_key_changes(db, dsn):
    # Given capture on a partitioned table, and a partition attached after install
    execute(db, PARTITIONED)
    install_config(dsn, [{"table": "m"}])
    execute(
        db,
        "CREATE TABLE m_asia (LIKE m); ALTER TABLE m ATTACH PARTITION m_asia "
        "FOR VALUES IN ('asia')",
    )
    # When a row is inserted, updated in place, moved to other partitions and deleted
    execute(db, "INSERT INTO m VALUES (1, 'eu', 'a')")
    execute(db, "UPDATE m SET v = 'b' WHERE id = 1")
    execute(db, "UPDATE m SET region = 'us' WHERE id = 1")
    execute(db, "UPDATE m SET region = 'asia', v = 'c' WHERE id = 1")
    execute(db, "DELETE FROM m WHERE id = 1")
    # Then every event names the root table; a move is a DELETE of the old key, then an
    # INSERT of the new one
    eu, us, asia = (f'{{"id":1,"region":"{r}"}}' for r in ("eu", "us", "asia"))
    assert [(op, table, key, data["v"]) for op, table, key, data in events(db)] == [
        ("INSERT", "m", eu, "a"),
        ("UPDATE", "m", eu, "b"),
        ("DELETE", "m", eu, "b"),
        ("INSERT", "m", us, "b"),
        ("DELETE", "m", us, "b"),
        ("INSERT", "m", asia, "c"),
        ("DELETE", "m", asia, "c"),
    ]


def test_update_only_capture_of_a_partitioned_table_does_not_lose_moves(db, dsn):
    execute(db, PARTITIONED)
    install_config(dsn, [{"table": "m", "columns": {"update": ["id", "v"]}}])
    execute(db, "INSERT INTO m VALUES (1, 'eu', 'a')")
    execute(db, "UPDATE m SET v = 'b' WHERE id = 1")
    execute(db, "UPDATE m SET region = 'us', v = 'c' WHERE id = 1")
    execute(db, "DELETE FROM m")
    assert [(op, table, key, data) for op, table, key, data in events(db)] == [
        ("UPDATE", "m", '{"id":1,"region":"eu"}', {"id": 1, "v": "b"}),
        ("DELETE", "m", '{"id":1,"region":"eu"}', {"id": 1, "v": "b"}),
        ("INSERT", "m", '{"id":1,"region":"us"}', {"id": 1, "v": "c"}),
    ]


# -- 9.4 canonical keys --------------------------------------------------------------------


def test_one_row_has_one_key_whatever_the_writers_session(db, dsn):
    # Given keys whose JSON rendering depends on the session or on the value's spelling
    execute(
        db,
        """
        CREATE EXTENSION IF NOT EXISTS citext;
        CREATE TABLE at_time (at timestamptz PRIMARY KEY, v text);
        CREATE TABLE amount (n numeric PRIMARY KEY, v text);
        CREATE TABLE names (name citext PRIMARY KEY, v text);
    """,
    )
    install_config(dsn, [{"table": t} for t in ("at_time", "amount", "names")])
    tokyo = connect(dsn, TimeZone="Asia/Tokyo")
    new_york = connect(dsn, TimeZone="America/New_York")
    try:
        # When two sessions in different time zones write the same rows, spelled differently
        execute(
            tokyo,
            "INSERT INTO at_time VALUES ('2024-06-01 12:00+00', 'a');"
            "INSERT INTO amount VALUES (1.0, 'a');"
            "INSERT INTO names VALUES ('Ann', 'a')",
        )
        execute(
            new_york,
            "UPDATE at_time SET v = 'b', at = '2024-06-01 08:00-04';"
            "UPDATE amount SET v = 'b', n = 1.00;"
            "UPDATE names SET v = 'b', name = 'ANN'",
        )
    finally:
        tokyo.close()
        new_york.close()
    # Then each row keeps one key (no key change either), and that key is the UTC rendering
    got = [(op, table, key) for op, table, key, _ in events(db)]
    assert got == [
        ("INSERT", "at_time", '{"at":"2024-06-01T12:00:00+00:00"}'),
        ("INSERT", "amount", '{"n":1}'),
        ("INSERT", "names", '{"name":"ann"}'),
        ("UPDATE", "at_time", '{"at":"2024-06-01T12:00:00+00:00"}'),
        ("UPDATE", "amount", '{"n":1}'),
        ("UPDATE", "names", '{"name":"ann"}'),
    ]


# -- 9.5 key changes -----------------------------------------------------------------------


def test_an_update_of_the_primary_key_is_a_delete_of_the_old_key_then_an_insert(db, dsn):
    execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, v text, n int);"
        "CREATE TABLE u (id int PRIMARY KEY, v text, n int)",
    )
    install_config(
        dsn,
        [
            {"table": "t"},
            {"table": "u", "columns": {"update": ["id", "v"]}, "update_columns": ["n"]},
        ],
    )
    execute(
        db,
        "INSERT INTO t VALUES (1, 'a', 0); UPDATE t SET id = 2, v = 'b';"
        "INSERT INTO u VALUES (1, 'a', 0); UPDATE u SET id = 2, v = 'b'",
    )
    assert [(op, table, key, data) for op, table, key, data in events(db)] == [
        ("INSERT", "t", '{"id":1}', {"id": 1, "v": "a", "n": 0}),
        ("DELETE", "t", '{"id":1}', {"id": 1, "v": "a", "n": 0}),
        ("INSERT", "t", '{"id":2}', {"id": 2, "v": "b", "n": 0}),
        # update-only capture filtered on n: the key change is still told
        ("DELETE", "u", '{"id":1}', {"id": 1, "v": "a"}),
        ("INSERT", "u", '{"id":2}', {"id": 2, "v": "b"}),
    ]


# -- 9.6 schema changes --------------------------------------------------------------------


@pytest.mark.slow
def test_renaming_or_dropping_captured_columns_never_fails_a_write(db, dsn):
    # Given capture of every column of t and of listed columns of u
    execute(
        db,
        "CREATE TABLE t (id int PRIMARY KEY, a text, b text);"
        "CREATE TABLE u (id int PRIMARY KEY, a text, b text)",
    )
    install_config(dsn, [{"table": "t"}, {"table": "u", "columns": ["id", "a", "b"]}])
    with db.cursor() as cur:
        assert triggers.capture_problems(cur) == []
    # When the captured columns, the key included, are renamed or dropped
    execute(
        db,
        "ALTER TABLE t RENAME COLUMN a TO a2; ALTER TABLE t DROP COLUMN b;"
        "ALTER TABLE u RENAME COLUMN a TO a2; ALTER TABLE u DROP COLUMN b;"
        "ALTER TABLE u RENAME COLUMN id TO ident",
    )
    # Then writes still succeed and are captured with the columns that exist
    execute(
        db,
        "INSERT INTO t VALUES (1, 'x'); UPDATE t SET a2 = 'y';"
        "INSERT INTO u VALUES (1, 'x'); UPDATE u SET a2 = 'y'; DELETE FROM u",
    )
    assert [(op, table, key, data) for op, table, key, data in events(db)] == [
        ("INSERT", "t", '{"id":1}', {"id": 1, "a2": "x"}),
        ("UPDATE", "t", '{"id":1}', {"id": 1, "a2": "y"}),
        ("INSERT", "u", None, {}),
        ("UPDATE", "u", None, {}),
        ("DELETE", "u", None, {}),
    ]
    # And the problems are reported, per table
    with db.cursor() as cur:
        problems = triggers.capture_problems(cur)
    for column in ("a", "b"):
        assert f"public.u: column {column} does not exist any more" in " ".join(problems)
    assert any(p.startswith("public.u: primary key changed from (id) to (ident)") for p in problems)
    assert not any(p.startswith("public.t: ") for p in problems)
    # And `skor-bridge status` shows them
    from typer.testing import CliRunner

    from skor_bridge.cli import app

    shown = CliRunner().invoke(app, ["status", "--dsn", dsn])
    assert shown.exit_code == 0, shown.output
    assert "capture needs a look: public.u: " in shown.stdout
    assert shown.stdout.count("capture needs a look") == len(problems)


# -- 9.8 injection through `when` ----------------------------------------------------------


def test_a_carriage_return_cannot_end_a_comment_and_run_sql(db, dsn):
    execute(db, "CREATE TABLE victim (id int); CREATE TABLE t (id int PRIMARY KEY)")
    fn = f'skor."{capture_function_name("public", "t")}"'
    attack = (
        f"true --\r)) EXECUTE FUNCTION {fn}(); DROP TABLE victim; "
        "CREATE TRIGGER zz AFTER INSERT ON t FOR EACH ROW WHEN ((true"
    )
    entry = {"table": "t", "columns": {"insert": "*"}, "when": attack}
    # The config refuses the control character
    with pytest.raises(ConfigError, match="control character"):
        install_config(dsn, [entry])
    # And PostgreSQL's parser refuses a second statement even past the config checks
    spec = TableSpec(table="t", columns=(("insert", None),), when="true")
    object.__setattr__(spec, "when", attack)
    with pytest.raises(TriggerError):
        install(dsn, [spec])
    assert execute(db, "SELECT count(*) FROM victim") == [(0,)]


@pytest.mark.parametrize("name", ["a\rb", "a\x01", "a\x7fb", "a\nb"])
def test_control_characters_are_refused_in_names(name):
    with pytest.raises(ConfigError, match="control character"):
        TableSpec(table=name)
    with pytest.raises(ConfigError, match="control character"):
        TableSpec(table="t", columns=(("insert", (name,)),))


# -- 9.9 privileges and forged events ------------------------------------------------------


@pytest.fixture
def writer_role(db):
    role = f"writer_{uuid.uuid4().hex[:8]}"
    execute(db, f'CREATE ROLE "{role}" LOGIN')
    yield role
    execute(db, f'DROP OWNED BY "{role}"; DROP ROLE "{role}"')


def test_a_writer_cannot_forge_events_but_its_writes_are_captured(db, dsn, tmp_path, writer_role):
    # Given a table written by another role, and an old install that granted it the outbox
    execute(db, f'CREATE TABLE items (id int PRIMARY KEY);GRANT INSERT ON items TO "{writer_role}"')
    install_config(dsn, [{"table": "items"}])
    execute(
        db,
        f'GRANT USAGE ON SCHEMA skor TO "{writer_role}";'
        f'GRANT INSERT ON skor.outbox TO "{writer_role}"',
    )
    # When installed (again) with --grant
    result = cli(
        "install",
        write_config(tmp_path, [{"table": "items"}]),
        "--dsn",
        dsn,
        "--grant",
        writer_role,
    )
    assert result.exit_code == 0, result.output
    writer = psycopg2.connect(dsn + f" user={writer_role}")
    writer.autocommit = True
    try:
        # Then its writes are captured, but writing the outbox directly is refused
        execute(writer, "INSERT INTO items VALUES (1)")
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            execute(
                writer,
                "INSERT INTO skor.outbox (schema_name, table_name, op, data)"
                " VALUES ('public', 'payments', 'INSERT', '{}')",
            )
    finally:
        writer.close()
    assert [(op, table) for op, table, _, _ in events(db)] == [("INSERT", "items")]
    (secdef, config) = execute(
        db, "SELECT prosecdef, proconfig FROM pg_proc WHERE proname LIKE 'capture%'"
    )[0]
    assert secdef and config == ["search_path=pg_catalog, pg_temp"]


def test_an_op_is_escaped_in_the_body_and_unknown_ops_are_refused():
    forged = ChangeEvent(
        id="1", position=1, schema="s", table="t", op='INSERT", "admin": true, "x": "', data="{}"
    )
    body = json.loads(forged.body())
    assert body["op"] == 'INSERT", "admin": true, "x": "' and "admin" not in body
    assert ChangeEvent.known_op("READ") and not ChangeEvent.known_op(forged.op)


# -- 16.2 installs never block the application ---------------------------------------------


def timed(conn, sql):
    start = time.monotonic()
    execute(conn, sql)
    return time.monotonic() - start


@pytest.mark.slow
def test_an_install_waiting_on_one_table_never_blocks_the_others(db, dsn, tmp_path):
    # Given capture on a and b, and an application transaction left open on b
    execute(
        db,
        "CREATE TABLE a (id int PRIMARY KEY, v text); CREATE TABLE b (id int PRIMARY KEY, v text)",
    )
    install_config(dsn, [{"table": "a"}, {"table": "b"}])
    blocker = psycopg2.connect(dsn)
    execute(blocker, "INSERT INTO b VALUES (1, 'open')")
    app = connect(dsn, statement_timeout="20s")
    try:
        # When reinstalling the same config, nothing waits at all
        started = time.monotonic()
        install_config(dsn, [{"table": "a"}, {"table": "b"}])
        assert time.monotonic() - started < 5
        # When a changed config (triggers too) is installed while b stays busy
        quiet = "current_setting('app.quiet', true) IS NULL"
        done = threading.Event()
        errors: list[BaseException] = []

        def run() -> None:
            try:
                install_config(
                    dsn, [{"table": t, "columns": ["id"], "when": quiet} for t in ("a", "b")]
                )
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)
            done.set()

        thread = threading.Thread(target=run)
        thread.start()
        # Then the application's reads and writes of a never wait more than a moment
        worst = 0.0
        for number in range(40):
            worst = max(
                worst,
                timed(app, "SELECT count(*) FROM a"),
                timed(app, f"INSERT INTO a VALUES ({number + 10}, 'x')"),
            )
            time.sleep(0.05)
        assert not done.is_set()
        assert worst < 1.0
        # And the install completes once b is free
        blocker.commit()
        assert done.wait(60) and not errors, errors
    finally:
        blocker.close()
        app.close()
    execute(db, "INSERT INTO a VALUES (100, 'y')")
    assert outbox(db)[-1][4] == '{"id":100}'


@pytest.mark.slow
def test_an_install_that_cannot_get_its_locks_gives_up_with_one_line(db, dsn):
    execute(db, "CREATE TABLE a (id int PRIMARY KEY)")
    install_config(dsn, [{"table": "a"}])
    blocker = psycopg2.connect(dsn)
    execute(blocker, "INSERT INTO a VALUES (1)")
    try:
        with pytest.raises(TriggerError) as info:
            install(dsn, [TableSpec(table="a", when="1 = 1")], lock_wait=2)
    finally:
        blocker.close()
    message = str(info.value)
    assert "\n" not in message and '"public"."a"' in message and "lock" in message


# -- notify mode gets the same fixes -------------------------------------------------------


def test_notify_mode_names_the_root_table_and_tells_key_changes(db, dsn):
    from tests.test_triggers import listen, notifications

    execute(db, PARTITIONED + "CREATE TABLE t (id int PRIMARY KEY, v text)")
    install_config(dsn, [{"table": "m"}, {"table": "t", "columns": ["v"]}], mode="notify")
    listener = listen(dsn)
    try:
        # (one statement per transaction: PostgreSQL folds equal payloads of one transaction)
        for sql in (
            "INSERT INTO m VALUES (1, 'eu', 'a')",
            "UPDATE m SET region = 'us'",
            "INSERT INTO t VALUES (1, 'a')",
            "UPDATE t SET id = 2",
            "UPDATE t SET v = 'b'",
        ):
            execute(db, sql)
        payloads = [json.loads(p) for p in notifications(listener, 7)]
    finally:
        listener.close()
    assert [(p["op"], p["table"], p["data"]) for p in payloads] == [
        ("INSERT", "m", {"id": 1, "region": "eu", "v": "a"}),
        ("DELETE", "m", {"id": 1, "region": "eu", "v": "a"}),
        ("INSERT", "m", {"id": 1, "region": "us", "v": "a"}),
        ("INSERT", "t", {"v": "a"}),
        ("DELETE", "t", {"v": "a"}),
        ("INSERT", "t", {"v": "a"}),
        ("UPDATE", "t", {"v": "b"}),
    ]
    assert user_triggers(db)[0][1].startswith("!notify_skor_")


def test_row_key_sql_gives_other_producers_the_triggers_key(db, dsn):
    # Given rows captured by the triggers
    execute(
        db,
        "CREATE EXTENSION IF NOT EXISTS citext;"
        "CREATE TABLE k (at timestamptz, n numeric, c citext, i int,"
        " PRIMARY KEY (at, n, c, i))",
    )
    install_config(dsn, [{"table": "k"}])
    execute(db, "SET TimeZone = 'Asia/Tokyo'; INSERT INTO k VALUES (now(), 2.50, 'Ab', 1)")
    # When another producer computes the key with row_key_sql from a session elsewhere
    from skor_bridge.capture.trigger_sql import row_key_sql

    key = [
        ("at", "timestamp with time zone"),
        ("n", "numeric(10,2)"),
        ("c", "public.citext"),
        ("i", "integer"),
    ]
    execute(db, "SET TimeZone = 'America/New_York'")
    (computed,) = execute(db, f"SELECT {row_key_sql('row_to_json(k)', key)} FROM k")[0]
    # Then it is the triggers' key, byte for byte
    assert computed == outbox(db)[0][3]
    assert '"n":2.5,"c":"ab","i":1}' in computed


def test_reinstall_replaces_an_earlier_releases_trigger_names(db, dsn):
    # Given a table captured by triggers named as release 0.1 named them
    execute(db, "CREATE TABLE t (id int PRIMARY KEY, v text)")
    install_config(dsn, [{"table": "t"}])
    for op in ("insert", "update", "delete"):
        execute(db, f'ALTER TRIGGER "!skor_capture_{op}" ON t RENAME TO skor_capture_{op}')
    # When installed again
    install_config(dsn, [{"table": "t"}])
    # Then only the new names remain, and each change is captured once
    assert [name for _, name in user_triggers(db)] == [
        "!skor_capture_delete",
        "!skor_capture_insert",
        "!skor_capture_update",
    ]
    execute(db, "INSERT INTO t VALUES (1, 'a')")
    assert len(outbox(db)) == 1


@pytest.mark.slow
def test_reinstalling_takes_no_lock_that_stalls_a_running_bridge(db, dsn):
    # Given capture installed, and a bridge-like session writing every skor table
    execute(db, "CREATE TABLE a (id int PRIMARY KEY)")
    install_config(dsn, [{"table": "a"}])
    tables = [
        r[0]
        for r in execute(
            db,
            "SELECT format('skor.%I', relname) FROM pg_class "
            "WHERE relnamespace = 'skor'::regnamespace "
            "AND relkind IN ('r', 'p')",
        )
    ]
    bridge = psycopg2.connect(dsn)
    execute(bridge, "".join(f"LOCK TABLE {t} IN ROW EXCLUSIVE MODE;" for t in tables))
    try:
        # When the same config and a changed one are installed
        started = time.monotonic()
        install(dsn, [TableSpec(table="a")], lock_wait=5)
        install(dsn, [TableSpec(table="a", columns=(("insert", ("id",)),))], lock_wait=5)
        # Then neither waited on the bridge's tables
        assert time.monotonic() - started < 5
    finally:
        bridge.close()


def test_the_generated_script_holds_no_control_characters():
    specs = [
        TableSpec(table="t", update_columns=("v",), when="NEW.v > 0 -- note"),
        TableSpec(table="u", columns=(("update", ("a", "b")),)),
    ]
    for mode in ("durable", "notify"):
        script = triggers.generate_sql(specs, mode)
        assert not [c for c in script if c < " " and c not in "\n\t"]


def test_upgrading_revokes_what_earlier_releases_granted_writers(db, dsn, writer_role):
    # Given a database where 0.1's `--grant` gave a writer INSERT on the outbox
    execute(db, "CREATE TABLE items (id int PRIMARY KEY)")
    install_config(dsn, [{"table": "items"}])
    execute(
        db,
        f'GRANT USAGE ON SCHEMA skor TO "{writer_role}";'
        f'GRANT INSERT ON skor.outbox TO "{writer_role}";'
        "GRANT SELECT ON skor.log TO PUBLIC;"
        "DELETE FROM skor.migrations WHERE version = 11",
    )
    # When the schema is brought up to date
    install_config(dsn, [{"table": "items"}])
    # Then no role but the owner keeps any privilege on skor's tables
    assert (
        execute(
            db,
            """
        SELECT c.relname, a.grantee::regrole::text, a.privilege_type
        FROM pg_class c CROSS JOIN LATERAL aclexplode(c.relacl) a
        WHERE c.relnamespace = 'skor'::regnamespace AND a.grantee <> c.relowner""",
        )
        == []
    )


@pytest.mark.slow
def test_turning_old_on_replaces_the_function_in_place_without_waiting_on_the_application(db, dsn):
    # Given a table captured without "old", whose UPDATE records no old row
    execute(db, "CREATE TABLE a (id int PRIMARY KEY, v text, secret text)")
    install_config(dsn, [{"table": "a", "columns": ["id", "v"]}])
    execute(db, "INSERT INTO a VALUES (1, 'x', 's'), (2, 'y', 's')")
    execute(db, "UPDATE a SET v = 'x1' WHERE id = 1")
    assert execute(db, "SELECT old FROM skor.outbox WHERE op = 'UPDATE'") == [(None,)]
    # When "old" is turned on while the application holds an open write on the table
    app = psycopg2.connect(dsn)
    execute(app, "UPDATE a SET v = 'y1' WHERE id = 2")  # uncommitted: ROW EXCLUSIVE on a
    try:
        started = time.monotonic()
        install_config(dsn, [{"table": "a", "columns": ["id", "v"], "old": True}])
        # Then the install did not wait for it (only the function changed, no trigger)
        assert time.monotonic() - started < 5
        app.commit()
    finally:
        app.close()
    # And UPDATEs record the old row, with the configured columns only
    execute(db, "UPDATE a SET v = 'x2', secret = 't' WHERE id = 1")
    assert execute(db, "SELECT op, data, old FROM skor.outbox ORDER BY id")[-2:] == [
        ("UPDATE", '{"id":2,"v":"y1"}', None),  # committed after the install: old function
        ("UPDATE", '{"id":1,"v":"x2"}', '{"id":1,"v":"x1"}'),
    ]
    # And a key change stays a DELETE and an INSERT, without old
    execute(db, "UPDATE a SET id = 3 WHERE id = 1")
    assert execute(db, "SELECT op, old FROM skor.outbox ORDER BY id")[-2:] == [
        ("DELETE", None),
        ("INSERT", None),
    ]


def test_old_must_be_a_boolean_and_needs_updates_captured():
    with pytest.raises(ConfigError, match='"old" must be true or false, got a string'):
        triggers.parse_config([{"table": "t", "old": "yes"}])
    with pytest.raises(ConfigError, match='"old" needs the update operation to be captured'):
        triggers.parse_config([{"table": "t", "columns": {"insert": "*"}, "old": True}])
    assert triggers.parse_config([{"table": "t", "old": True}])[0].old is True
    assert triggers.parse_config([{"table": "t"}])[0].old is False


def test_old_on_a_partitioned_table_a_move_between_partitions_is_a_key_change(db, dsn):
    execute(
        db,
        "CREATE TABLE p (region int, id int, v text, PRIMARY KEY (region, id))"
        " PARTITION BY LIST (region);"
        "CREATE TABLE p1 PARTITION OF p FOR VALUES IN (1);"
        "CREATE TABLE p2 PARTITION OF p FOR VALUES IN (2)",
    )
    install_config(dsn, [{"table": "p", "old": True}])
    execute(db, "INSERT INTO p VALUES (1, 1, 'a')")
    execute(db, "UPDATE p SET v = 'b'")  # within its partition: an UPDATE with old
    execute(db, "UPDATE p SET region = 2")  # to the other partition: DELETE then INSERT
    assert execute(db, "SELECT op, table_name, data, old FROM skor.outbox ORDER BY id") == [
        ("INSERT", "p", '{"region":1,"id":1,"v":"a"}', None),
        ("UPDATE", "p", '{"region":1,"id":1,"v":"b"}', '{"region":1,"id":1,"v":"a"}'),
        ("DELETE", "p", '{"region":1,"id":1,"v":"b"}', None),
        ("INSERT", "p", '{"region":2,"id":1,"v":"b"}', None),
    ]
