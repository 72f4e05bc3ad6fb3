"""WAL capture's pure logic: the pgoutput parser, value rendering, COPY encoding, ids."""

from __future__ import annotations

import json
import struct

import pytest

from skor_bridge.capture.wal import protocol
from skor_bridge.capture.wal.render import PgType, parse_array, quote, render, renderer
from skor_bridge.capture.wal.writer import Chunk, event_id
from skor_bridge.options import size


def _tuple(*values):
    out = struct.pack("!h", len(values))
    for value in values:
        if value is None:
            out += b"n"
        elif value is protocol.UNCHANGED:
            out += b"u"
        else:
            data = value.encode()
            out += b"t" + struct.pack("!i", len(data)) + data
    return out


def test_row_messages_parse_with_null_unchanged_and_text_values():
    insert = protocol.parse(b"I" + struct.pack("!I", 7) + b"N" + _tuple("1", None, "é😀"))
    assert insert == protocol.Insert(7, ("1", None, "é😀"))
    update = protocol.parse(
        b"U"
        + struct.pack("!I", 7)
        + b"O"
        + _tuple("1", "big")
        + b"N"
        + _tuple("2", protocol.UNCHANGED)
    )
    assert update == protocol.Update(7, ("1", "big"), "O", ("2", protocol.UNCHANGED))
    delete = protocol.parse(b"D" + struct.pack("!I", 7) + b"K" + _tuple("1", None))
    assert delete == protocol.Delete(7, ("1", None), "K")


def test_begin_commit_relation_message_and_truncate_parse():
    begin = protocol.parse(b"B" + struct.pack("!QqI", 0x1_0000_0010, 0, 42))
    assert begin == protocol.Begin(0x1_0000_0010, 946_684_800.0, 42)
    commit = protocol.parse(b"C\x00" + struct.pack("!QQq", 5, 9, 1_000_000))
    assert commit == protocol.Commit(5, 9, 946_684_801.0)
    relation = protocol.parse(
        b"R"
        + struct.pack("!I", 3)
        + b"public\x00t\x00f"
        + struct.pack("!h", 1)
        + b"\x01id\x00"
        + struct.pack("!Ii", 23, -1)
    )
    assert relation == protocol.Relation(
        3, "public", "t", "f", (protocol.Column("id", 23, -1, True),)
    )
    message = protocol.parse(
        b"M\x01" + struct.pack("!Q", 8) + b"skor\x00" + struct.pack("!i", 2) + b"hi"
    )
    assert message == protocol.Message(True, 8, "skor", b"hi")
    truncate = protocol.parse(b"T" + struct.pack("!ib", 2, 1) + struct.pack("!II", 3, 4))
    assert truncate == protocol.Truncate((3, 4), True, False)


@pytest.mark.parametrize(
    "data",
    [
        b"I\x00\x00",
        b"Z",
        b"I" + struct.pack("!I", 1) + b"N\x00\x01t",
        b"I" + struct.pack("!I", 1) + b"N\x00\x01x",
    ],
)
def test_malformed_messages_raise_protocol_error(data):
    with pytest.raises(protocol.ProtocolError):
        protocol.parse(data)


def test_lsn_text_round_trips():
    assert protocol.format_lsn(0x16_B374D848) == "16/B374D848"
    assert protocol.parse_lsn("16/B374D848") == 0x16_B374D848


def test_array_literals_parse_like_array_out_writes_them():
    assert parse_array('{1,NULL,"NULL","a \\"b\\"","c\\\\d",""}') == [
        "1",
        None,
        "NULL",
        'a "b"',
        "c\\d",
        "",
    ]
    assert parse_array("{{1,2},{3,4}}") == [["1", "2"], ["3", "4"]]
    assert parse_array("[0:1]={7,8}") == ["7", "8"]
    assert parse_array("{}") == []
    assert parse_array('{"(1,2),(3,4)";"(0,0),(1,1)"}', ";") == ["(1,2),(3,4)", "(0,0),(1,1)"]


def test_values_render_as_row_to_json_does():
    def server(pg_type, text):
        raise AssertionError("not a server type")

    numeric, text = PgType(1700, "number"), PgType(25, "text")
    assert render(numeric, "1.50", server) == "1.50"
    assert render(numeric, "NaN", server) == '"NaN"'
    assert render(PgType(701, "number"), "-Infinity", server) == '"-Infinity"'
    assert (
        render(PgType(1184, "timestamptz"), "2024-01-01 10:00:00+00", server)
        == '"2024-01-01T10:00:00+00:00"'
    )
    assert (
        render(PgType(1184, "timestamptz"), "0044-03-15 12:00:00+00:19:32 BC", server)
        == '"0044-03-15T12:00:00+00:19:32 BC"'
    )
    assert render(PgType(1114, "timestamp"), "infinity", server) == '"infinity"'
    assert render(PgType(16, "bool"), "t", server) == "true"
    assert render(PgType(3802, "json"), '{"a": 1}', server) == '{"a": 1}'
    assert render(PgType(1007, "array", PgType(23, "number")), "{{1,NULL}}", server) == "[[1,null]]"
    assert renderer(PgType(20, "number"), server)("9223372036854775807") == "9223372036854775807"
    assert renderer(text, server)('\x01\U0001f600"') == '"\\u0001\U0001f600\\""'


