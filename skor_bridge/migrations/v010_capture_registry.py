"""What `triggers install` installed, per table, so that `status` and `triggers list` can
say when a table's shape no longer matches its capture config (a captured column renamed
or dropped, the primary key changed, a capture trigger dropped) instead of guessing from
trigger names. Written by the install script itself, so psql-applied installs record too.
"""

SQL = """
CREATE TABLE IF NOT EXISTS skor.captures (
    schema_name    text        NOT NULL,
    table_name     text        NOT NULL,
    mode           text        NOT NULL,
    ops            text[]      NOT NULL,
    columns        jsonb       NOT NULL,
    update_columns text[]      NOT NULL DEFAULT '{}',
    condition      text,
    key_columns    text[]      NOT NULL DEFAULT '{}',
    installed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schema_name, table_name)
);
"""
