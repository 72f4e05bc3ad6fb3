"""The machine a figure was measured on, for the line above the table."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return " ".join(line.split(":", 1)[1].split())
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def memory_gib() -> float:
    try:
        with open("/proc/meminfo") as info:
            for line in info:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) / 1024 / 1024
    except OSError:
        pass
    return 0.0


def cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def describe(postgres_version: str) -> str:
    return (
        f"{cpus()} CPUs ({cpu_model()}), {memory_gib():.1f} GiB RAM, "
        f"PostgreSQL {postgres_version}, Python {platform.python_version()}, "
        f"{platform.system()} {platform.release()}"
    )
