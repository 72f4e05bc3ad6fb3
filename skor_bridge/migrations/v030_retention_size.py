"""Retention by size (`--retention-size`): the pruner marks an output that holds the log
over the size limit (it has not passed events retention would otherwise drop), so that
`status`, /metrics and /readyz report it instead of the log silently growing, and records
the limit it applies so `status`, run from anywhere, can show it."""

SQL = """
ALTER TABLE skor.outputs ADD COLUMN IF NOT EXISTS holding_log_since timestamptz;
"""
