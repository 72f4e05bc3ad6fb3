"""Outputs an operator can list and forget.

`skor.outputs.destination` says where an output delivers (redacted: scheme://host/...,
never a password or a token of a URL), for `skor-bridge outputs list`. `skor.output_instances`
records which instance was started with which output, so `status` can tell an output that
a running instance serves from one that nothing serves any more and that only holds back
the log's retention until someone runs `skor-bridge outputs forget`.
"""

SQL = """
ALTER TABLE skor.outputs ADD COLUMN IF NOT EXISTS destination text;

CREATE TABLE IF NOT EXISTS skor.output_instances (
    output   text        NOT NULL,
    instance text        NOT NULL,
    seen_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (output, instance)
);
"""
