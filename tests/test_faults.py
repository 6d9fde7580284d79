"""What clusters do to runs, injected: damaged checkpoints, a full disk during a save, a second
trainer on the same run, damaged shards met in training, a loader worker killed. Each fault
gets a clear message and leaves a run that the same command resumes (proved as in
test_train.py: it says so, metrics.jsonl records it, and a start from scratch would fail)."""

import io
import json
import os
import shutil
import signal
import tarfile
from pathlib import Path

import pytest

from helpers import COMMON, STARTED_OVER, assert_resumed, same, start_process, \
    train_here, wait_for_step, weights
from shg.cli import main as shg
from shg.training.checkpoint import complete_checkpoints
from shg.weights import load_weights


# ----------------------------------------------------------------------------- checkpoints
def test_damaged_checkpoints_are_named_and_the_newest_intact_one_resumes(
        small_shards, reference_run, tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)  # checkpoints 2, 4 and 6
    ckpts = run / "checkpoints"
    cut = ckpts / "step-00000006" / "model.safetensors"           # cut short (full quota)
    cut.write_bytes(cut.read_bytes()[:1000])
    flipped = next((ckpts / "step-00000004" / "dcp").glob("*.distcp"))  # one bit flipped
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x40
    flipped.write_bytes(bytes(data))
    for step, name in ((6, "model.safetensors"), (4, f"dcp/{flipped.name}")):
        for cmd in (["eval", "--run", str(run), "--step", str(step), "--shards",
                     str(small_shards), "--out", str(tmp_path / "ev")],
                    ["export", "--run", str(run), "--step", str(step), "--out",
                     str(tmp_path / "m.safetensors")]):
            assert shg(cmd) == 2
            err = capsys.readouterr().err
            assert "damaged checkpoint" in err and name in err and "Traceback" not in err
    assert train_here(small_shards, run, *COMMON, faults=STARTED_OVER) == 0
    out = capsys.readouterr().out
    assert f"checkpoint {ckpts / 'step-00000006'} is damaged: model.safetensors" in out
    assert f"checkpoint {ckpts / 'step-00000004'} is damaged: dcp/{flipped.name}" in out
    assert "resuming from step-00000002 (step 2), the newest intact checkpoint" in out
    assert_resumed(run, 2, out)
    assert same(weights(run, 6), weights(reference_run, 6))  # step 6 again, now intact


def test_every_checkpoint_damaged_is_one_line_saying_what_to_do(small_shards, reference_run,
                                                                tmp_path, capsys):
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    for ckpt in complete_checkpoints(run / "checkpoints"):
        (ckpt / "state.json").write_text("{}")
    assert train_here(small_shards, run, *COMMON) == 2
    err = capsys.readouterr().err
    assert "every checkpoint is damaged" in err and "--resume none" in err


def test_a_damaged_weights_file_is_a_clear_error_not_a_traceback(tmp_path, capsys):
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert shg(["predict", "--model", str(copy), "x.jpg"]) == 2
    err = capsys.readouterr().err
    assert f"{copy}: cannot read the weights" in err and "Traceback" not in err


@pytest.fixture
def better_every_validation(monkeypatch):
    """Validation as it is, but the selection metric rises and the loss falls with the step, so
    best/ and best_by_loss/ are written at every validation (which of them a 6-step tiny run
    really improves is up to the arithmetic; training itself is untouched)."""
    from shg.training import trainer

    original = trainer.Trainer.validate_and_select

    def validate_and_select(self, bar):
        step, real = self.progress.step, trainer.validate

        def rising(cfg, model, accelerator):
            return {**real(cfg, model, accelerator), "pck_constant@0.5": step / 100,
                    "val_loss": 1.0 / step}

        monkeypatch.setattr(trainer, "validate", rising)
        try:
            return original(self, bar)
        finally:
            monkeypatch.setattr(trainer, "validate", real)

    monkeypatch.setattr(trainer.Trainer, "validate_and_select", validate_and_select)


