"""How far a training run is, from its directory alone (metrics.jsonl, config.toml,
summary.json): what `shg status RUN` prints and `shg submit status` shows per training job.

Step / max_steps, images/s, ETA (from the mean step time of the last rows), the last
validation's selection metric and the best so far; a run that has written no row for
STALL_FACTOR times its usual interval between rows, and has not finished or stopped, is
flagged as stalled.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

STALL_FACTOR = 5.0
"""A run is stalled when its last row is older than this many usual row intervals."""
MIN_STALL_SECONDS = 120.0
"""... and at least this old (a run that logs every second is not stalled after 5 s)."""


@dataclass
class RunProgress:
    run: str
    state: str
    """not started | running | stalled | finished | stopped (by a signal, to be requeued)."""
    step: int = 0
    max_steps: int | None = None
    img_per_s: float | None = None
    eta_s: float | None = None
    metric: str | None = None
    last_value: float | None = None
    best_value: float | None = None
    best_step: int | None = None
    last_row_age_s: float | None = None
    mlflow: str | None = None
    """The run's MLflow link (RUN/trackers.json): its page on a tracking server, or its id and
    local store."""

    def line(self) -> str:
        """One line: `step 120/1000 (12%), 85.3 img/s, ETA 0:12:30, pck_bbox@0.2 0.61 (best
        0.63 at 100)`, with the state when it is not running and the MLflow link when the run
        has one."""
        parts = [f"step {self.step}/{self.max_steps}" + (
            f" ({self.step / self.max_steps:.0%})" if self.max_steps else "")]
        if self.img_per_s is not None:
            parts.append(f"{self.img_per_s:.1f} img/s")
        if self.eta_s is not None and self.state == "running":
            parts.append(f"ETA {hms(self.eta_s)}")
        if self.metric and self.last_value is not None:
            best = f" (best {self.best_value:.4g} at {self.best_step})" \
                if self.best_value is not None else ""
            parts.append(f"{self.metric} {self.last_value:.4g}{best}")
        if self.state == "stalled":
            parts.append(f"STALLED: no new row for {hms(self.last_row_age_s or 0)}")
        elif self.state != "running":
            parts.append(self.state)
        if self.mlflow:
            parts.append(f"mlflow {self.mlflow}")
        return ", ".join(parts)


def hms(seconds: float | None) -> str:
    """H:MM:SS ("–" for None)."""
    if seconds is None:
        return "–"
    minutes, s = divmod(int(round(seconds)), 60)
    h, m = divmod(minutes, 60)
    return f"{h}:{m:02d}:{s:02d}"


def run_progress(run: str | Path, now: float | None = None) -> RunProgress:
    from .studies.records import run_config, training_finished
    from .training.metrics_log import read_metrics

    run = Path(run)
    now = time.time() if now is None else now
    if not (run / "metrics.jsonl").is_file():
        return RunProgress(str(run), "not started")
    rows = read_metrics(run)
    cfg = run_config(run)
    steps = [r for r in rows if "loss" in r and "step" in r]
    metric = cfg.eval.select_metric if cfg else None
    vals = [r for r in rows if metric and metric in r]
    out = RunProgress(str(run), "running", step=max((r["step"] for r in rows if "step" in r),
                                                    default=0),
                      max_steps=cfg.train.max_steps if cfg else None, metric=metric)
    if steps:
        out.img_per_s = steps[-1].get("img_per_s")
        recent = [r["step_s"] for r in steps[-5:] if "step_s" in r]
        if recent and out.max_steps:
            out.eta_s = max(0, out.max_steps - out.step) * sum(recent) / len(recent)
    if vals:
        out.last_value = vals[-1][metric]
        higher = not (cfg and cfg.task == "ae")
        best = (max if higher else min)(vals, key=lambda r: r[metric])
        out.best_value, out.best_step = best[metric], best["step"]
    try:
        out.mlflow = json.loads((run / "trackers.json").read_text()).get("mlflow", {}).get(
            "link")
    except (OSError, ValueError):  # no MLflow, or a file being replaced
        pass
    times = [r["time"] for r in rows if "time" in r]
    if times:
        out.last_row_age_s = now - times[-1]
    step_times = [r["time"] for r in steps if "time" in r]
    events = [r.get("event", "") for r in rows]
    if training_finished(run):
        out.state = "finished"
    elif events and events[-1].startswith("stopped by"):
        out.state = "stopped"
    elif len(step_times) >= 3:
        gaps = sorted(b - a for a, b in zip(step_times, step_times[1:]))
        usual = gaps[len(gaps) // 2]
        if out.last_row_age_s > max(STALL_FACTOR * usual, MIN_STALL_SECONDS):
            out.state = "stalled"
    return out
