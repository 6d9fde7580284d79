"""The submitit launcher: profiles, the generated sbatch scripts (golden files) and the whole
pipeline through submitit's local executor (tests/test_slurm.py runs it on a real Slurm)."""

import json
from pathlib import Path

import pytest

from launcher.profile import load_profile
from launcher.stages import pipeline_stages
from launcher.status import status
from launcher.submit import sbatch_preview
from shg.config import ConfigError

GOLDEN = Path(__file__).parent / "golden"


def _stages(profile):
    return {s.name: s for s in pipeline_stages("/data/coco", "/shared/shards",
                                               "configs/coco.toml", "/shared/runs/r1", [],
                                               profile)}


@pytest.mark.parametrize("stage", ["train", "prepare"])
def test_sbatch_matches_the_golden_file_for_2_nodes_x_4_gpus(stage):
    profile = load_profile("slurm/profiles/example-2x4gpu.toml")
    text = sbatch_preview(_stages(profile)[stage], profile, "/shared/jobs/r1",
                          code="/shared/jobs/r1/code-20261124-120000")
    assert text == (GOLDEN / f"{stage}_2x4gpu.sbatch").read_text()


@pytest.mark.parametrize("stage", ["train", "prepare"])
def test_the_script_really_submitted_matches_the_golden_file(stage, tmp_path, fake_sbatch):
    """Not a second assembly path: submit() itself, with a stand-in sbatch that only answers
    with a job id; the script submitit handed to it must equal the golden file."""
    import re
    import sys

    from launcher.submit import submit

    bin_dir = fake_sbatch
    profile = load_profile("slurm/profiles/example-2x4gpu.toml", [f"folder={tmp_path / 'jobs'}"])
    stages = [s for s in _stages(profile).values() if s.name in ("prepare", "finalize", "train")]
    result = submit(stages, profile, "slurm", "r1", log=lambda *a: None)
    text = (bin_dir / f"sbatch-{result['ids'][stage][0].split('_')[0]}.sh").read_text()
    names = {i.split("_")[0]: name for name, ids in result["ids"].items() for i in ids}
    text = text.replace(str(tmp_path / "jobs"), "/shared/jobs")
    text = re.sub(r"code-\d{8}-\d{6}(-\d+)?", "code-20261124-120000", text)
    text = text.replace(sys.executable, "python")
    text = re.sub(r"afterok:(\d+)", lambda m: f"afterok:ID_OF_{names[m.group(1)]}", text)
    assert text == (GOLDEN / f"{stage}_2x4gpu.sbatch").read_text()


def test_the_train_script_says_what_matters():
    """What the golden files hold, read from the scripts the launcher makes now."""
    profile = load_profile("slurm/profiles/example-2x4gpu.toml")
    stages = _stages(profile)
    text = sbatch_preview(stages["train"], profile, "/shared/jobs/r1",
                          code="/shared/jobs/r1/code-20261124-120000")
    for line in ("#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4", "#SBATCH --gpus-per-node=4",
                 "#SBATCH --signal=USR2@180", "#SBATCH --dependency=afterok:ID_OF_finalize",
                 "#SBATCH --kill-on-invalid-dep=yes", "module load cuda/12.4",
                 "cd /shared/jobs/r1/code-20261124-120000"):
        assert line in text
    prepare = sbatch_preview(stages["prepare"], profile, "/shared/jobs/r1",
                             code="/shared/jobs/r1/code-20261124-120000")
    assert "--array=0-63%64" in prepare and "gpus" not in prepare  # 32 tasks x 2 splits, CPU
    # the profile is what sets them
    other = load_profile("slurm/profiles/example-2x4gpu.toml", ["nodes=3", "gpus_per_node=2",
                                                                 "signal_delay_s=300"])
    text = sbatch_preview(_stages(other)["train"], other, "/j", code="/j/code")
    assert "#SBATCH --nodes=3" in text and "#SBATCH --gpus-per-node=2" in text
    assert "#SBATCH --signal=USR2@300" in text


def test_profile_rejects_unknown_keys_with_the_valid_ones(tmp_path):
    bad = tmp_path / "p.toml"
    bad.write_text('partition = "gpu"\ngpus = 4\n')
    with pytest.raises(ConfigError, match="unknown key gpus; valid keys: folder, partition"):
        load_profile(bad)
    with pytest.raises(ConfigError, match="nodes must be >= 1"):
        load_profile("slurm/profiles/local.toml", ["nodes=0"])
    assert load_profile("slurm/profiles/local.toml", ["nodes=2"]).nodes == 2


