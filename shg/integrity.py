"""Checksums of a checkpoint's files: recorded in its COMPLETE marker when it is saved and
verified before anything uses it (resume, `shg eval --step`, `shg export --step`), so a file
cut short by a full quota or damaged on disk is named instead of loaded.

    COMPLETE   {"step": N, "files": {"model.safetensors": {"bytes": ..., "sha256": ...}, ...}}

Checkpoints written before the checksums existed hold only the step number: they are accepted
unverified.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from shards import atomic

MARKER = "COMPLETE"


def _sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write_marker(directory: Path, step: int) -> None:
    """Record every file below `directory` (the marker last, so its presence means whole)."""
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() and p.name != MARKER):
        files[str(path.relative_to(directory))] = {"bytes": path.stat().st_size,
                                                   "sha256": _sha256(path)}
    atomic.write_json(directory / MARKER, {"step": step, "files": files}, fsync=True)


def verify(directory: Path) -> str | None:
    """None when every recorded file is there with its size and checksum, else what is wrong,
    naming the file."""
    marker = directory / MARKER
    try:
        record = json.loads(marker.read_text())
    except FileNotFoundError:
        return f"{MARKER}: missing (an unfinished save)"
    except (OSError, ValueError) as exc:
        return f"{MARKER}: unreadable ({exc})"
    if not isinstance(record, dict):
        return None  # an old marker (the step alone): nothing recorded to check
    for name, expected in record.get("files", {}).items():
        path = directory / name
        if not path.is_file():
            return f"{name}: missing"
        size = path.stat().st_size
        if size != expected["bytes"]:
            return f"{name}: {size} bytes, {expected['bytes']} when saved (cut short?)"
        if _sha256(path) != expected["sha256"]:
            return f"{name}: checksum differs from the one recorded at save (damaged)"
    return None
