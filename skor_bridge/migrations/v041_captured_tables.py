"""What `triggers install` set up, so `triggers list` can show it and spot drift.

The installed triggers say which tables and operations are captured, but not which columns
or conditions: those are compiled into function bodies. One row per captured table keeps
the configuration as installed; comparing it with the catalog finds a renamed or dropped
column, a dropped table, or a trigger dropped or disabled by hand.
"""

SQL = """
CREATE TABLE IF NOT EXISTS skor.captured_tables (
    schema_name    text        NOT NULL,
    table_name     text        NOT NULL,
    mode           text        NOT NULL,
    ops            text[]      NOT NULL,
    -- {"insert": ["id", "status"] or null (every column), ...}
    columns        jsonb       NOT NULL,
    update_columns text[]      NOT NULL DEFAULT '{}',
    condition      text,
    installed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, table_name)
);
"""
