"""Experiment trackers through Accelerate: MLflow on a local store continues ONE run across a
SIGKILL and the resume, W&B offline keeps its run id, a failing tracker is a warning, and the
metrics rows say where the time went."""

import json
import logging

import pytest

from helpers import COMMON, metrics, train_here, train_process


def _mlflow_history(store, name="loss"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"file:{store}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "shg"]
    runs = client.search_runs([experiment.experiment_id])
    return runs, {r.info.run_id: [(m.step, m.value) for m in
                                  client.get_metric_history(r.info.run_id, name)] for r in runs}


@pytest.mark.slow
def test_mlflow_continues_one_run_across_a_kill_and_the_resume(small_shards, tmp_path,
                                                               monkeypatch):
    # a local file store (MLflow 3 wants a database or a server; the file store still works
    # when allowed, and is what a test can own)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    run, store = tmp_path / "run", tmp_path / "mlruns"
    tracking = ['log.trackers=["mlflow"]', f"log.mlflow_tracking_uri=file:{store}", *COMMON,
                "checkpoint.every_steps=4"]
    # SIGKILLed right after step 6, before its row: steps 1-5 reached MLflow, the newest
    # checkpoint is step 4's, so the rerun repeats step 5
    killed = train_process(small_shards, run, *tracking, faults="step:6", check=False)
    assert killed.returncode == -9
    first = json.loads((run / "trackers.json").read_text())
    assert first["last_step"] == 5
    train_process(small_shards, run, *tracking)
    assert [r for r in metrics(run) if r.get("event") == "resumed"][0]["step"] == 4
    runs, history = _mlflow_history(store)
    assert len(runs) == 1 and runs[0].info.run_id == first["ids"]["mlflow"]
    (loss,) = history.values()
    steps = [s for s, _ in loss]
    # every step once, in order: the rerun's step 5 (already sent before the kill) is not
    # sent again, and the history reaches the last step
    assert steps == [1, 2, 3, 4, 5, 6]
    by_step = {r["step"]: r["loss"] for r in metrics(run) if "loss" in r}
    assert [v for _, v in loss] == pytest.approx([by_step[s] for s in steps])
    params = runs[0].data.params
    assert params["train.max_steps"] == "6" and params["model.stacks"] == "2"


def test_wandb_offline_keeps_its_run_id_when_the_run_resumes(small_shards, tmp_path,
                                                             monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    run = tmp_path / "run"
    extra = ['log.trackers=["wandb"]', "eval.every_steps=2", "checkpoint.every_steps=2"]
    assert train_here(small_shards, run, *extra, "train.max_steps=2") == 0
    first = json.loads((run / "trackers.json").read_text())["ids"]["wandb"]
    assert train_here(small_shards, run, *extra, "train.max_steps=4") == 0
    assert [r["step"] for r in metrics(run) if r.get("event") == "resumed"] == [2]
    saved = json.loads((run / "trackers.json").read_text())
    assert saved["ids"]["wandb"] == first and saved["last_step"] == 4
    offline = sorted(p.name for p in (run / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(name.endswith(f"-{first}") for name in offline)


def test_a_tracker_that_fails_is_a_warning_and_training_goes_on(small_shards, tmp_path,
                                                                monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="shg"):
        assert train_here(small_shards, run, 'log.trackers=["mlflow", "tensorboard"]',
                          "log.mlflow_tracking_uri=http://127.0.0.1:9", "train.max_steps=3",
                          "eval.every_steps=3") == 0
    assert any("tracker mlflow left out" in r.getMessage() for r in caplog.records)
    assert [r["step"] for r in metrics(run) if "loss" in r] == [1, 2, 3]
    assert list((run / "tb").glob("events.out.tfevents.*"))  # the other tracker still ran
    assert json.loads((run / "trackers.json").read_text())["trackers"] == ["tensorboard"]


def test_an_unknown_tracker_names_the_valid_ones():
    from shg.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="log.trackers: unknown 'neptune'; valid: tensorboard"):
        load_config("configs/tiny.toml", ['log.trackers=["neptune"]'])
