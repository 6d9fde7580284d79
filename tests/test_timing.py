"""Where a run's time goes: step time, loader wait and its split in every step row, timed
validations and checkpoints, totals in the summary, the once-only loader warning, and how far
a run is (`shg status RUN`, stalled runs)."""

import json
import logging
import time

import pytest

from helpers import metrics, train_here
from shg.cli import main as shg
from shg.run_status import run_progress
from shg.training.timing import LoaderWatch


@pytest.fixture
def slow_loader(monkeypatch):
    """The training loader takes 0.6 s more per batch (a loader that cannot keep up; long
    enough to dominate a tiny step even on a loaded machine)."""
    from shg.training import trainer

    real = trainer.train_stream

    def slowed(*args, **kwargs):
        stream, loader = real(*args, **kwargs)

        def batches():
            for batch in loader:
                time.sleep(0.6)
                yield batch
        return stream, batches()

    monkeypatch.setattr(trainer, "train_stream", slowed)


def _steps(run):
    return [r for r in metrics(run) if "loss" in r]


def test_step_rows_split_the_time_and_the_summary_totals_it(small_shards, tmp_path):
    run = tmp_path / "run"
    assert train_here(small_shards, run, "train.max_steps=8", "eval.every_steps=4",
                      "checkpoint.every_steps=4", "train.log_every=2") == 0
    rows = metrics(run)
    steps = _steps(run)
    assert [r["step"] for r in steps] == [2, 4, 6, 8]
    for row in steps:
        parts = row["input_s"] + row["compute_s"] + row["optimizer_s"]
        assert 0 < row["compute_s"] and 0 <= row["data_wait_frac"] <= 1
        # the phases and the wait fit in the step time (the rest is bookkeeping)
        assert parts + row["data_wait_frac"] * row["step_s"] <= row["step_s"] * 1.02
    # validations and checkpoints are timed apart, not counted in the steps' time
    assert [r["step"] for r in rows if "val_s" in r] == [4, 8]
    assert [r["step"] for r in rows if r.get("event") == "checkpoint"] == [4, 8]
    summary = json.loads((run / "summary.json").read_text())["seconds"]
    assert summary["validation"] == pytest.approx(sum(r["val_s"] for r in rows if "val_s" in r),
                                                  abs=0.05)
    assert summary["checkpoint"] == pytest.approx(
        sum(r["checkpoint_s"] for r in rows if "checkpoint_s" in r), abs=0.05)
    assert summary["compute"] == pytest.approx(
        sum(2 * (r["input_s"] + r["compute_s"] + r["optimizer_s"]) for r in steps), rel=0.01)
    assert summary["data_wait"] == pytest.approx(
        sum(2 * r["step_s"] * r["data_wait_frac"] for r in steps), abs=0.01)


def test_a_slow_loader_shows_in_the_rows_and_is_warned_about_once(small_shards, tmp_path,
                                                                  slow_loader, caplog):
    run = tmp_path / "run"
    with caplog.at_level(logging.WARNING, logger="shg"):
        assert train_here(small_shards, run, "train.max_steps=8", "eval.every_steps=8",
                          "checkpoint.every_steps=8") == 0
    steps = _steps(run)
    # every step waited at least the injected delay (seconds, not a share: a loaded machine
    # stretches the compute part)
    assert all(r["data_wait_frac"] * r["step_s"] > 0.6 * 0.9 for r in steps[1:])
    warnings = [r.getMessage() for r in caplog.records if "bottleneck" in r.getMessage()]
    assert len(warnings) == 1 and "data.num_workers=2" in warnings[0]  # from 0 workers
    events = [r for r in metrics(run) if r.get("event") == "loader_bottleneck"]
    assert len(events) == 1 and events[0]["step"] == 3  # the third row of the window
    summary = json.loads((run / "summary.json").read_text())["seconds"]
    assert summary["data_wait"] > 8 * 0.6 * 0.9


def test_loader_advice_is_the_workers_that_would_keep_up():
    watch = LoaderWatch(threshold=0.3, window=2)
    row = {"step_s": 1.0, "data_wait_frac": 0.75}  # compute 0.25 s of each 1 s step
    assert watch.check(row, samples_per_step=16, workers=2) is None  # one row: not yet
    message = watch.check(row, samples_per_step=16, workers=2)
    # 2 workers deliver 16 samples/s (8 each); compute could take 64/s: 8 workers
    assert "8.0 samples/s each" in message and "could take 64.0/s" in message
    assert "data.num_workers=8" in message
    assert watch.check(row, 16, 2) is None  # once
    assert LoaderWatch(threshold=0.3, window=1).check(
        {"step_s": 1.0, "data_wait_frac": 0.2}, 16, 2) is None


def _rows(run, rows, cfg_steps=100):
    run.mkdir(parents=True, exist_ok=True)
    (run / "config.toml").write_text(f"[train]\nmax_steps = {cfg_steps}\n")
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_progress_eta_metric_and_stalled_from_the_metrics(tmp_path):
    now = 10_000.0
    rows = [{"time": now - 50 + i * 10, "step": 10 * (i + 1), "loss": 0.1, "img_per_s": 32.0,
             "step_s": 0.5} for i in range(4)]
    rows.insert(2, {"time": now - 30, "step": 20, "val_loss": 0.1, "pck_constant@0.5": 0.4})
    rows.append({"time": now - 20, "step": 40, "val_loss": 0.1, "pck_constant@0.5": 0.3})
    _rows(tmp_path / "r", rows)
    p = run_progress(tmp_path / "r", now=now)
    assert (p.state, p.step, p.max_steps, p.img_per_s) == ("running", 40, 100, 32.0)
    assert p.eta_s == pytest.approx(60 * 0.5)
    assert (p.last_value, p.best_value, p.best_step) == (0.3, 0.4, 20)
    assert p.line() == ("step 40/100 (40%), 32.0 img/s, ETA 0:00:30, pck_constant@0.5 0.3 "
                        "(best 0.4 at 20)")
    # rows came every 10 s; none for 20 min: stalled
    late = run_progress(tmp_path / "r", now=now + 1200)
    assert late.state == "stalled" and "STALLED: no new row for 0:20:" in late.line()
    assert run_progress(tmp_path / "r", now=now + 60).state == "running"  # 5x10 s < 120 s
    rows.append({"time": now, "step": 40, "event": "stopped by USR2"})
    _rows(tmp_path / "r", rows)
    assert run_progress(tmp_path / "r", now=now + 1200).state == "stopped"
    assert run_progress(tmp_path / "nothing").state == "not started"


def test_shg_status_of_a_finished_run(trained_run, capsys):
    capsys.readouterr()
    assert shg(["status", str(trained_run)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(str(trained_run)) and "step 4/4 (100%)" in line
    assert line.endswith("finished") and "ETA" not in line
