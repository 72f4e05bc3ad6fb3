"""The sequencer's superseded-READ check reads the log through a function.

Every sequencer round drops the backfill READ rows that a newer change of their row
supersedes (see skor_bridge.backfill.watermark), which needs the log's changes after the
round's smallest watermark. Written as a join on `skor.log` inside the round's statement,
that made every round of the prepared statement lock and set up a scan of every log
partition, backfill or not: a cost that grew with the partitions retention keeps (about
13 us per partition per round, 30 partitions doubling a round's cost).

`skor.log_changes_after(after)` is PL/pgSQL, so the planner cannot inline it: the round's
plan holds one function call instead, which returns at once when no READ row is moved
(`after` is NULL), and otherwise runs the same range scan by position, planned and locked
only then.
"""

SQL = """
CREATE OR REPLACE FUNCTION skor.log_changes_after(after bigint)
RETURNS TABLE (schema_name text, table_name text, row_key text, pos bigint)
LANGUAGE plpgsql STABLE
SET search_path = pg_catalog, pg_temp
AS $fn$
BEGIN
    IF after IS NULL THEN
        RETURN;
    END IF;
    RETURN QUERY
        SELECT l.schema_name, l.table_name, l.row_key, l.pos FROM skor.log l
        WHERE l.pos > after AND l.op <> 'READ';
END
$fn$;
"""
