"""metrics.jsonl (appended, so a resumed run continues it) and TensorBoard, main rank only.

Readers use `read_metrics`, which skips a line a killed run left half-written."""

from __future__ import annotations

import json
import time
from pathlib import Path


class MetricsLogger:
    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.file = self.tb = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            path = run_dir / "metrics.jsonl"
            cut = path.exists() and path.stat().st_size and not path.read_bytes().endswith(b"\n")
            self.file = open(path, "a")
            if cut:  # a killed run's half-written last line: end it, readers skip it
                self.file.write("\n")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is optional at run time
                self.tb = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"time": time.time(), **row}) + "\n")
        self.file.flush()
        if self.tb:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k.replace("@", "_at_"), v, row["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


def read_metrics(run_dir: Path) -> list[dict]:
    rows = []
    for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows
