"""The primary key each captured table had at install, next to its recorded configuration.

`triggers list`, `status` and the bridge's start-up log compare it with the table's
current key to say when the key changed (events are keyed by the key read at install).
The table itself is created here too, exactly as migration 41 creates it, because steps
apply in numeric order and this one may run first; both are create-if-missing.
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
ALTER TABLE skor.captured_tables ADD COLUMN IF NOT EXISTS key_columns text[];
"""
