"""Backfill (issue 12): READ rows travel the outbox -> log path, and progress is kept.

`skor.outbox` gains three nullable columns the capture triggers never set (a NULL costs a
writer nothing but a bit in the row's null bitmap):

- `watermark`: on a READ row, the log head when its chunk was read; the sequencer drops the
  READ if the log holds a newer change of the same row (see skor_bridge.backfill.watermark).
- `event_id`: a READ's id, derived from the backfill and the row key, so a chunk sent again
  after an interruption repeats the same ids.
- `outputs`: the outputs a READ is for; NULL means every output.

`skor.log.outputs` carries that restriction to the feeds. `skor.backfills` records each
backfill's progress per (table, output set), updated in the transaction that sends a chunk.
"""

SQL = """
ALTER TABLE skor.outbox
    ADD COLUMN IF NOT EXISTS watermark bigint,
    ADD COLUMN IF NOT EXISTS event_id  uuid,
    ADD COLUMN IF NOT EXISTS outputs   text[];
ALTER TABLE skor.log ADD COLUMN IF NOT EXISTS outputs text[];

CREATE TABLE IF NOT EXISTS skor.backfills (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    schema_name text        NOT NULL,
    table_name  text        NOT NULL,
    -- Sorted output names, or '{}' for every output (NULL would defeat the unique index).
    outputs     text[]      NOT NULL,
    status      text        NOT NULL DEFAULT 'running' CHECK (status IN ('running', 'finished')),
    -- Primary key values (as text, in key order) of the last row sent; NULL before the first.
    last_key    text[],
    rows_sent   bigint      NOT NULL DEFAULT 0,
    rows_total  bigint      NOT NULL DEFAULT 0,
    started_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);
CREATE UNIQUE INDEX IF NOT EXISTS backfills_running
    ON skor.backfills (schema_name, table_name, outputs) WHERE status = 'running';
"""
