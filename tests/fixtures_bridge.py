"""Run the bridge the way users do: `skor-bridge run ...` as a separate process."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest

from skor_bridge.capture import triggers


class BridgeProcess:
    """A `skor-bridge run` subprocess whose stderr goes to a file the test can read."""

    def __init__(self, args: list[str], log_path: Path, env: dict[str, str] | None = None):
        self.args = args
        self.log_path = log_path
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def start(self) -> BridgeProcess:
        with self.log_path.open("ab") as log:
            # The child keeps its own copy of the descriptor.
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "skor_bridge", "run", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
            )
        return self

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"bridge exited ({self.proc.returncode}):\n{self.log}")
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in bridge log after {timeout}s:\n{self.log}")

    def wait_active(self, timeout: float = 20.0) -> BridgeProcess:
        self.wait_for_log("is now active", timeout)
        return self

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 40.0) -> int:
        """SIGTERM and wait; returns the exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)


def active_and_standby(start, *args: str) -> tuple[BridgeProcess, BridgeProcess]:
    """Two bridges with the same arguments: the first active, the second standing by."""
    active = start(*args).wait_active()
    standby = start(*args)
    standby.wait_for_log("is standing by")
    return active, standby


@pytest.fixture
def bridge(tmp_path):
    """Factory: `bridge("--dsn", dsn, "--webhook", url)` starts a bridge; all are stopped
    at the end of the test."""
    started: list[BridgeProcess] = []

    def start(*args: str, env: dict[str, str] | None = None) -> BridgeProcess:
        process = BridgeProcess(list(args), tmp_path / f"bridge-{len(started)}.log", env)
        started.append(process.start())
        return process

    yield start
    for process in started:
        if process.proc is not None and process.proc.poll() is None:
            process.kill()


@pytest.fixture
def capture_table(dsn):
    """Factory: create a table and install durable (or notify) triggers on it."""

    def make(ddl: str, table: str, schema: str = "public", columns="*", mode="durable"):
        with psycopg2.connect(dsn) as conn, conn.cursor() as cur:
            cur.execute(ddl)
        conn.close()
        specs = triggers.parse_config([{"table": table, "schema": schema, "columns": columns}])
        triggers.install(dsn, specs, mode)
        return specs

    return make