@pytest.mark.parametrize("kind", ["checkpoint", "best", "best_by_loss"])
def test_a_full_disk_stops_the_run_cleanly_and_the_rerun_resumes(
        small_shards, reference_run, tmp_path, kind, capsys, better_every_validation):
    """ENOSPC at step 4 while writing the checkpoint, best/ or best_by_loss/: exit 2 naming
    what failed, the half-written directory gone, everything written before intact (at a
    step best/ comes first, then best_by_loss/, then the checkpoint), the rerun resumes."""
    run = tmp_path / "run"
    fault = "enospc:4" if kind == "checkpoint" else f"enospc-{kind}:4"
    assert train_here(small_shards, run, *COMMON, faults=fault) == 2
    err = capsys.readouterr().err
    what = "checkpoint step 4" if kind == "checkpoint" else f"{kind}/ of step 4"
    assert f"cannot write {what}" in err and "No space left on device" in err
    assert "intact" in err and "Traceback" not in err
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["step-00000002"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    written_at_4 = {"checkpoint": ("best", "best_by_loss"), "best_by_loss": ("best",),
                    "best": ()}[kind]
    for name in ("best", "best_by_loss"):
        info = json.loads((run / name / "info.json").read_text())
        assert info["step"] == (4 if name in written_at_4 else 2), name
        tensors, meta = load_weights(run / name)
        assert meta["step"] == info["step"]  # weights and info.json from the same save
        assert same(tensors, weights(reference_run, info["step"]))
        assert len(list(run.glob(f".{name}-*"))) == 1  # the failed one left nothing
    assert not (run / "LOCK").exists() and not (run / "summary.json").exists()
    assert train_here(small_shards, run, *COMMON, faults=STARTED_OVER) == 0
    assert_resumed(run, 2, capsys.readouterr().out)
    assert same(weights(run, 6), weights(reference_run, 6))


def test_resume_from_a_named_checkpoint(small_shards, reference_run, tmp_path, capsys):
    point = reference_run / "checkpoints" / "step-00000002"
    other = tmp_path / "other"
    assert train_here(small_shards, other, *COMMON, f"checkpoint.resume={point}",
                      faults=STARTED_OVER) == 0
    assert_resumed(other, 2, capsys.readouterr().out, point=point)
    assert same(weights(other, 6), weights(reference_run, 6))
    assert train_here(small_shards, tmp_path / "x", *COMMON,
                      f"checkpoint.resume={tmp_path}") == 2
    assert "not a complete checkpoint" in capsys.readouterr().err


# ----------------------------------------------------------------------------- one trainer
@pytest.mark.slow
def test_a_second_trainer_on_a_running_run_is_refused(small_shards, tmp_path, capsys):
    run = tmp_path / "run"
    # the first trainer holds after step 1 (until a signal that never comes): it is running
    first = start_process(small_shards, run, "train.max_steps=4", "eval.every_steps=1000",
                          "checkpoint.every_steps=1000", faults="hold:1")
    try:
        assert wait_for_step(run, 1, first), first.communicate()[1][-3000:]
        holder = json.loads((run / "LOCK").read_text())
        assert holder["pid"] == first.pid
        assert train_here(small_shards, run, "train.max_steps=2") == 2
        err = capsys.readouterr().err
        assert f"pid {first.pid}" in err and "being trained by another" in err
        assert first.poll() is None  # the first one trains on
    finally:
        first.kill()
        first.communicate()
    # killed: its LOCK stays behind, stale; the next trainer takes the run over and says so
    assert (run / "LOCK").exists()
    assert train_here(small_shards, run, "train.max_steps=2", "eval.every_steps=1000",
                      "checkpoint.every_steps=1000") == 0
    out = capsys.readouterr().out
    assert f"taking over {run}" in out and f"its process {first.pid} is gone" in out
    assert not (run / "LOCK").exists()  # released at the end


def test_lock_decisions_for_slurm_jobs_and_other_hosts(tmp_path, monkeypatch):
    from shg.training import run_lock

    run = tmp_path / "run"
    run.mkdir()
    other = {"host": "node-17", "pid": 4242, "slurm_job_id": "777", "started": "x"}
    (run / "LOCK").write_text(json.dumps(other))
    alive = lambda job: "RUNNING"  # noqa: E731
    with pytest.raises(run_lock.RunInUse, match="host node-17, pid 4242, Slurm job 777"):
        run_lock.acquire(run, job_state=alive)
    said = []
    mine = run_lock.acquire(run, log=lambda *a, **k: said.append(a[0]),
                            job_state=lambda job: "")
    assert "Slurm job 777 is no longer listed" in said[0]
    assert json.loads((run / "LOCK").read_text()) == mine
    (run / "LOCK").write_text(json.dumps(other))
    said.clear()
    monkeypatch.setenv("SLURM_JOB_ID", "777")  # the requeued job itself: taken over silently
    run_lock.acquire(run, log=lambda *a, **k: said.append(a[0]), job_state=alive)
    monkeypatch.delenv("SLURM_JOB_ID")
    assert not said and json.loads((run / "LOCK").read_text())["slurm_job_id"] == "777"
    (run / "LOCK").write_text(json.dumps({**other, "slurm_job_id": None}))
    with pytest.raises(run_lock.RunInUse, match="delete"):  # nothing to check it with
        run_lock.acquire(run, job_state=alive)
    assert run_lock.stale_reason({**other, "slurm_job_id": "9"}, lambda j: "COMPLETED") == \
        "Slurm job 9 is COMPLETED"
    assert run_lock.stale_reason({**other, "slurm_job_id": "9"}, lambda j: None) is None


# ----------------------------------------------------------------------------- damaged data
def _copy_with_corrupt_pngs(shards: Path, dest: Path) -> set[str]:
    """A copy of the shards in which the first PNG of every training shard is garbage (same
    size: the tars stay valid). Returns the "shard: sample key" of each damaged one."""
    shutil.copytree(shards, dest)
    manifest = json.loads((dest / "manifest.json").read_text())
    damaged = set()
    for entry in manifest["splits"]["train2017"]["shards"]:
        shard = dest / entry["file"]
        with tarfile.open(shard) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(".png"))
        data = bytearray(shard.read_bytes())
        data[member.offset_data:member.offset_data + member.size] = b"\x07" * member.size
        shard.write_bytes(bytes(data))
        damaged.add(f"{shard.name}: sample {member.name.rsplit('.', 1)[0]}")
    return damaged


