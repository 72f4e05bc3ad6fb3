"""The first release's schema (0.1.0), exactly as it shipped.

Every statement is create-if-missing, so applying it to a database that the first release
created, which has no `skor.migrations` table yet, changes nothing and records version 1.
"""

SQL = """
CREATE SCHEMA IF NOT EXISTS skor;

CREATE TABLE IF NOT EXISTS skor.meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);
INSERT INTO skor.meta (key, value) VALUES
    ('schema_version', '1'),
    ('install_id', gen_random_uuid()::text)
ON CONFLICT (key) DO NOTHING;

-- Written by the capture triggers inside the user's transaction; insert-only for them.
-- Kept as lean as possible because writers pay for every column: the event id is derived
-- later by the sequencer from install_id and id, which are unique together.
CREATE TABLE IF NOT EXISTS skor.outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    captured_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    schema_name text        NOT NULL,
    table_name  text        NOT NULL,
    op          text        NOT NULL,
    row_key     text,
    data        text        NOT NULL
);

-- The single counter row from which the sequencer numbers log positions.
CREATE TABLE IF NOT EXISTS skor.sequencer (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    next_pos  bigint  NOT NULL DEFAULT 1
);
INSERT INTO skor.sequencer DEFAULT VALUES ON CONFLICT DO NOTHING;

-- Committed events in commit-visibility order. Partitioned by position so that retention
-- drops whole partitions instead of running large DELETEs.
CREATE TABLE IF NOT EXISTS skor.log (
    pos         bigint      NOT NULL,
    event_id    uuid        NOT NULL,
    captured_at timestamptz NOT NULL,
    logged_at   timestamptz NOT NULL DEFAULT now(),
    schema_name text        NOT NULL,
    table_name  text        NOT NULL,
    op          text        NOT NULL,
    row_key     text,
    data        text        NOT NULL,
    PRIMARY KEY (pos)
) PARTITION BY RANGE (pos);

-- Delivery progress per output: every event with pos <= position is delivered or dead.
CREATE TABLE IF NOT EXISTS skor.outputs (
    name            text PRIMARY KEY,
    kind            text NOT NULL,
    position        bigint NOT NULL,
    delivered_total bigint NOT NULL DEFAULT 0,
    last_error      text,
    last_error_at   timestamptz,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- Deliveries per output and second, for "delivered in the last minute"; pruned hourly.
CREATE TABLE IF NOT EXISTS skor.delivery_stats (
    output    text        NOT NULL,
    second    timestamptz NOT NULL,
    delivered integer     NOT NULL,
    PRIMARY KEY (output, second)
);

-- Events to deliver outside the position order: dead letters an operator retries, a
-- replay of delivered events, or the events of a row that keeps failing, parked here so
-- the output's position can move past them. A copy of the event survives retention.
-- The output's worker deletes a row once the event is delivered or dead again.
CREATE TABLE IF NOT EXISTS skor.redeliveries (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    output       text        NOT NULL,
    reason       text        NOT NULL CHECK (reason IN ('retry', 'replay', 'parked')),
    pos          bigint,
    event_id     uuid        NOT NULL,
    captured_at  timestamptz NOT NULL,
    schema_name  text        NOT NULL,
    table_name   text        NOT NULL,
    op           text        NOT NULL,
    row_key      text,
    data         text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS redeliveries_output ON skor.redeliveries (output, id);

-- Every running instance, active or standing by, refreshed by its heartbeat.
CREATE TABLE IF NOT EXISTS skor.instances (
    instance  text PRIMARY KEY,
    role      text        NOT NULL,
    started   timestamptz NOT NULL DEFAULT now(),
    heartbeat timestamptz NOT NULL DEFAULT now()
);

-- Events an output gave up on. They keep a copy of the event, so retention never loses
-- them; `status` goes dead -> retry (operator asked) -> delivered.
CREATE TABLE IF NOT EXISTS skor.dead_letters (
    output      text        NOT NULL,
    pos         bigint,
    event_id    uuid        NOT NULL,
    captured_at timestamptz NOT NULL,
    schema_name text        NOT NULL,
    table_name  text        NOT NULL,
    op          text        NOT NULL,
    row_key     text,
    data        text        NOT NULL,
    attempts    integer     NOT NULL,
    last_error  text,
    status      text        NOT NULL DEFAULT 'dead',
    dead_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (output, event_id)
);

-- Which instance is active. The active one holds an advisory lock and refreshes
-- `heartbeat`; a standby that finds the heartbeat stale terminates the holder's backend,
-- which frees the lock even when the active host vanished without closing its socket.
CREATE TABLE IF NOT EXISTS skor.leader (
    singleton   boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    instance    text        NOT NULL,
    backend_pid integer     NOT NULL,
    heartbeat   timestamptz NOT NULL
);
"""
