"""What every benchmark states about the machine and the code it measured."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import subprocess
from collections.abc import Sequence
from pathlib import Path

__all__ = ["machine_info"]

REPO_ROOT = Path(__file__).resolve().parent.parent


def machine_info(packages: Sequence[str], *, watched: Sequence[str] = (), adb: bool = False) -> dict:
    """CPUs, CPU model, memory, kernel, Python, the commit (noting uncommitted changes in
    ``watched`` paths, or anywhere tracked when none are named), package versions, and with
    ``adb`` the adb client's version."""
    info: dict = {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu": _proc_field("/proc/cpuinfo", "model name"),
        "memory": _memory(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "commit": _commit(watched),
        "versions": _versions(packages),
    }
    if adb:
        info["adb"] = _adb_version()
    return info


def _proc_field(path: str, key: str) -> str:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _memory() -> str:
    total = _proc_field("/proc/meminfo", "MemTotal")
    try:
        return f"{int(total.split()[0]) / 1024 / 1024:.1f} GiB"
    except (ValueError, IndexError):
        return total


def _commit(watched: Sequence[str]) -> str:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only git: never refresh the index
    try:
        commit = subprocess.run(["git", "-C", str(REPO_ROOT), "rev-parse", "--short", "HEAD"], env=env,
                                capture_output=True, text=True, check=True).stdout.strip()
        status = subprocess.run(["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--untracked-files=no",
                                 "--", *watched], env=env, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    dirty = [line[3:] for line in status.splitlines() if line.strip()]
    return commit + (f" with uncommitted changes in {', '.join(dirty)}" if dirty else "")


def _versions(packages: Sequence[str]) -> dict[str, str]:
    versions = {}
    for package in packages:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            versions[package] = importlib.metadata.version(package)
    return versions


def _adb_version() -> str:
    try:
        lines = subprocess.run(["adb", "version"], capture_output=True, text=True).stdout.splitlines()
    except OSError:
        return "unknown"
    return " ".join(lines[:2]) or "unknown"
