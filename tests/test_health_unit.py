"""Readiness as /readyz computes it, from what each worker reports (no server, no database)."""

from __future__ import annotations

from skor_bridge.dispatch.delivery import Backlog
from skor_bridge.health import STUCK_AFTER, readiness


def test_a_standby_is_always_ready():
    ready, body = readiness(False, "i1", False, [])
    assert ready and body == {"ready": True, "role": "standby", "instance": "i1"}


def test_an_active_instance_is_ready_while_outputs_are_merely_behind():
    ready, body = readiness(True, "i1", True, [("hook", False, Backlog(500, 30.0, 5.0))])
    assert ready
    assert body["outputs"]["hook"] == {"ready": True, "pending": 500, "lag_seconds": 30.0,
                                       "failing_seconds": 5.0}


def test_a_stuck_or_failed_output_or_a_lost_database_is_not_ready():
    stuck = Backlog(1, 1.0, STUCK_AFTER + 1)
    assert not readiness(True, "i1", True, [("hook", False, stuck)])[0]
    assert not readiness(True, "i1", True, [("hook", True, Backlog(0, 0.0, 0.0))])[0]
    assert not readiness(True, "i1", False, [("hook", False, Backlog(0, 0.0, 0.0))])[0]