def test_a_damaged_sample_stops_training_by_default_or_is_skipped_and_counted(
        small_shards, tmp_path, capsys):
    shards = tmp_path / "shards"
    damaged = _copy_with_corrupt_pngs(small_shards, shards)
    # shuffle buffer 1: a damaged sample comes in the first batch, whichever shard is first
    common = ["data.shuffle_buffer=1", "train.max_steps=4", "eval.every_steps=1000",
              "checkpoint.every_steps=1000"]
    assert train_here(shards, tmp_path / "stop", *common) == 2
    err = capsys.readouterr().err
    named = [d for d in damaged if f"{d}: cannot decode it" in err]
    assert len(named) == 1, err[-2000:]
    assert "Traceback" not in err
    with pytest.warns(UserWarning) as warned:
        assert train_here(shards, tmp_path / "skip", *common, "data.on_error=skip") == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    # shuffle buffer 1 and batch 2: the first batch of each pass over a shard holds its damaged
    # first sample; 4 steps read 8 samples from the first shard only
    assert summary["step"] == 4 and summary["skipped_samples"] == 1
    rows = [json.loads(l) for l in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert steps[-1]["step"] == 4 and steps[-1]["skipped_samples"] == summary["skipped_samples"]
    assert "damaged samples were skipped" in captured.err
    assert sum(f"{d}: skipped" in str(w.message) for d in damaged for w in warned) == 1


def test_a_missing_or_short_shard_is_found_at_start(small_shards, tmp_path, capsys):
    shards = tmp_path / "shards"
    shutil.copytree(small_shards, shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    files = [s["file"] for s in manifest["splits"]["train2017"]["shards"]]
    (shards / files[1]).unlink()
    assert train_here(shards, tmp_path / "a", "train.max_steps=2") == 2
    assert f"{files[1]}: listed in" in capsys.readouterr().err
    shutil.copy(small_shards / files[1], shards / files[1])
    buf = io.BytesIO()
    with tarfile.open(small_shards / files[0]) as src, \
            tarfile.open(fileobj=buf, mode="w") as dst:
        for member in src.getmembers()[:-2]:  # one sample (png + json) fewer
            dst.addfile(member, src.extractfile(member))
    (shards / files[0]).write_bytes(buf.getvalue())
    assert train_here(shards, tmp_path / "b", "train.max_steps=2") == 2
    n = manifest["splits"]["train2017"]["shards"][0]["num_samples"]
    assert f"holds {n - 1} samples, the manifest says {n}" in capsys.readouterr().err
    assert not (tmp_path / "b" / "checkpoints").exists()


@pytest.mark.slow
def test_a_killed_loader_worker_is_a_clear_error_not_a_hang(small_shards, tmp_path):
    import subprocess
    import time

    run = tmp_path / "run"
    proc = start_process(small_shards, run, "data.num_workers=2", "train.max_steps=500",
                         "eval.every_steps=1000", "checkpoint.every_steps=1000")
    try:
        assert wait_for_step(run, 2, proc), proc.communicate()[1][-3000:]
        deadline = time.time() + 30
        workers = []
        while not workers and time.time() < deadline:
            workers = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)],
                                     capture_output=True, text=True).stdout.split()
        assert workers, "no loader workers found"
        os.kill(int(workers[0]), signal.SIGKILL)  # what the OOM killer does
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "a data loader worker died" in err and "data.num_workers" in err
    assert "Traceback" not in err
