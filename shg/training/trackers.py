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

MLflow writes to `log.mlflow_tracking_uri`, else MLFLOW_TRACKING_URI, else the store the run's
first start wrote to (kept in trackers.json, so a rerun from another directory continues the
same run), else MLflow's default: `sqlite:///mlflow.db` in the directory training starts in.
trackers.json also keeps the run's link (`mlflow.link`: the run's page on a tracking server,
or the run id and the local store), which `shg status` prints.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from shards import atomic

from ..config import flatten

log = logging.getLogger(__name__)

FILE = "trackers.json"


def _metric_name(key: str) -> str:
    # MLflow accepts letters, digits, _ - . / and spaces; TensorBoard tags the same here
    return key.replace("@", "_at_")


def public_uri(uri: str) -> str:
    """The tracking URI without credentials (user:password@), as it may be written down."""
    parts = urlsplit(uri)
    if parts.scheme in ("http", "https") and "@" in parts.netloc:
        return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))
    return uri


def mlflow_link(uri: str, experiment_id: str, run_id: str) -> str:
    """The run's page on a tracking server; for a local store, the run id and the store (what
    `mlflow ui --backend-store-uri STORE` shows)."""
    uri = public_uri(uri)
    if urlsplit(uri).scheme in ("http", "https"):
        return f"{uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"
    return f"run {run_id} in {uri}"


class Trackers:
    """The run's trackers (main rank); `log(row)` sends a metrics row's numbers to each."""

    def __init__(self, run_dir: Path, names: list[str], project: str, config: dict,
                 mlflow_tracking_uri: str = ""):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / FILE
        saved = json.loads(self.path.read_text()) if self.path.is_file() else {}
        self.ids: dict = saved.get("ids", {})
        self.mlflow: dict = saved.get("mlflow", {})
        self.last_step: int = int(saved.get("last_step", -1))
        self.floor = self.last_step  # rows up to here reached the trackers before a restart
        self.active: dict = {}
        params = {k: v if isinstance(v, (int, float, str, bool)) else json.dumps(v)
                  for k, v in flatten(config).items()}
        for name in names:
            try:
                tracker = self._start(name, project, mlflow_tracking_uri)
                if name == "mlflow":
                    self._mlflow_params(tracker, params)
                else:
                    tracker.store_init_configuration(params)
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
            return self._start_mlflow(project, mlflow_uri)
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
        if name == "wandb":
            self.ids["wandb"] = tracker.run.id
        return tracker

    def _start_mlflow(self, project: str, configured: str):
        import mlflow
        from accelerate import tracking

        # explicit settings first, then the store this run already writes to, then MLflow's
        # default (None: sqlite:///mlflow.db in the working directory, made absolute here)
        mlflow.set_tracking_uri(configured or os.environ.get("MLFLOW_TRACKING_URI")
                                or self.mlflow.get("uri") or None)
        uri = mlflow.get_tracking_uri()
        mlflow.set_tracking_uri(uri)
        run_id = self.ids.get("mlflow")
        if run_id and self.mlflow.get("uri") and self.mlflow["uri"] != public_uri(uri):
            log.warning("MLflow store changed from %s to %s: a new MLflow run there",
                        self.mlflow["uri"], public_uri(uri))
            run_id = None
        tracker = tracking.MLflowTracker(project, run_id=run_id, run_name=self.run_dir.name)
        try:
            tracker.start()
        except Exception as exc:
            if "MLFLOW_ALLOW_FILE_STORE" in str(exc):  # MLflow's long refusal, in one line
                raise RuntimeError(
                    f"MLflow refuses its file store {uri}: set MLFLOW_ALLOW_FILE_STORE=true, or "
                    "move to SQLite (`mlflow migrate-filestore`) or a server "
                    "(log.mlflow_tracking_uri)") from exc
            raise
        info = tracker.active_run.info
        self.ids["mlflow"] = info.run_id
        self.mlflow = {"uri": public_uri(uri), "experiment_id": info.experiment_id,
                       "link": mlflow_link(uri, info.experiment_id, info.run_id)}
        log.info("MLflow: %s%s", self.mlflow["link"], "" if urlsplit(uri).scheme in (
            "http", "https") else f" (look: mlflow ui --backend-store-uri {public_uri(uri)})")
        return tracker

    @staticmethod
    def _mlflow_params(tracker, params: dict) -> None:
        """The config as the run's parameters. A resumed run has them already, and MLflow
        refuses to change a parameter: only new ones are logged, changed ones said once."""
        import mlflow

        have = mlflow.get_run(tracker.active_run.info.run_id).data.params
        changed = sorted(k for k in params if k in have and have[k] != str(params[k]))
        if changed:
            log.warning("MLflow keeps the first value of a parameter; changed since this run "
                        "started: %s", ", ".join(f"{k} {have[k]} -> {params[k]}"
                                                 for k in changed[:5])
                        + (", ..." if len(changed) > 5 else ""))
        tracker.store_init_configuration({k: v for k, v in params.items() if k not in have})

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
        out = {"ids": self.ids, "last_step": self.last_step, "trackers": sorted(self.active)}
        if self.mlflow:
            out["mlflow"] = self.mlflow
        atomic.write_json(self.path, out, indent=1)

    def close(self) -> None:
        for name, tracker in self.active.items():
            try:
                tracker.finish()
            except Exception as exc:  # closing must not fail a finished training
                log.warning("tracker %s did not close cleanly: %s", name, exc)
        self.active = {}
