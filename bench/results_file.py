"""bench/RESULTS.md holds one section per benchmark script; each script rewrites only its own.

A section is the text between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->``; a missing
section is appended. The file is replaced atomically, so a crash never leaves half of it.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["markers", "write_section"]


def markers(name: str) -> tuple[str, str]:
    return f"<!-- {name}:start -->", f"<!-- {name}:end -->"


def write_section(path: Path, name: str, body: str) -> None:
    """Replace section ``name`` of ``path`` with ``body`` (markers added here), or append it."""
    start_mark, end_mark = markers(name)
    section = f"{start_mark}\n{body.strip()}\n{end_mark}"
    text = path.read_text() if path.exists() else ""
    start, end = text.find(start_mark), text.find(end_mark)
    if start != -1 and end > start:
        new = text[:start] + section + text[end + len(end_mark):]
    else:
        new = text.rstrip("\n") + ("\n\n" if text.strip() else "") + section + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(new)
    os.replace(tmp, path)
