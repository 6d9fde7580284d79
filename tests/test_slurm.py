"""`shg submit` against a real Slurm (slurm/local-cluster.sh): the whole pipeline, preemption
with requeue and resume of a 2-node training job, a failing array task that keeps the rest
from running, the plain sbatch examples (2 nodes, c10d) and a study. The cluster comes up on
first use when this runs as root (CI does); elsewhere these tests skip unless a cluster
already answers (in CI a cluster that cannot come up is a failure). SHG_SLURM_TESTS=0 skips
them. They share one cluster, so they stay in this one file: `make test` hands the slow tier to
its workers by file (--dist loadfile), and one worker runs them one after another.

Preemption is made deterministic with SHG_FAULT=hold:3 (exported to the jobs by sbatch): the
training waits after step 3 until Slurm's signal arrives, so the test preempts it there and
the requeued job must resume from step 3. The jobs compute with one thread per rank (the
cluster's nodes share this machine's cores)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from launcher.status import status
from mlflow_server import history, mlflow_server

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[1]
CLUSTER = REPO / "slurm" / "local-cluster.sh"
TERMINAL = {"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL",
            "BOOT_FAIL", "DEADLINE"}
TINY = ["model.features=16", "data.num_workers=0", "eval.max_samples=8"]
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _answers() -> bool:
    if not shutil.which("sinfo"):
        return False
    return subprocess.run(["sinfo", "-h"], capture_output=True, timeout=10).returncode == 0


@pytest.fixture(scope="session")
def slurm_cluster():
    if os.environ.get("SHG_SLURM_TESTS") == "0":
        pytest.skip("SHG_SLURM_TESTS=0")
    started = False
    if not _answers():
        if os.geteuid() != 0:
            (pytest.fail if IN_CI else pytest.skip)(
                "no Slurm cluster answers and bringing one up needs root "
                "(sudo slurm/local-cluster.sh up)")
        proc = subprocess.run([str(CLUSTER), "up"], capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"local-cluster.sh up failed:\n{proc.stdout}\n{proc.stderr}"
        started = True
    partitions = subprocess.run(["sinfo", "-h", "-o", "%R"], capture_output=True,
                                text=True).stdout.split()
    nodes = subprocess.run(["sinfo", "-h", "-N", "-p", "debug", "-o", "%N"],
                           capture_output=True, text=True).stdout.split()
    if not {"debug", "high"} <= set(partitions) or len(set(nodes)) < 2:
        (pytest.fail if IN_CI else pytest.skip)(f"the cluster that answers has partitions {partitions} and nodes {nodes}, "
                    "not debug + high and 2 nodes (slurm/local-cluster.sh makes them)")
    yield
    if started:
        subprocess.run([str(CLUSTER), "down"], capture_output=True, timeout=120)


@pytest.fixture(autouse=True)
def empty_queue(request):
    """Each test starts and ends with no job of ours queued: a failed test's leftover jobs would
    hold the cluster's CPUs and starve the next test's (the cluster is this suite's own)."""
    if "slurm_cluster" not in request.fixturenames:
        yield
        return
    _cancel_all()
    yield
    _cancel_all()


def _cancel_all(timeout: float = 60) -> None:
    user = os.environ.get("USER") or __import__("getpass").getuser()
    subprocess.run(["scancel", "-u", user], capture_output=True, timeout=30)
    deadline = time.time() + timeout
    while time.time() < deadline and subprocess.run(
            ["squeue", "-h", "-u", user], capture_output=True, text=True).stdout.strip():
        time.sleep(1)


@pytest.fixture
def one_thread(monkeypatch):
    """What sbatch exports to the jobs: one thread per rank."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _submit(*argv: str) -> Path:
    from shg.cli import main as shg

    assert shg(["submit", *argv]) == 0
    profile_set = [argv[i + 1] for i, a in enumerate(argv) if a == "--set"]
    folder = Path(next(s.split("=", 1)[1] for s in profile_set if s.startswith("folder=")))
    run = Path(argv[argv.index("--run") + 1]).name if "--run" in argv else "prepare"
    return folder / run


def _wait(job_folder: Path, timeout: float = 600) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        rows = status(str(job_folder), log=lambda *a: None)
        if rows and all(r["state"] in TERMINAL for r in rows):
            return rows
        time.sleep(2)
    status(str(job_folder))
    raise AssertionError(f"jobs of {job_folder} not finished after {timeout} s")


def _logs(job_folder: Path, job_id: str) -> str:
    return "".join(p.read_text(errors="replace")
                   for p in sorted((job_folder / job_id).glob("*_log.*")))


def test_whole_pipeline_then_the_ae_phases_complete(slurm_cluster, synth_root, tmp_path,
                                                    one_thread):
    jobs, shards, run = tmp_path / "jobs", tmp_path / "shards", tmp_path / "run"
    folder = _submit("pipeline", "--profile", "slurm/profiles/local.toml", "--set",
                     f"folder={jobs}", "--coco", str(synth_root), "--shards", str(shards),
                     "--shard-size", "16", "--crop-size", "128", "--config",
                     "configs/tiny.toml", "--run", str(run),
                     "train.max_steps=4", "eval.every_steps=2", "checkpoint.every_steps=2",
                     *TINY)
    # queued while training has not even started: the AE jobs wait for it (afterok)
    assert _submit("ae", "--profile", "slurm/profiles/local.toml", "--set", f"folder={jobs}",
                   "--run", str(run), "train.max_steps=2", "eval.every_steps=2") == folder
    after = json.loads((folder / "pipeline.json").read_text())["after"]
    assert after["ae-train"] == ["train"] and after["ae-baseline"] == ["train"]
    rows = _wait(folder)
    assert [r for r in rows if r["state"] != "COMPLETED"] == []
    stages = {r["stage"] for r in rows}
    assert stages == {"prepare", "finalize", "train", "eval", "analyze", "ae-train",
                      "ae-finetune", "ae-baseline", "ae-compare"}
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["splits"]["train2017"]["num_samples"] > 0
    assert manifest["splits"]["train2017"]["crop"]["size"] == 128
    state = json.loads((run / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["world_size"] == 2  # 2 Slurm tasks = 2 ranks
    assert json.loads((run / "eval" / "pck.json").read_text())
    for name in ("latent", "skips", "skeletons"):
        assert any((run / "analysis" / name).glob("*.json")), name
    assert (tmp_path / "run-ae" / "best").is_dir()
    assert (tmp_path / "run-ae-compare" / "compare.md").is_file()
    # the jobs ran the snapshots taken at submission (one per submission), not the checkout
    record = json.loads((folder / "pipeline.json").read_text())
    assert record["code"].startswith(str(folder / "code-"))
    assert f"with code from {folder}/code-" in _logs(folder, record["jobs"]["train"][0])
    assert f"with code from {record['code']}/shg" in _logs(folder, record["jobs"]["ae-train"][0])


@pytest.fixture
def mlflow_url(tmp_path):
    """A real MLflow tracking server (tests/mlflow_server.py), as on a login node."""
    with mlflow_server(tmp_path / "mlflow") as url:
        yield url


def test_preempted_training_requeues_and_resumes_from_its_checkpoint(
        slurm_cluster, small_shards, tmp_path, monkeypatch, one_thread, mlflow_url):
    jobs, run = tmp_path / "jobs", tmp_path / "run"
    steps = 6
    monkeypatch.setenv("SHG_FAULT", "hold:3")
    # 2 nodes x 1 task x 4 CPUs fill the cluster, so a job in `high` must preempt this one.
    # The training logs to the MLflow server the profile names.
    folder = _submit("train", "--profile", "slurm/profiles/local.toml", "--set",
                     f"folder={jobs}", "--set", "nodes=2", "--set", "tasks_per_node=1",
                     "--set", "cpus_per_task=4", "--set", f"mlflow_tracking_uri={mlflow_url}",
                     "--shards",
                     str(small_shards), "--config", "configs/tiny.toml", "--run", str(run),
                     f"train.max_steps={steps}", "eval.every_steps=1000",
                     "checkpoint.every_steps=1000", "train.log_every=1",
                     'log.trackers=["mlflow"]', *TINY)
    metrics = run / "metrics.jsonl"
    high = _preempt_when_at_step(metrics, 3)
    rows = _wait(folder)
    assert rows[0]["state"] == "COMPLETED" and rows[0]["requeues"] >= 1, rows
    log = _logs(folder, rows[0]["job_id"])
    assert "shg: training (2 ranks on 2 nodes)" in log
    assert "stopped by a signal at step 3:" in log
    assert f"resumed from {run}/checkpoints/step-00000003 at step 3" in log
    assert "shg: requeue 1/" in log
    final = json.loads((run / "checkpoints" / f"step-{steps:08d}" / "state.json").read_text())
    assert final["step"] == steps and final["world_size"] == 2
    events = [json.loads(line) for line in metrics.read_text().splitlines()]
    assert [e["step"] for e in events if "stopped by" in str(e.get("event", ""))] == [3]
    assert_resumed_at(events, 3)
    assert _sacct_state(high) == "COMPLETED"
    # one MLflow run across the requeue, every step once; `shg submit status` links to it
    runs, by_run = history(mlflow_url)
    assert len(runs) == 1 and [s for s, _ in by_run[runs[0].info.run_id]] == [1, 2, 3, 4, 5, 6]
    link = f"{mlflow_url}/#/experiments/{runs[0].info.experiment_id}/runs/{runs[0].info.run_id}"
    assert rows[0]["progress"].endswith(f"mlflow {link}")


def assert_resumed_at(events: list[dict], step: int) -> None:
    """One resumption, at `step`, and training went on from there (not from the start)."""
    starts = [i for i, e in enumerate(events) if e.get("event") == "resumed"]
    assert [events[i]["step"] for i in starts] == [step]
    after = [e["step"] for e in events[starts[0] + 1:] if "loss" in e]
    assert after and after[0] == step + 1


def test_a_failing_array_task_keeps_finalize_from_running(slurm_cluster, synth_root, tmp_path):
    coco = tmp_path / "coco"
    (coco / "annotations").mkdir(parents=True)
    for split in ("train2017", "val2017"):
        (coco / split).symlink_to(synth_root / split)
    # val2017's annotations are missing: its array tasks fail, train2017's succeed
    shutil.copy(synth_root / "annotations" / "person_keypoints_train2017.json",
                coco / "annotations")
    folder = _submit("prepare", "--profile", "slurm/profiles/local.toml", "--set",
                     f"folder={tmp_path / 'jobs'}", "--coco", str(coco), "--shards",
                     str(tmp_path / "shards"), "--shard-size", "16")
    rows = _wait(folder)
    by_stage = {}
    for r in rows:
        by_stage.setdefault(r["stage"], []).append(r)
    prepare = by_stage["prepare"]
    assert [r["state"] for r in prepare] == ["COMPLETED", "COMPLETED", "FAILED", "FAILED"]
    for r in prepare[2:]:
        assert "person_keypoints_val2017.json: annotation file not found" in r["why"]
    (finalize,) = by_stage["finalize"]
    assert finalize["state"] == "CANCELLED"
    assert finalize["why"].startswith("never ran: a job it depends on failed (prepare ")
    assert not (tmp_path / "shards" / "manifest.json").exists()


def _sacct_state(job_id: str) -> str:
    """The job's state as sacct gives it ("CANCELLED by 0" -> CANCELLED)."""
    lines = subprocess.run(["sacct", "-X", "-n", "-P", "-o", "State", "-j", job_id],
                           capture_output=True, text=True).stdout.split("\n")
    lines = [line.split()[0] for line in lines if line.strip()]
    return lines[-1] if lines else "UNKNOWN"


def _preempt_when_at_step(metrics: Path, step: int) -> str:
    """Once training reached `step`, queue a job in `high` that needs a whole node."""
    deadline = time.time() + 300
    while time.time() < deadline:
        if metrics.exists() and any(json.loads(line).get("step", 0) >= step
                                    for line in metrics.read_text().splitlines()
                                    if line.endswith("}")):
            break
        time.sleep(1)
    else:
        raise AssertionError(f"training did not reach step {step}")
    return subprocess.run(["sbatch", "--parsable", "-p", "high", "-c", "4", "-o", "/dev/null",
                           "--wrap", "sleep 2"], capture_output=True, text=True,
                          check=True).stdout.strip().split(";")[0]


def test_plain_sbatch_examples_train_resume_after_preemption_and_evaluate(
        slurm_cluster, small_shards, tmp_path):
    run, steps = tmp_path / "run", 6
    env = {**os.environ, "SHG_CPU": "1", "SHG_PROCS_PER_NODE": "1", "OMP_NUM_THREADS": "1",
           "SHG_FAULT": "hold:3"}
    # 2 nodes, one `accelerate launch` each meeting through c10d, fill the cluster
    train = subprocess.run(
        ["sbatch", "--parsable", "-N", "2", "-c", "4", "--output",
         str(tmp_path / "train-%j.out"),
         "slurm/train.sbatch", "configs/tiny.toml", f"data.shards={small_shards}",
         f"run_dir={run}", f"train.max_steps={steps}", "eval.every_steps=1000",
         "checkpoint.every_steps=1000", "train.log_every=1", *TINY],
        env=env, capture_output=True, text=True, check=True).stdout.strip()
    evaluate = subprocess.run(
        ["sbatch", "--parsable", f"--dependency=afterok:{train}", "--kill-on-invalid-dep=yes",
         "-c", "1", "--output",
         str(tmp_path / "eval-%j.out"), "slurm/eval.sbatch", str(run), str(small_shards),
         "--max-samples", "8"], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()
    _preempt_when_at_step(run / "metrics.jsonl", 3)
    deadline = time.time() + 600
    while time.time() < deadline and _sacct_state(evaluate) not in TERMINAL and \
            _sacct_state(train) not in TERMINAL - {"COMPLETED"}:
        time.sleep(2)
    log = (tmp_path / f"train-{train}.out").read_text(errors="replace")
    assert _sacct_state(train) == "COMPLETED", log[-3000:]
    assert _sacct_state(evaluate) == "COMPLETED", (tmp_path / f"eval-{evaluate}.out").read_text()
    assert "stopped by a signal at step 3:" in log
    assert f"resumed from {run}/checkpoints/step-00000003 at step 3" in log
    assert f"shg: requeue 1/3 of job {train}" in log
    assert "2 node(s) x 1, c10d on" in log
    final = json.loads((run / "checkpoints" / f"step-{steps:08d}" / "state.json").read_text())
    assert final["step"] == steps and final["world_size"] == 2
    assert_resumed_at([json.loads(line) for line in
                       (run / "metrics.jsonl").read_text().splitlines()], 3)
    assert (run / "eval" / "pck.json").is_file()


def test_a_study_on_slurm_finishes_the_good_variants_and_reports_the_failed_one(
        slurm_cluster, small_shards, tmp_path, one_thread):
    study = tmp_path / "three.toml"
    # `broken` passes the config check at submission and fails when its training starts
    study.write_text('name = "three"\n[variants.a]\n[variants.b]\n"optim.lr" = 0.001\n'
                     '[variants.broken]\n"distributed.expect_processes" = 3\n')
    jobs, study_dir = tmp_path / "jobs", tmp_path / "three"
    folder = _submit("study", "--profile", "slurm/profiles/local.toml", "--set",
                     f"folder={jobs}", "--set", "tasks_per_node=1", "--set",
                     "array_parallelism=2", "--config", "configs/tiny.toml", "--study",
                     str(study), "--shards", str(small_shards), "--run", str(study_dir),
                     "train.max_steps=2", "eval.every_steps=2", "checkpoint.every_steps=2",
                     *TINY)
    rows = _wait(folder)
    by = {(r["stage"], r["variant"]): r for r in rows}
    train = [by[("train", v)] for v in ("a", "b", "broken")]
    base = train[0]["job_id"].split("_")[0]
    assert [r["job_id"] for r in train] == [f"{base}_0", f"{base}_1", f"{base}_2"]  # one array
    assert [r["state"] for r in train] == ["COMPLETED", "COMPLETED", "FAILED"]
    assert "expected 3 processes, the launch gave 1" in train[2]["why"]
    assert by[("eval", "a")]["state"] == by[("eval", "b")]["state"] == "COMPLETED"
    assert by[("eval", "broken")]["state"] == "CANCELLED"
    assert by[("eval", "broken")]["why"] == \
        f"never ran: a job it depends on failed (train {base}_2)"
    assert by[("report", "")]["state"] == "COMPLETED"
    scripts = [p.read_text() for p in jobs.rglob("*_submission.sh")]
    assert any("--array=0-2%2" in s and "shg-train" in s for s in scripts), scripts
    board = json.loads((study_dir / "leaderboard.json").read_text())
    states = {r["name"]: (r["state"], r["why"]) for r in board["variants"]}
    assert states["a"] == states["b"] == ("finished", "")
    assert states["broken"][0] == "failed (train FAILED)"
    assert "expected 3 processes, the launch gave 1" in states["broken"][1]
    assert "- **broken**: failed (train FAILED)" in (study_dir / "leaderboard.md").read_text()
