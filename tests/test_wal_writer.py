"""The WAL reader's write of a chunk into skor.log: one prepared statement for a few
events, COPY for many, both after whatever another writer (a backfill) appended."""

from __future__ import annotations

import threading

import pytest

from skor_bridge.capture.sequencer import ensure_partitions
from skor_bridge.capture.wal.source import WalReader
from skor_bridge.capture.wal.writer import COPY_FROM, Chunk
from skor_bridge.config import Config, OutputConfig, SourceConfig, WebhookConfig

PARTITION = 1000


def reader(dsn: str) -> WalReader:
    output = OutputConfig("hook", "webhook", WebhookConfig(url="http://127.0.0.1:9/"))
    config = Config(SourceConfig(dsn, mode="wal"), (output,), partition_size=PARTITION)
    return WalReader(config, threading.Event())


def chunk_of(count: int, tag: str) -> Chunk:
    chunk = Chunk()
    for n in range(count):
        chunk.add(
            f"00000000-0000-0000-0000-{n:012d}",
            1.5,
            "public",
            "items",
            "INSERT",
            f'{{"id":{n}}}',
            f'{{"id":{n},"tag":"{tag}"}}',
        )
    return chunk


@pytest.mark.parametrize("count", [3, COPY_FROM + 5], ids=["statement", "copy"])
def test_a_chunk_lands_after_positions_another_writer_took_past_the_known_partitions(
    db, dsn, capture_table, count
):
    capture_table("CREATE TABLE items (id int PRIMARY KEY)", "items")
    wal = reader(dsn)
    wal._head, wal._install_id = wal._db.run(wal._read_state)
    # Given the reader wrote once, so it knows the log's partitions up to PARTITION
    first = wal._db.run(lambda cur: wal._write(cur, chunk_of(2, "first"), 0, None))
    assert first == 3 and wal._covered_until == PARTITION + 1
    wal._head = first - 1
    # And another writer (a backfill) then appended up to the end of that partition,
    # creating none beyond it, without the reader knowing
    with db.cursor() as cur:
        ensure_partitions(cur, 1, PARTITION + 1, PARTITION)
        cur.execute("UPDATE skor.sequencer SET next_pos = %s", (PARTITION + 1,))
    # When the reader writes its next chunk
    next_pos = wal._db.run(lambda cur: wal._write(cur, chunk_of(count, "next"), 0, None))
    wal._db.close()
    # Then it lands right after the other writer's positions, in a partition made for it
    assert next_pos == PARTITION + 1 + count
    with db.cursor() as cur:
        cur.execute("SELECT pos, data FROM skor.log WHERE data LIKE '%%next%%' ORDER BY pos")
        rows = cur.fetchall()
        cur.execute("SELECT next_pos FROM skor.sequencer")
        assert cur.fetchone()[0] == next_pos
    assert [pos for pos, _ in rows] == list(range(PARTITION + 1, PARTITION + 1 + count))
    assert [data for _, data in rows] == [f'{{"id":{n},"tag":"next"}}' for n in range(count)]
