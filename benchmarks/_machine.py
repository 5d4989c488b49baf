"""What machine a benchmark ran on: printed above every table, so results can be compared."""

from __future__ import annotations

import datetime as dt
import os
import platform
from importlib.metadata import PackageNotFoundError, version


def installed_version(package: str) -> str | None:
    try:
        return version(package)
    except PackageNotFoundError:
        return None


def machine_notes(packages: list[str]) -> list[str]:
    """Date, Python and the versions of `packages` (those installed), CPU and usable cores."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    versions = ", ".join(f"{p} {v}" for p in packages if (v := installed_version(p)) is not None)
    return [
        f"date: {dt.date.today().isoformat()}",
        f"python {platform.python_version()} ({platform.python_implementation()}), {versions}",
        f"cpu: {cpu}; cpu_count={os.cpu_count()}, usable={usable}; {platform.system()} "
        f"{platform.release()}",
    ]
