"""An index to page a parked row's events from skor.redeliveries.

A row that keeps failing is parked: its events live in skor.redeliveries and the worker
holds only a page of them in memory, reading the next page when it runs short. Without
this index each page would scan every redelivery of the output.
"""

SQL = """
CREATE INDEX IF NOT EXISTS redeliveries_parked_lane
    ON skor.redeliveries (output, schema_name, table_name, row_key, id)
    WHERE reason = 'parked';
"""