def test_quote_is_json_dumps_without_ascii_escaping():
    for value in ["plain", 'q"uote\\', "\x00\x1f\x7f\u2028", "é\U0001f600"]:
        assert quote(value) == json.dumps(value, ensure_ascii=False)


def test_a_chunk_travels_as_one_text_array_per_column_that_postgresql_reads_back(db):
    # Given values with every character an array literal treats specially
    hostile = ['{"a":"\\n"}', 'q"uote\\', "NULL", "", "a,b{c}", "tab\there\nnew", "é\U0001f600"]
    chunk = Chunk()
    for n, value in enumerate(hostile):
        chunk.add(f"id-{n}", 0.0, "public", value, "INSERT", None, value, old=value)
    chunk.add("id-x", 0.0, "public", "t", "INSERT", '{"id":1}', "{}", ("hook", 'o"dd,{x}'))
    # When PostgreSQL parses the parameters as text[]
    with db.cursor() as cur:
        cur.execute(
            "SELECT %s::text[], %s::text[], %s::text[], %s::text[]",
            [chunk.parameters()[i] for i in (3, 5, 6, 8)],
        )
        tables, keys, data, outputs = cur.fetchone()
        cur.execute("SELECT %s::text[]", (outputs[-1],))
        last_outputs = cur.fetchone()[0]
    # Then each value comes back as it was, NULL as NULL
    assert tables == [*hostile, "t"] and data == [*hostile, "{}"]
    assert keys == [None] * len(hostile) + ['{"id":1}']
    assert outputs[:-1] == [None] * len(hostile) and last_outputs == ["hook", 'o"dd,{x}']


def test_event_ids_are_stable_uuids_per_place_in_a_transaction():
    first = event_id("install", 100, 3, 0)
    assert first == event_id("install", 100, 3, 0)
    assert (
        len(
            {
                first,
                event_id("install", 100, 3, 1),
                event_id("install", 101, 3, 0),
                event_id("other", 100, 3, 0),
            }
        )
        == 4
    )


def test_event_ids_are_the_md5_of_their_place_as_earlier_releases_derived_them():
    # A backlog re-read after an upgrade keeps its ids: the derivation is pinned.
    import hashlib

    for args in [("install", 100, 3, 0), ("i", 2**40 + 7, 12345, 1), ("install", 101, 3, 0)]:
        digest = hashlib.md5("{}.wal.{}.{}.{}".format(*args).encode()).hexdigest()
        want = f"{digest[:8]}-{digest[8:12]}-{digest[12:16]}-{digest[16:20]}-{digest[20:]}"
        assert event_id(*args) == want


def _json_number(text):
    def refuse(constant):
        raise ValueError(constant)

    try:
        return isinstance(json.loads(text, parse_constant=refuse), int | float)
    except ValueError:
        return False


@pytest.mark.parametrize(
    ("oid", "category", "texts"),
    [
        (
            1184,
            "timestamptz",
            [
                "2024-01-01 10:00:00+00",
                "2024-01-01 10:00:00.123456+00",
                "12024-01-01 10:00:00+00",
                "0044-03-15 12:00:00+00 BC",
                "2024-01-01 10:00:00+05:30",
                "infinity",
                "-infinity",
            ],
        ),
        (
            1114,
            "timestamp",
            ["2024-01-01 10:00:00", "12024-01-01 10:00:00.5", "0044-03-15 12:00:00 BC", "infinity"],
        ),
        (
            1700,
            "number",
            ["0", "-1.50", "12345678901234567890.000001", "NaN", "Infinity", "-Infinity"],
        ),
        (701, "number", ["1e+20", "-1.5e-05", "-0", "NaN", "Infinity", "-Infinity"]),
    ],
)
def test_each_columns_renderer_agrees_with_the_general_rules(oid, category, texts):
    # (the per-column renderers take shortcuts for the common forms)
    def server(pg_type, text):
        raise AssertionError("not a server type")

    pg_type = PgType(oid, category)
    column = renderer(pg_type, server)
    for text in texts:
        general = render(pg_type, text, server)
        assert column(text) == general
        if category == "number":  # a JSON number as it is, anything else a string
            assert column(text) == (text if _json_number(text) else quote(text))
    if category == "timestamptz":
        assert column("2024-01-01 10:00:00.5+00") == '"2024-01-01T10:00:00.5+00:00"'


def test_sizes_read_like_postgresql_settings():
    assert size("1GB") == 1024**3 and size("512MB") == 512 * 1024**2 and size("100") == 100
    with pytest.raises(ValueError):
        size("lots")
