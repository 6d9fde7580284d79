"""Experiment trackers (log.trackers) through Accelerate's tracker classes, one training = one
tracker run however often Slurm restarts it.

Each tracker is started on its own (accelerate.tracking: TensorBoardTracker, MLflowTracker,
WandBTracker, ...), so one that fails - a server down, bad credentials, a package missing - is
one warning and is left out; training goes on and metrics.jsonl (written before any tracker)
stays complete. The tracker's run id is kept in RUN/trackers.json with the last step logged:
a resumed or requeued run continues the same MLflow run (`run_id`) or W&B run (`id`, resume
"allow"), and rows of steps the tracker already has (those the killed run logged after its
last checkpoint, which the rerun repeats) are not sent again, so a tracker's steps never go
backwards. The resolved config is logged as the run's parameters.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from shards import atomic

from ..config import flatten

log = logging.getLogger(__name__)

FILE = "trackers.json"


def _metric_name(key: str) -> str:
    # MLflow accepts letters, digits, _ - . / and spaces; TensorBoard tags the same here
    return key.replace("@", "_at_")


class Trackers:
    """The run's trackers (main rank); `log(row)` sends a metrics row's numbers to each."""

    def __init__(self, run_dir: Path, names: list[str], project: str, config: dict,
                 mlflow_tracking_uri: str = ""):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / FILE
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.ids: dict = saved.get("ids", {})
        self.last_step: int = int(saved.get("last_step", -1))
        self.floor = self.last_step  # rows up to here reached the trackers before a restart
        self.active: dict = {}
        for name in names:
            try:
                tracker = self._start(name, project, mlflow_tracking_uri)
                tracker.store_init_configuration(
                    {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                     for k, v in flatten(config).items()})
            except Exception as exc:  # any failure of a tracker: it is left out, not the run
                log.warning("tracker %s left out: %s: %s (metrics.jsonl is complete)", name,
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                continue
            self.active[name] = tracker
        self._save()

    def _start(self, name: str, project: str, mlflow_uri: str):
        from accelerate import tracking

        if name == "tensorboard":
            tracker = tracking.TensorBoardTracker("", str(self.run_dir / "tb"))
        elif name == "mlflow":
            import mlflow

            if mlflow_uri:
                mlflow.set_tracking_uri(mlflow_uri)
            tracker = tracking.MLflowTracker(project, run_id=self.ids.get("mlflow"),
                                             run_name=self.run_dir.name)
        elif name == "wandb":
            tracker = tracking.WandBTracker(project, id=self.ids.get("wandb"), resume="allow",
                                            name=self.run_dir.name, dir=str(self.run_dir))
        elif name in tracking.LOGGER_TYPE_TO_CLASS:
            cls = tracking.LOGGER_TYPE_TO_CLASS[name]
            tracker = cls(project, str(self.run_dir / name)) \
                if cls.requires_logging_directory else cls(project)
        else:
            raise ValueError(f"unknown tracker {name!r}")
        if hasattr(tracker, "start"):
            tracker.start()
        if name == "mlflow":
            self.ids["mlflow"] = tracker.active_run.info.run_id
        elif name == "wandb":
            self.ids["wandb"] = tracker.run.id
        return tracker

    def log(self, row: dict) -> None:
        step = row.get("step")
        if step is None or step <= self.floor:
            return
        values = {_metric_name(k): v for k, v in row.items()
                  if k not in ("step", "time") and isinstance(v, (int, float))
                  and not isinstance(v, bool)}
        if not values:
            return
        for name, tracker in list(self.active.items()):
            try:
                tracker.log(values, step=step)
            except Exception as exc:  # a tracker that breaks mid-run: dropped, said once
                log.warning("tracker %s left out at step %d: %s: %s", name, step,
                            type(exc).__name__, exc)
                del self.active[name]
        if step > self.last_step:
            self.last_step = step
            self._save()

    def _save(self) -> None:
        atomic.write_json(self.path, {"ids": self.ids, "last_step": self.last_step,
                                      "trackers": sorted(self.active)}, indent=1)

    def close(self) -> None:
        for name, tracker in self.active.items():
            try:
                tracker.finish()
            except Exception as exc:  # closing must not fail a finished training
                log.warning("tracker %s did not close cleanly: %s", name, exc)
        self.active = {}
