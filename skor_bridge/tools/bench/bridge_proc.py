"""The bridge under test: `python -m skor_bridge run` as its own process, as users run it,
with its CPU time and peak memory read from /proc."""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING, Any

import psycopg2

if TYPE_CHECKING:
    from pathlib import Path

_TICKS = os.sysconf("SC_CLK_TCK")

#: prctl option: a signal the kernel sends this process when its parent dies.
_PR_SET_PDEATHSIG = 1


def stop_process(process: subprocess.Popen[Any] | None, grace: float) -> None:
    """SIGTERM a child still running, give it `grace` seconds, then SIGKILL it."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _die_with_parent() -> None:
    """Runs in the child before exec: if the benchmark is killed outright (SIGKILL), its
    bridges get SIGTERM instead of polling a dropped database forever."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass  # not Linux: the benchmark's own clean-up still stops them


#: Seconds the bridge gets to start all its outputs.
START_TIMEOUT = 60.0


def cpu_seconds(pid: int) -> float:
    """User plus system CPU time of a process, all its threads included."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICKS


class BridgeProcess:
    def __init__(
        self, dsn: str, args: list[str], log_path: Path, env: dict[str, str] | None = None
    ) -> None:
        self.dsn = dsn
        self.args = args
        self.log_path = log_path
        self.env = env or {}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> BridgeProcess:
        # The DSN goes through the environment, not the command line, which `ps` shows.
        env = {**os.environ, "SKOR_DSN": self.dsn}
        for name in ("SKOR_WEBHOOK", "SKOR_AMQP", "SKOR_KAFKA", "SKOR_CONFIG", "SKOR_MODE"):
            env.pop(name, None)  # only the outputs the benchmark names
        env.update(self.env)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "skor_bridge", "run", *self.args, "--log-level", "info"],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=True,  # Ctrl-C reaches the benchmark, which stops us
                preexec_fn=_die_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_ready(self, outputs: int, timeout: float = START_TIMEOUT) -> None:
        """Until every output of this bridge registered its position (it is then reading)."""
        deadline = time.monotonic() + timeout
        conn = psycopg2.connect(self.dsn)
        conn.autocommit = True
        try:
            with conn.cursor() as cur:
                while True:
                    if not self.alive():
                        raise RuntimeError(f"the bridge exited:\n{self.log_tail()}")
                    cur.execute("SELECT count(*) FROM skor.outputs")
                    row = cur.fetchone()
                    if row is not None and row[0] >= outputs:
                        return
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the bridge did not start:\n{self.log_tail()}")
                    time.sleep(0.02)
        finally:
            conn.close()

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def peak_memory_mb(self) -> float:
        """VmHWM: the most resident memory the process ever had, in MiB."""
        with open(f"/proc/{self.pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self, timeout: float = 40.0) -> None:
        process, self.process = self.process, None
        stop_process(process, timeout)

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])
