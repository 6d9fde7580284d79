"""Training end to end on a tiny SHG: loss falls, checkpoints are complete-or-absent and resume
bit-identically after SIGKILL, NaN stops cleanly, mismatched weights are named."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shg.training.checkpoint import complete_checkpoints
from shg.weights import load_weights

TINY = ["model.stacks=2", "model.features=16", "train.batch_size=2", "data.num_workers=0",
        "data.shuffle_buffer=8", "eval.max_samples=8", "eval.batch_size=8",
        "optim.lr=0.002", "train.log_every=1", "train.deterministic=true"]


def run_train(shards, run_dir, *extra, env=None, check=True):
    cmd = [sys.executable, "-m", "shg.train", "--config", "configs/tiny.toml",
           f"data.shards={shards}", f"run_dir={run_dir}", *TINY, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def weights(run_dir, step):
    return load_weights(Path(run_dir) / "checkpoints" / f"step-{step:08d}")[0]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_training_writes_a_complete_run_and_learns(synth_shards, tmp_path):
    run = tmp_path / "run"
    run_train(synth_shards, run, "train.max_steps=30", "eval.every_steps=15",
              "checkpoint.every_steps=10", "checkpoint.keep=2")
    rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.5 * sum(losses[:3]) / 3
    assert all(r["img_per_s"] > 0 for r in rows if "loss" in r)
    evals = [r for r in rows if "val_loss" in r]
    assert [r["step"] for r in evals] == [15, 30]
    assert all("pck_constant@0.5" in r and "pck_bbox@0.2" in r for r in evals)
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == [
        "step-00000020", "step-00000030"]  # keep=2
    assert not list((run / "checkpoints").glob(".tmp-*"))
    info = json.loads((run / "best" / "info.json").read_text())
    best = max(r["pck_constant@0.5"] for r in evals)
    assert info["metrics"]["pck_constant@0.5"] == best
    by_loss = json.loads((run / "best_by_loss" / "info.json").read_text())
    lowest = min(evals, key=lambda r: r["val_loss"])
    assert by_loss["step"] == lowest["step"] and by_loss["metrics"]["val_loss"] == \
        lowest["val_loss"]
    cfg = (run / "config.toml").read_text()
    assert "stacks = 2" in cfg and str(synth_shards) in cfg
    assert (run / "tb").is_dir()
    state = json.loads((run / "checkpoints" / "step-00000030" / "state.json").read_text())
    assert state["step"] == 30 and state["samples_seen"] == 60


def test_best_is_chosen_by_pck_not_by_loss(synth_shards, tmp_path, monkeypatch):
    """Feed validate() a PCK that falls while the loss falls: best/ must stay at the first."""
    from shg.config import load_config
    from shg.training import trainer as train_mod

    calls = []

    def fake_validate(cfg, model, acc):
        calls.append(1)
        n = len(calls)
        return {"val_loss": 1.0 / n, "val_samples": 8, "pck_constant@0.5": 1.0 / n,
                "pck_bbox@0.5": 1.0 / n}

    monkeypatch.setattr(train_mod, "validate", fake_validate)
    cfg = load_config("configs/tiny.toml", [f"data.shards={synth_shards}",
                                            f"run_dir={tmp_path / 'r'}", *TINY,
                                            "train.max_steps=6", "eval.every_steps=2",
                                            "eval.thresholds=[0.5]", "eval.early_stop_patience=2"])
    summary = train_mod.Trainer(cfg).fit()
    info = json.loads((tmp_path / "r" / "best" / "info.json").read_text())
    assert info["step"] == 2 and summary["best_step"] == 2
    assert summary["step"] == 6 and len(calls) == 3  # stopped by patience 2 at step 6


def test_sigkill_anywhere_then_resume_is_bit_identical(synth_shards, tmp_path):
    common = ["train.max_steps=6", "eval.every_steps=3", "checkpoint.every_steps=2",
              "checkpoint.keep=2"]
    ref = tmp_path / "ref"
    run_train(synth_shards, ref, *common)
    final = weights(ref, 6)

    for fault in ("step:3", "save:4", "step:5"):
        run = tmp_path / fault.replace(":", "-")
        killed = run_train(synth_shards, run, *common, env={"SHG_FAULT": fault}, check=False)
        assert killed.returncode == -9
        if fault == "save:4":
            assert (run / "checkpoints" / ".tmp-step-00000004").is_dir()
            assert [p.name for p in complete_checkpoints(run / "checkpoints")] == [
                "step-00000002"]
        resumed = run_train(synth_shards, run, *common)
        expected_from = {"step:3": 2, "save:4": 2, "step:5": 4}[fault]
        assert "resumed from" in resumed.stdout and f"at step {expected_from}" in resumed.stdout
        assert same(weights(run, 6), final), f"weights differ after {fault}"
        assert not list((run / "checkpoints").glob(".tmp-*"))

    again = run_train(synth_shards, tmp_path / "ref", *common, "checkpoint.resume=none")
    assert "resumed" not in again.stdout
    assert same(weights(ref, 6), final)


def test_nan_loss_stops_with_last_checkpoint_intact(synth_shards, tmp_path):
    run = tmp_path / "nan"
    proc = run_train(synth_shards, run, "train.max_steps=6", "checkpoint.every_steps=2",
                     "eval.every_steps=100", env={"SHG_FAULT": "nan:4"}, check=False)
    assert proc.returncode == 3
    assert "loss is nan at step 4" in proc.stderr and "step-00000002" in proc.stderr
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["step-00000002"]


def test_other_architecture_is_named(synth_shards, tmp_path):
    run = tmp_path / "arch"
    run_train(synth_shards, run, "train.max_steps=2", "checkpoint.every_steps=2",
              "eval.every_steps=100")
    proc = run_train(synth_shards, run, "train.max_steps=4", "model.stacks=3", check=False)
    assert proc.returncode != 0
    assert "weights do not fit this model" in proc.stderr and "missing: " in proc.stderr
    assert re.search(r"(hourglasses|features_out|heads)\.2\.", proc.stderr)
    assert "Traceback" not in proc.stderr


def test_export_gives_loadable_weights(synth_shards, tmp_path):
    from shg.cli import main as shg
    from shg.models import StackedHourglass

    run = tmp_path / "exp"
    run_train(synth_shards, run, "train.max_steps=2", "checkpoint.every_steps=2",
              "eval.every_steps=2")
    assert shg(["export", "--run", str(run), "--out", str(tmp_path / "m.safetensors")]) == 0
    tensors, meta = load_weights(tmp_path / "m.safetensors")
    model = StackedHourglass(**meta["model"])
    model.load_state_dict(tensors)
    assert len(meta["mean_rgb"]) == 3 and meta["crop_size"] == 256
    assert shg(["export", "--run", str(run), "--step", "2", "--out",
                str(tmp_path / "s.safetensors")]) == 0
    assert shg(["export", "--run", str(run), "--step", "5", "--out",
                str(tmp_path / "x.safetensors")]) == 2


def test_bf16_autocast_keeps_the_loss_curve_of_fp32(synth_shards, tmp_path):
    """bf16 autocast (+ channels_last) is the CPU default only because it trains like fp32."""
    curves = {}
    for precision in ("no", "bf16"):
        run = tmp_path / precision
        run_train(synth_shards, run, "train.max_steps=16", f"mixed_precision={precision}",
                  "eval.every_steps=100", "checkpoint.every_steps=100",
                  "model.channels_last=true",
                  # a steep curve to compare (zero heads start at the flat zero prediction)
                  "model.zero_heads=false")
        rows = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
        curves[precision] = [r["loss"] for r in rows if "loss" in r]
        assert f'mixed_precision = "{precision}"' in (run / "config.toml").read_text()
    fp32, bf16 = curves["no"], curves["bf16"]
    assert len(fp32) == len(bf16) == 16
    assert bf16[0] == pytest.approx(fp32[0], rel=0.02)  # same init, same first batch
    # Early steps are chaotic (a 2e-3 learning rate on a fresh net); compare 4-step means.
    for i in range(0, 16, 4):
        a, b = sum(fp32[i:i + 4]) / 4, sum(bf16[i:i + 4]) / 4
        # never clearly worse, and not a different curve altogether. (Faster is allowed within
        # reason: on an AMD EPYC without avx512_bf16, bf16 ran 2.5x lower than fp32 in steps
        # 12-15 - 0.0100 vs 0.0251 - in the noisy tail of this steep start, old code and new.)
        assert 0.2 * a <= b <= 1.3 * a, f"steps {i}-{i + 3}: fp32 {a:.4f} vs bf16 {b:.4f}"
    assert sum(bf16[-4:]) <= 1.25 * sum(fp32[-4:])
    assert sum(bf16[-4:]) < 0.1 * bf16[0] * 4  # and it learns


def test_grad_accumulation_resumes_exactly(synth_shards, tmp_path):
    common = ["train.max_steps=4", "train.grad_accum=2", "eval.every_steps=100",
              "checkpoint.every_steps=2"]
    run_train(synth_shards, tmp_path / "ref", *common)
    run = tmp_path / "killed"
    assert run_train(synth_shards, run, *common, env={"SHG_FAULT": "step:3"},
                     check=False).returncode == -9
    run_train(synth_shards, run, *common)
    assert same(weights(run, 4), weights(tmp_path / "ref", 4))
    state = json.loads((run / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["samples_seen"] == 4 * 2 * 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed on GPUs")
def test_fp16_on_cpu_is_refused(synth_shards, tmp_path):
    proc = run_train(synth_shards, tmp_path / "fp16", "mixed_precision=fp16", check=False)
    assert proc.returncode == 2 and "fp16 needs a GPU" in proc.stderr


def _row(line: str) -> dict:
    try:
        return json.loads(line)
    except ValueError:  # a line cut by a kill
        return {}


def _wait_for_step(run, step, proc, timeout=120):
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        metrics = Path(run) / "metrics.jsonl"
        if metrics.exists() and any(_row(l).get("step", 0) >= step
                                    for l in metrics.read_text().splitlines() if l.strip()):
            return True
        time.sleep(0.2)
    return False


@pytest.mark.parametrize("nproc", [1, 2])
def test_stop_signal_saves_and_the_rerun_resumes_exactly(synth_shards, tmp_path, nproc):
    """Slurm's warning signal before preemption/time-out: every rank finishes its step, a
    checkpoint is saved collectively, exit 75; running again ends bit-identical."""
    import signal as sig

    common = ["train.max_steps=30", "eval.every_steps=100", "checkpoint.every_steps=100"]
    args = ["--config", "configs/tiny.toml", f"data.shards={synth_shards}", *TINY, *common]
    launch = ([sys.executable, "-m", "shg.train"] if nproc == 1 else
              [sys.executable, "-m", "shg.cli", "train", "--nproc", "2"])
    ref = tmp_path / "ref"
    subprocess.run([*launch, *args, f"run_dir={ref}"], capture_output=True, check=True)
    run = tmp_path / "sig"
    cmd = [*launch, *args, f"run_dir={run}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    assert _wait_for_step(run, 5, proc), proc.communicate()[1][-3000:]
    os.killpg(proc.pid, sig.SIGUSR2)  # Slurm signals every task of the job
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 75, err[-3000:]
    saved = complete_checkpoints(run / "checkpoints")
    assert len(saved) == 1
    stopped_at = int(saved[0].name.split("-")[1])
    assert 5 <= stopped_at < 30
    events = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event", "").startswith("stopped by") for e in events)
    assert json.loads((saved[0] / "state.json").read_text())["world_size"] == nproc
    resumed = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"at step {stopped_at}" in resumed.stdout
    assert same(weights(run, 30), weights(ref, 30))  # as if never stopped, 1 or 2 processes


@pytest.mark.slow
def test_sigkill_of_a_whole_two_process_run_then_reruns_is_bit_identical(synth_shards,
                                                                           tmp_path):
    """The process group of a 2-process DDP run killed at seeded random moments, three
    times; the same command run again until it finishes ends with the weights of an
    uninterrupted 2-process run."""
    import random
    import signal as sig
    import time

    common = ["train.max_steps=16", "eval.every_steps=5", "checkpoint.every_steps=3"]
    cmd = [sys.executable, "-m", "shg.cli", "train", "--nproc", "2", "--config",
           "configs/tiny.toml", f"data.shards={synth_shards}", *TINY, *common]
    ref = tmp_path / "ref"
    subprocess.run([*cmd, f"run_dir={ref}"], capture_output=True, check=True, timeout=600)
    run = tmp_path / "killed"
    rng = random.Random(7)
    kills = 0
    for at_step in (3, 7, 12):
        proc = subprocess.Popen([*cmd, f"run_dir={run}"], stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        if _wait_for_step(run, at_step, proc):
            time.sleep(rng.uniform(0.0, 1.5))  # mid-step, mid-validation or mid-save
            os.killpg(proc.pid, sig.SIGKILL)
            kills += proc.wait() != 0
        else:
            proc.wait()
    assert kills >= 2
    for _ in range(3):
        done = subprocess.run([*cmd, f"run_dir={run}"], capture_output=True, text=True,
                              timeout=600)
        if done.returncode == 0:
            break
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((run / "checkpoints" / "step-00000016" / "state.json").read_text())[
        "world_size"] == 2
    assert same(weights(run, 16), weights(ref, 16))
    assert not list((run / "checkpoints").glob(".tmp-*"))
