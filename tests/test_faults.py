"""What clusters do to runs, injected: damaged checkpoints, a full disk during a save, a second
trainer on the same run, damaged shards met in training, a loader worker killed. Each fault
gets a clear message and leaves a run that the same command resumes."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch

from shg.cli import main as shg
from shg.training.checkpoint import complete_checkpoints
from shg.weights import load_weights

TINY = ["model.stacks=2", "model.features=16", "train.batch_size=2", "data.num_workers=0",
        "data.shuffle_buffer=8", "eval.max_samples=8", "eval.batch_size=8",
        "optim.lr=0.002", "train.log_every=1", "train.deterministic=true"]
COMMON = ["train.max_steps=6", "eval.every_steps=2", "checkpoint.every_steps=2",
          "checkpoint.keep=3"]


def train(shards, run, *extra, env=None, check=True, timeout=600):
    cmd = [sys.executable, "-m", "shg.train", "--config", "configs/tiny.toml",
           f"data.shards={shards}", f"run_dir={run}", *TINY, *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    if check:
        assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def final_weights(run, step=6):
    return load_weights(Path(run) / "checkpoints" / f"step-{step:08d}")[0]


def same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def reference(synth_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("faults") / "ref"
    train(synth_shards, run, *COMMON)
    return run


def _step(path: Path) -> int:
    return int(path.name.split("-")[1])


# ----------------------------------------------------------------------------- checkpoints
def test_damaged_checkpoints_are_named_and_the_newest_intact_one_resumes(
        synth_shards, reference, tmp_path, capsys):
    run = tmp_path / "run"
    train(synth_shards, run, *COMMON)  # checkpoints 2, 4 and 6
    ckpts = run / "checkpoints"
    cut = ckpts / "step-00000006" / "model.safetensors"           # cut short (full quota)
    cut.write_bytes(cut.read_bytes()[:1000])
    flipped = next((ckpts / "step-00000004" / "dcp").glob("*.distcp"))  # one bit flipped
    data = bytearray(flipped.read_bytes())
    data[len(data) // 2] ^= 0x40
    flipped.write_bytes(bytes(data))
    for step, name in ((6, "model.safetensors"), (4, f"dcp/{flipped.name}")):
        for cmd in (["eval", "--run", str(run), "--step", str(step), "--shards",
                     str(synth_shards), "--out", str(tmp_path / "ev")],
                    ["export", "--run", str(run), "--step", str(step), "--out",
                     str(tmp_path / "m.safetensors")]):
            assert shg(cmd) == 2
            err = capsys.readouterr().err
            assert "damaged checkpoint" in err and name in err and "Traceback" not in err
    resumed = train(synth_shards, run, *COMMON)
    assert f"checkpoint {ckpts / 'step-00000006'} is damaged: model.safetensors" in resumed.stdout
    assert f"checkpoint {ckpts / 'step-00000004'} is damaged: dcp/{flipped.name}" in \
        resumed.stdout
    assert "resuming from step-00000002 (step 2)" in resumed.stdout
    assert "at step 2" in resumed.stdout
    assert same(final_weights(run), final_weights(reference))  # step 6 again, now intact


def test_a_damaged_weights_file_is_a_clear_error_not_a_traceback(synth_shards, reference,
                                                                  tmp_path, capsys):
    copy = tmp_path / "m.safetensors"
    copy.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json at all")
    assert shg(["predict", "--model", str(copy), "x.jpg"]) == 2
    err = capsys.readouterr().err
    assert f"{copy}: cannot read the weights" in err and "Traceback" not in err


@pytest.mark.parametrize("fault,stopped_at", [("enospc:4", 4), ("enospc-best:4", 4)])
def test_a_full_disk_stops_the_run_cleanly_and_the_rerun_resumes(
        synth_shards, reference, tmp_path, fault, stopped_at):
    run = tmp_path / "run"
    proc = train(synth_shards, run, *COMMON, env={"SHG_FAULT": fault}, check=False)
    assert proc.returncode == 2, proc.stderr[-3000:]
    what = "checkpoint step 4" if fault.startswith("enospc:") else "best/ of step 4"
    assert f"cannot write {what}" in proc.stderr and "No space left on device" in proc.stderr
    assert "intact" in proc.stderr and "Traceback" not in proc.stderr
    assert [p.name for p in complete_checkpoints(run / "checkpoints")] == ["step-00000002"]
    assert not list((run / "checkpoints").glob(".tmp-*"))
    best = json.loads((run / "best" / "info.json").read_text())
    expected_best_step = 4 if fault.startswith("enospc:") else 2  # best/ was written first
    assert best["step"] == expected_best_step
    weights, meta = load_weights(run / "best")
    assert meta["step"] == best["step"]  # weights and info.json from the same save
    assert len(list(run.glob(".best-*"))) == 1
    resumed = train(synth_shards, run, *COMMON)
    assert "at step 2" in resumed.stdout
    assert same(final_weights(run), final_weights(reference))


def test_resume_from_a_named_checkpoint(synth_shards, reference, tmp_path):
    point = reference / "checkpoints" / "step-00000002"
    again = train(synth_shards, tmp_path / "other", *COMMON, f"checkpoint.resume={point}")
    assert f"resumed from {point} at step 2" in again.stdout
    assert same(final_weights(tmp_path / "other"), final_weights(reference))
    bad = train(synth_shards, tmp_path / "x", *COMMON, f"checkpoint.resume={tmp_path}",
                check=False)
    assert bad.returncode == 2 and "not a complete checkpoint" in bad.stderr


# ----------------------------------------------------------------------------- one trainer
def test_a_second_trainer_on_a_running_run_is_refused(synth_shards, tmp_path):
    run = tmp_path / "run"
    first = subprocess.Popen(
        [sys.executable, "-m", "shg.train", "--config", "configs/tiny.toml",
         f"data.shards={synth_shards}", f"run_dir={run}", *TINY, "train.max_steps=400",
         "eval.every_steps=1000", "checkpoint.every_steps=1000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "LOCK").exists() and time.time() < deadline and first.poll() is None:
            time.sleep(0.2)
        holder = json.loads((run / "LOCK").read_text())
        assert holder["pid"] == first.pid
        second = train(synth_shards, run, "train.max_steps=2", check=False)
        assert second.returncode == 2
        assert f"pid {first.pid}" in second.stderr and "being trained by another" in second.stderr
        assert first.poll() is None  # the first one trains on
    finally:
        first.kill()
        first.communicate()
    # killed: its LOCK stays behind, stale; the next trainer takes the run over and says so
    assert (run / "LOCK").exists()
    third = train(synth_shards, run, "train.max_steps=2", "eval.every_steps=1000",
                  "checkpoint.every_steps=1000")
    assert f"taking over {run}" in third.stdout and f"its process {first.pid} is gone" in \
        third.stdout
    assert not (run / "LOCK").exists()  # released at the end


def test_lock_decisions_for_slurm_jobs_and_other_hosts(tmp_path):
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
    os.environ["SLURM_JOB_ID"] = "777"  # the requeued job itself: taken over silently
    try:
        run_lock.acquire(run, log=lambda *a, **k: said.append(a[0]), job_state=alive)
    finally:
        del os.environ["SLURM_JOB_ID"]
    assert not said
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
    import shutil

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


def test_a_damaged_sample_stops_training_by_default_or_is_skipped_and_counted(synth_shards,
                                                                              tmp_path):
    shards = tmp_path / "shards"
    damaged = _copy_with_corrupt_pngs(synth_shards, shards)
    # shuffle buffer 1: a damaged sample comes in the first batch, whichever shard is first
    common = ["data.shuffle_buffer=1", "train.max_steps=4", "eval.every_steps=1000",
              "checkpoint.every_steps=1000"]
    stopped = train(shards, tmp_path / "stop", *common, check=False)
    assert stopped.returncode == 2
    named = [d for d in damaged if f"{d}: cannot decode it" in stopped.stderr]
    assert len(named) == 1, stopped.stderr[-2000:]
    assert "Traceback" not in stopped.stderr
    skipped = train(shards, tmp_path / "skip", *common, "data.on_error=skip")
    summary = json.loads(skipped.stdout.strip().splitlines()[-1])
    assert summary["step"] == 4 and summary["skipped_samples"] >= 1
    rows = [json.loads(l) for l in (tmp_path / "skip" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert steps[-1]["step"] == 4 and steps[-1]["skipped_samples"] == summary["skipped_samples"]
    assert "damaged samples were skipped" in skipped.stderr
    assert any(f"{d}: skipped" in skipped.stderr for d in damaged)


def test_a_missing_or_short_shard_is_found_at_start(synth_shards, tmp_path):
    import shutil

    shards = tmp_path / "shards"
    shutil.copytree(synth_shards, shards)
    manifest = json.loads((shards / "manifest.json").read_text())
    files = [s["file"] for s in manifest["splits"]["train2017"]["shards"]]
    (shards / files[1]).unlink()
    missing = train(shards, tmp_path / "a", "train.max_steps=2", check=False)
    assert missing.returncode == 2 and f"{files[1]}: listed in" in missing.stderr
    shutil.copy(synth_shards / files[1], shards / files[1])
    buf = io.BytesIO()
    with tarfile.open(synth_shards / files[0]) as src, tarfile.open(fileobj=buf, mode="w") as dst:
        for member in src.getmembers()[:-2]:  # one sample (png + json) fewer
            dst.addfile(member, src.extractfile(member))
    (shards / files[0]).write_bytes(buf.getvalue())
    short = train(shards, tmp_path / "b", "train.max_steps=2", check=False)
    n = manifest["splits"]["train2017"]["shards"][0]["num_samples"]
    assert short.returncode == 2 and f"holds {n - 1} samples, the manifest says {n}" in \
        short.stderr
    assert not (tmp_path / "b" / "checkpoints").exists()


def test_a_killed_loader_worker_is_a_clear_error_not_a_hang(synth_shards, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "shg.train", "--config", "configs/tiny.toml",
         f"data.shards={synth_shards}", f"run_dir={run}", *TINY, "data.num_workers=2",
         "train.max_steps=500", "eval.every_steps=1000", "checkpoint.every_steps=1000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None:
            metrics = run / "metrics.jsonl"
            if metrics.exists() and len(metrics.read_text().splitlines()) >= 2:
                break
            time.sleep(0.2)
        workers = subprocess.run(["ps", "-o", "pid=", "--ppid", str(proc.pid)],
                                 capture_output=True, text=True).stdout.split()
        assert workers, "no loader workers found"
        os.kill(int(workers[0]), signal.SIGKILL)  # what the OOM killer does
        out, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 1
    assert "a data loader worker died" in err and "data.num_workers" in err
