"""Each captured table's OID at install, next to its recorded configuration.

A table renamed (or moved to another schema) keeps its OID, its triggers and its place in
the publication, so it stays captured; its events keep the configured name. WAL capture
recognises the table in the stream by this OID, also when the rename happened while the
bridge was down, and `triggers list` reports the rename instead of a dropped table.
Rows recorded by an earlier release get the OID their table has now.
"""

SQL = """
ALTER TABLE skor.captured_tables ADD COLUMN IF NOT EXISTS relid oid;
UPDATE skor.captured_tables
SET relid = to_regclass(format('%I.%I', schema_name, table_name))::oid
WHERE relid IS NULL;
"""
