"""metrics.jsonl (appended, so a resumed run continues it) and the experiment trackers
(trackers.py: TensorBoard by default), main rank only.

Readers use `read_metrics`, which skips a line a killed run left half-written."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool, log_cfg=None, config: dict | None = None):
        self.enabled = enabled
        self.file = self.trackers = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            path = run_dir / "metrics.jsonl"
            cut = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
            self.file = open(path, "a")
            if cut:  # a killed run's half-written last line: end it, readers skip it
                self.file.write("\n")
            if log_cfg is not None and log_cfg.trackers:
                from .trackers import Trackers

                self.trackers = Trackers(run_dir, list(log_cfg.trackers), log_cfg.project,
                                         config or {}, log_cfg.mlflow_tracking_uri)

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        # the file first: whatever a tracker does, metrics.jsonl is complete
        self.file.write(json.dumps({"time": time.time(), **row}) + "\n")
        self.file.flush()
        if self.trackers is not None:
            self.trackers.log(row)

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.trackers is not None:
            self.trackers.close()


def read_metrics(run_dir: Path) -> list[dict]:
    rows = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