@pytest.mark.slow
def test_pipeline_through_the_local_executor(synth_root, tmp_path, capsys):
    from shg.cli import main as shg

    jobs, shards, run = tmp_path / "jobs", tmp_path / "shards", tmp_path / "run"
    assert shg(["submit", "pipeline", "--profile", "slurm/profiles/local.toml",
                "--set", f"folder={jobs}", "--executor", "local", "--coco", str(synth_root),
                "--shards", str(shards), "--shard-size", "16", "--crop-size", "128",
                "--config", "configs/tiny.toml",
                "--run", str(run), "model.features=16", "train.max_steps=4",
                "eval.every_steps=2", "checkpoint.every_steps=2", "data.num_workers=0",
                "eval.max_samples=8"]) == 0
    manifest = json.loads((shards / "manifest.json").read_text())
    assert set(manifest["splits"]) == {"train2017", "val2017"}
    assert {m["crop"]["size"] for m in manifest["splits"].values()} == {128}  # --crop-size
    state = json.loads((run / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert state["world_size"] == 2  # tasks_per_node = 2 in local.toml
    assert (run / "eval" / "pck.json").exists()
    # the eval job found the annotation file the shards were built from: COCO AP too
    assert json.loads((run / "eval" / "coco_eval.json").read_text())["images"] > 0
    for name in ("latent", "skips", "skeletons"):
        assert (run / "analysis" / name).is_dir()
    capsys.readouterr()
    rows = status(str(jobs / "run"))
    assert {r["stage"] for r in rows} == {"prepare", "finalize", "train", "eval", "analyze"}
    assert all(r["state"] == "COMPLETED" for r in rows)
    assert len([r for r in rows if r["stage"] == "prepare"]) == 4  # 2 tasks x 2 splits
    # the training job's row says how far its run got, read from the run's metrics
    (train_row,) = [r for r in rows if r["stage"] == "train"]
    assert train_row["progress"].startswith("step 4/4 (100%)")
    assert train_row["progress"].endswith("finished")
    assert "step 4/4 (100%)" in capsys.readouterr().out
    record = json.loads((jobs / "run" / "pipeline.json").read_text())
    assert record["runs"] == {"train": [str(run)]}
    (train_id,) = record["jobs"]["train"]
    log = (jobs / "run" / train_id / f"{train_id}_0_log.out").read_text()
    assert f"with code from {record['code']}/shg" in log  # the snapshot, not the checkout
    snapshot = Path(record["code"])
    assert (snapshot / "configs" / "tiny.toml").read_text() == Path("configs/tiny.toml").read_text()
    assert {p.name for p in snapshot.iterdir()} == {"shg", "launcher", "shards", "configs"}


def test_missing_arguments_are_named(capsys):
    from shg.cli import main as shg

    assert shg(["submit", "train", "--profile", "slurm/profiles/local.toml", "--shards", "s",
                "--dry-run"]) == 2
    assert "needs --config, --run" in capsys.readouterr().err


def test_snapshot_points_training_jobs_at_copies_of_their_configs(tmp_path):
    from launcher.submit import _snapshot_training_files

    profile = load_profile("slurm/profiles/local.toml",
                           ["deepspeed_config=configs/deepspeed_zero1.json",
                            "mixed_precision=bf16"])
    stages = pipeline_stages("/c", "/s", "configs/tiny.toml", "/r", ["train.max_steps=3"],
                             profile, which=("train", "ae"))
    code = _snapshot_training_files(stages, tmp_path)
    train = next(s for s in stages if s.name == "train").fn
    assert train.config == str(code / "configs" / "tiny.toml")
    ds = [o for o in train.overrides if o.startswith("distributed.deepspeed_config=")]
    assert ds == [f"distributed.deepspeed_config={code}/configs/1/deepspeed_zero1.json"]
    assert Path(ds[0].split("=", 1)[1]).read_text() == \
        Path("configs/deepspeed_zero1.json").read_text()
    assert "mixed_precision=bf16" in train.overrides
    assert train.overrides[-1] == "train.max_steps=3"  # the command line wins
    ae = next(s for s in stages if s.name == "ae-train").fn
    assert ae.config == "/r/config.toml"  # an output of training: read when the job starts
    assert ds[0] in ae.overrides
    with pytest.raises(ConfigError, match="mixed_precision 'fp8'"):
        load_profile("slurm/profiles/local.toml", ["mixed_precision=fp8"])
    with pytest.raises(ConfigError, match="deepspeed_config nope.json: no such file"):
        load_profile("slurm/profiles/local.toml", ["deepspeed_config=nope.json"])


@pytest.mark.slow
def test_deepspeed_training_job_from_the_profile_trains_and_resumes(small_shards, tmp_path):
    """ZeRO-1 over 2 Slurm-style tasks (submitit's local executor): the profile's DeepSpeed JSON
    reaches the trainer, which writes DeepSpeed's checkpoint format; the same job submitted
    again with more steps resumes from it."""
    from helpers import metrics
    from shg.cli import main as shg

    jobs, run = tmp_path / "jobs", tmp_path / "run"

    def submit(steps: int) -> None:
        assert shg(["submit", "train", "--profile", "slurm/profiles/local.toml", "--set",
                    f"folder={jobs}", "--set", "deepspeed_config=configs/deepspeed_zero1.json",
                    "--executor", "local", "--shards", str(small_shards), "--config",
                    "configs/tiny.toml", "--run", str(run), "model.features=16",
                    "model.stacks=1", f"train.max_steps={steps}", "eval.every_steps=2",
                    "checkpoint.every_steps=2", "data.num_workers=0", "eval.max_samples=8",
                    "train.log_every=1"]) == 0

    submit(2)
    resolved = (run / "config.toml").read_text()
    assert "code-" in resolved and "deepspeed_zero1.json" in resolved
    step = run / "checkpoints" / "step-00000002"
    assert json.loads((step / "state.json").read_text())["world_size"] == 2
    assert (step / "zero").is_dir() and not (step / "dcp").exists()  # DeepSpeed's own format
    submit(4)
    rows = metrics(run)
    (event,) = [r for r in rows if r.get("event") == "resumed"]
    assert (event["step"], event["from"]) == (2, str(step))
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]  # 3 and 4 after resuming
    final = json.loads((run / "checkpoints" / "step-00000004" / "state.json").read_text())
    assert final["samples_seen"] == 4 * 4 * 2  # tiny.toml's batch 4, 2 ranks


def test_a_stopped_training_requeues_until_max_requeues_then_fails(monkeypatch, capsys):
    from launcher.jobs import requeue_or_fail

    calls = []
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    assert requeue_or_fail(75, True, 3, run=lambda cmd, check: calls.append(cmd)) == 75
    assert calls == [["scontrol", "requeue", "42"]]
    assert "shg: requeue 2/3 of job 42" in capsys.readouterr().out
    assert requeue_or_fail(75, False, 3, run=lambda cmd, check: calls.append(cmd)) == 75
    assert len(calls) == 1  # only the leader asks Slurm
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    with pytest.raises(RuntimeError, match=r"after 3 requeues \(max_requeues = 3\)"):
        requeue_or_fail(75, True, 3, run=lambda cmd, check: calls.append(cmd))
    monkeypatch.delenv("SLURM_JOB_ID")
    with pytest.raises(RuntimeError, match="outside Slurm"):
        requeue_or_fail(75, True, 3, run=lambda cmd, check: calls.append(cmd))
    assert len(calls) == 1


def test_status_names_the_failed_job_up_the_chain(tmp_path, monkeypatch, capsys):
    import launcher.status as sub

    record = {"run": "r", "executor": "slurm", "folder": str(tmp_path), "code": None,
              "jobs": {"prepare": ["1_0", "1_1"], "finalize": ["2"], "train": ["3"],
                       "eval": ["4"], "analyze": ["5_0"], "ae-train": ["6"]},
              "after": {"finalize": ["prepare"], "train": ["finalize"], "eval": ["train"],
                        "analyze": ["train"], "ae-train": ["eval"]}}
    (tmp_path / "pipeline.json").write_text(json.dumps(record))
    (tmp_path / "1_1").mkdir()
    (tmp_path / "1_1" / "1_1_0_log.err").write_text(
        "Traceback (most recent call last):\n  ...\n"
        "shards.coco.DataError: x.json: annotation file not found\n")
    acct = {"1_0": ("COMPLETED", "0:0", True), "1_1": ("FAILED", "1:0", True),
            "2": ("CANCELLED", "0:0", False), "3": ("CANCELLED", "0:0", False),
            "4": ("FAILED", "2:0", True), "5_0": ("CANCELLED", "0:0", False),
            "6": ("PENDING", "0:0", False)}
    monkeypatch.setattr(sub, "_sacct", lambda ids: {
        i: {"state": st, "exit": ex, "started": started, "elapsed": "00:00:01",
            "requeues": 0} for i, (st, ex, started) in acct.items()})
    monkeypatch.setattr(sub, "_squeue", lambda ids: {"6": {"state": "PENDING",
                                                           "reason": "Dependency"}})
    rows = {r["job_id"]: r for r in status(str(tmp_path))}
    assert rows["1_1"]["why"] == ("exit 1:0: shards.coco.DataError: x.json: annotation file "
                                  "not found")
    assert rows["1_0"]["why"] == ""
    for job in ("2", "3", "5_0"):  # eval's own failure is not why analyze never ran
        assert rows[job]["why"] == "never ran: a job it depends on failed (prepare 1_1)"
    assert rows["4"]["why"] == "exit 2:0"
    assert rows["6"]["why"] == "Dependency"  # still waiting
    assert "never ran: a job it depends on failed (prepare 1_1)" in capsys.readouterr().out


def test_dry_run_prints_the_scripts_and_queues_nothing(tmp_path, capsys):
    from shg.cli import main as shg

    jobs = tmp_path / "jobs"
    assert shg(["submit", "pipeline", "--profile", "slurm/profiles/example-2x4gpu.toml",
                "--set", f"folder={jobs}", "--coco", "/data/coco", "--shards", "/s",
                "--config", "configs/coco.toml", "--run", str(tmp_path / "r1"), "--dry-run",
                "train.max_steps=7"]) == 0
    out = capsys.readouterr().out
    for stage in ("prepare (array of 64)", "finalize", "train", "eval", "analyze (array of 3)"):
        assert f"# ---- {stage}" in out
    assert out.count("#SBATCH --nodes=2") >= 1 and "code-TIMESTAMP" in out
    assert not jobs.exists()  # nothing submitted, no folder, no snapshot
    assert shg(["submit", "eval", "--profile", "slurm/profiles/example-2x4gpu.toml",
                "--set", f"folder={jobs}", "--shards", "/s", "--run", "/r", "--dry-run",
                "--no-snapshot"]) == 0
    assert "code-TIMESTAMP" not in capsys.readouterr().out  # the live checkout
    assert not jobs.exists()


def test_the_debug_executor_runs_the_job_here_and_status_reads_it(trained_run, small_shards,
                                                                  tmp_path, capsys):
    from shg.cli import main as shg

    jobs = tmp_path / "jobs"
    run = tmp_path / "run"
    __import__("shutil").copytree(trained_run, run)
    assert shg(["submit", "eval", "--profile", "slurm/profiles/local.toml", "--set",
                f"folder={jobs}", "--executor", "debug", "--shards", str(small_shards),
                "--run", str(run)]) == 0
    out = capsys.readouterr().out
    # in this process (debug: no snapshot), with the live checkout's code
    assert f"shg: shg eval with code from {Path('shg').absolute()}" in out
    assert json.loads((run / "eval" / "summary.json").read_text())["samples"] > 0
    record = json.loads((jobs / "run" / "pipeline.json").read_text())
    assert record["executor"] == "debug" and record["code"] is None
    assert shg(["submit", "status", str(jobs / "run")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["stage", "job", "state"]
    (row,) = [line for line in table[1:] if line.startswith("eval")]
    assert row.split()[1] == record["jobs"]["eval"][0] and "COMPLETED" in row
    assert shg(["submit", "status", str(tmp_path / "nowhere")]) == 2
    assert "pipeline.json: not found" in capsys.readouterr().err


def test_the_evaluation_job_on_a_detectors_boxes(trained_run, small_shards, synth_root, tmp_path,
                                                capsys):
    """`shg submit eval --boxes`: the job evaluates on the file's boxes (here the ground-truth
    boxes of half the images), the images found from the shards' annotation file."""
    from shg.cli import main as shg
    from test_boxes_eval import _gt_boxes

    boxes = _gt_boxes(small_shards)
    kept = sorted({b["image_id"] for b in boxes})[::2]
    dets = tmp_path / "dets.json"
    dets.write_text(json.dumps([b for b in boxes if b["image_id"] in kept]))
    run = tmp_path / "run"
    __import__("shutil").copytree(trained_run, run)
    common = ["--profile", "slurm/profiles/local.toml", "--set", f"folder={tmp_path / 'jobs'}",
              "--executor", "debug", "--shards", str(small_shards), "--run", str(run)]
    assert shg(["submit", "eval", *common, "--boxes", str(dets)]) == 0
    summary = json.loads((run / "eval" / "summary.json").read_text())
    assert summary["boxes"]["source"] == str(dets)
    assert summary["boxes"]["kept"] == summary["samples"] == sum(
        b["image_id"] in kept for b in boxes)
    evaluated = json.loads((run / "eval" / "coco_results.json").read_text())
    assert {r["image_id"] for r in evaluated} == set(kept)
    assert "AP" in summary["coco"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:  # argparse: train jobs take no boxes
        shg(["submit", "train", *common, "--config", "configs/demo.toml", "--boxes", str(dets)])
    assert refused.value.code == 2
    assert "unrecognized arguments: --boxes" in capsys.readouterr().err
    assert shg(["submit", "eval", *common, "--boxes", str(dets), "--images",
                str(tmp_path)]) == 2
    assert f"give --images ROOT (with ROOT/val2017/); {tmp_path}/val2017 is not a folder" in \
        capsys.readouterr().err


def test_study_evaluations_get_the_boxes_and_the_leaderboard_says_so(tmp_path):
    from launcher.profile import load_profile
    from launcher.study import study_stages
    from shg.studies.leaderboard import write_leaderboard
    from shg.studies.spec import load_study

    (tmp_path / "s.toml").write_text('name = "s"\n[grid]\n"optim.lr" = [0.1, 0.2]\n')
    study = load_study(tmp_path / "s.toml")
    boxes = {"boxes": "/d/dets.json", "coco_root": "/d/coco"}
    stages = study_stages(study, tmp_path, "c.toml", "/shards", [],
                          load_profile("slurm/profiles/local.toml", []), study.variants,
                          boxes=boxes)
    (evals,) = [s for s in stages if s.name == "eval"]
    assert [a[3] for a in evals.args] == [boxes, boxes]
    board = write_leaderboard(tmp_path, [], {"study": "s", "boxes": "/d/dets.json"})
    assert board["boxes"] == "/d/dets.json"
    assert "Evaluated on: the person boxes of `/d/dets.json`" in \
        (tmp_path / "leaderboard.md").read_text()
    write_leaderboard(tmp_path, [], {"study": "s"})
    assert "Evaluated on: the ground-truth boxes of the shards." in \
        (tmp_path / "leaderboard.md").read_text()


@pytest.mark.slow
def test_no_snapshot_jobs_run_the_live_checkout(trained_run, small_shards, tmp_path, capsys):
    from shg.cli import main as shg

    jobs = tmp_path / "jobs"
    run = tmp_path / "run"
    __import__("shutil").copytree(trained_run, run)
    assert shg(["submit", "eval", "--profile", "slurm/profiles/local.toml", "--set",
                f"folder={jobs}", "--executor", "local", "--no-snapshot", "--shards",
                str(small_shards), "--run", str(run)]) == 0
    record = json.loads((jobs / "run" / "pipeline.json").read_text())
    assert record["code"] is None and not list((jobs / "run").glob("code-*"))
    (job,) = record["jobs"]["eval"]
    log = (jobs / "run" / job / f"{job}_0_log.out").read_text()
    assert f"with code from {Path('shg').absolute()}" in log
    assert (run / "eval" / "pck.json").is_file()


def test_the_rendezvous_port_is_the_jobs_and_outside_the_ephemeral_range():
    """Every task of a job derives the same port; none in 32768-60999, where another process's
    outgoing connection may hold it (a 2-node job's rank 0 failed with EADDRINUSE on submitit's
    own draw, 45660, while other tests ran)."""
    from launcher.jobs import master_port

    ports = [master_port(str(job)) for job in range(1, 3000)] + [master_port("171_2")]
    assert all(20000 <= p < 32000 for p in ports)
    assert master_port("170") == master_port("170")
    assert len(set(ports)) > 2000  # spread: jobs running at once rarely share one

