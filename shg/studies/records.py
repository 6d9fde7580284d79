"""What a study knows from files: its record (STUDY_DIR/study.json, written at submission, what
`shg study report` reads), and each run's state from its own directory (finished training,
finished evaluations, its resolved config)."""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path

from shards import atomic

from ..config import ConfigError, RunConfig, load_config
from .spec import Study

RECORD = "study.json"
EVAL_DIRS = {"best": "eval", "best_by_loss": "eval-best-by-loss"}
"""Where each kept model's evaluation goes in a run directory."""


def run_config(run: str | Path) -> RunConfig | None:
    """A run directory's resolved configuration (RUN/config.toml); None when it has none or it
    cannot be read."""
    path = Path(run) / "config.toml"
    try:
        return load_config(path) if path.is_file() else None
    except (ConfigError, OSError):
        return None


def training_finished(run: str | Path) -> bool:
    """True when the run's training ended normally (not stopped by a signal): its trainer wrote
    summary.json."""
    path = Path(run) / "summary.json"
    try:
        return bool(json.loads(path.read_text()).get("finished"))
    except (OSError, ValueError):
        return False


def variant_finished(run: str | Path, best_by_loss: bool) -> bool:
    """Trained and evaluated (each kept model the study evaluates): re-submission skips it."""
    wanted = ["best", "best_by_loss"] if best_by_loss else ["best"]
    return training_finished(run) and all(
        (Path(run) / EVAL_DIRS[w] / "summary.json").is_file() for w in wanted)


def write_record(study_dir: Path, study: Study, config: str, shards: str,
                 job_folder: str | None, common: list[str], boxes: str | None = None) -> dict:
    """`boxes`: the detection-results file the variants are evaluated on (None: the shards'
    ground-truth boxes)."""
    record = {"study": study.name, "description": study.description, "source": study.source,
              "config": config, "shards": shards, "boxes": boxes,
              "best_by_loss": study.best_by_loss,
              "job_folder": job_folder, "overrides": list(common),
              "written": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "variants": [{**asdict(v), "run": str(Path(study_dir) / v.name)}
                           for v in study.variants]}
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic.write_json(study_dir / RECORD, record, indent=1)
    return record


def read_record(study_dir: str | Path) -> dict:
    path = Path(study_dir) / RECORD
    if not path.is_file():
        raise ConfigError(f"{path}: not found; give the study directory `shg submit study` "
                          "printed (it holds study.json)")
    return json.loads(path.read_text())
