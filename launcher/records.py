"""FOLDER/RUN/pipeline.json: the job ids of a run's submissions, their executor, the code
snapshot and each stage's dependencies (what `shg submit status` reads)."""

from __future__ import annotations

import json
from pathlib import Path

from shards import atomic

RECORD = "pipeline.json"


def earlier_record(folder: Path, executor: str) -> dict:
    """What an earlier submission for this run recorded (same executor), or {}."""
    path = Path(folder) / RECORD
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    return old if old.get("executor") == executor else {}


def write_record(folder: Path, record: dict) -> None:
    atomic.write_json(Path(folder) / RECORD, record, indent=1)
