"""Experiment trackers through Accelerate: MLflow, as users run it, continues ONE run across a
SIGKILL and the resume, on a real tracking server (`mlflow server`, SQLite backend, loopback)
and on MLflow's default store (sqlite:///mlflow.db in the working directory); W&B offline
keeps its run id, a failing tracker is a warning, and `shg status` prints the MLflow link."""

import json
import logging
import os
import subprocess
import sys

import pytest

from helpers import COMMON, CONFIG, metrics, overrides, train_here
from mlflow_server import history, mlflow_server

from shg.run_status import run_progress


@pytest.fixture(scope="module")
def mlflow_url(tmp_path_factory):
    with mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


def _train(cwd, shards, run, *extra, faults="", check=True):
    """`python -m shg.train` started in `cwd` (where MLflow's default store goes)."""
    proc = subprocess.run([sys.executable, "-m", "shg.train", "--config",
                           os.path.abspath(CONFIG), *overrides(shards, run, *extra)],
                          cwd=cwd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "SHG_FAULT": faults})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def _killed_at_6_then_rerun(shards, run, cwd, *extra, rerun_cwd=None, rerun=()):
    """SIGKILLed right after step 6, before its row: steps 1-5 reached MLflow, the newest
    checkpoint is step 4's, so the rerun repeats step 5. Returns (first trackers.json,
    the rerun's output)."""
    args = ['log.trackers=["mlflow"]', *COMMON, "checkpoint.every_steps=4", *extra]
    killed = _train(cwd, shards, run, *args, faults="step:6", check=False)
    assert killed.returncode == -9, killed.stderr[-2000:]
    first = json.loads((run / "trackers.json").read_text())
    assert first["last_step"] == 5
    again = _train(rerun_cwd or cwd, shards, run, *args, *rerun)
    assert [r for r in metrics(run) if r.get("event") == "resumed"][0]["step"] == 4
    return first, again.stdout + again.stderr


def _one_run_once_per_step(uri, run, first, last_step):
    runs, by_run = history(uri)
    assert len(runs) == 1 and runs[0].info.run_id == first["ids"]["mlflow"]
    (loss,) = by_run.values()
    steps = [s for s, _ in loss]
    # every step once, in order: the rerun's step 5 (already sent before the kill) is not
    # sent again, and the history reaches the last step
    assert steps == list(range(1, last_step + 1))
    by_step = {r["step"]: r["loss"] for r in metrics(run) if "loss" in r}
    assert [v for _, v in loss] == pytest.approx([by_step[s] for s in steps])
    return runs[0]


@pytest.mark.slow
def test_mlflow_server_gets_one_run_across_a_kill_and_the_resume(small_shards, tmp_path,
                                                                 monkeypatch, mlflow_url):
    # named by the environment, as a Slurm job gets it from `shg submit`'s shell
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_url)
    run = tmp_path / "run"
    first, output = _killed_at_6_then_rerun(small_shards, run, tmp_path)
    found = _one_run_once_per_step(mlflow_url, run, first, 6)
    assert found.info.status == "FINISHED"
    assert found.data.params["train.max_steps"] == "6" and \
        found.data.params["model.stacks"] == "2"
    assert not list(tmp_path.glob("mlflow.db"))  # nothing went to a local store
    # the link `shg status` prints is the run's page, the one MLflow itself prints at the end
    link = f"{mlflow_url}/#/experiments/{found.info.experiment_id}/runs/{found.info.run_id}"
    assert f"View run {run.name} at: {link}" in output
    assert run_progress(run).line().endswith(f"finished, mlflow {link}")


@pytest.mark.slow
def test_mlflow_default_store_gets_one_run_across_a_kill_and_a_longer_rerun(
        small_shards, tmp_path, monkeypatch):
    # no MLflow setting at all: MLflow's default store, sqlite:///mlflow.db where training
    # starts; the rerun, from another directory and 2 steps longer, continues the same run
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    here, elsewhere, run = tmp_path / "here", tmp_path / "elsewhere", tmp_path / "run"
    here.mkdir(), elsewhere.mkdir()
    first, output = _killed_at_6_then_rerun(small_shards, run, here, rerun_cwd=elsewhere,
                                            rerun=["train.max_steps=8"])
    store = f"sqlite:///{here / 'mlflow.db'}"
    assert first["mlflow"]["uri"] == store and not (elsewhere / "mlflow.db").exists()
    found = _one_run_once_per_step(store, run, first, 8)
    # MLflow keeps a parameter's first value; the rerun says which ones changed
    assert found.data.params["train.max_steps"] == "6"
    assert "changed since this run started: train.max_steps 6 -> 8" in output
    assert run_progress(run).line().endswith(f"mlflow run {found.info.run_id} in {store}")


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
    # (monkeypatched: MLflow exports the URI it is given to this process's environment)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "")
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


def test_the_mlflow_link_is_the_run_page_without_credentials():
    from shg.training.trackers import mlflow_link

    assert mlflow_link("https://me:secret@mlflow.site:5000/", "3", "ab12") == \
        "https://mlflow.site:5000/#/experiments/3/runs/ab12"
    assert mlflow_link("sqlite:////home/me/mlflow.db", "1", "ab12") == \
        "run ab12 in sqlite:////home/me/mlflow.db"


def test_an_unknown_tracker_names_the_valid_ones():
    from shg.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="log.trackers: unknown 'neptune'; valid: tensorboard"):
        load_config("configs/tiny.toml", ['log.trackers=["neptune"]'])
