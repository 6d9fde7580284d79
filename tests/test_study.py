"""Studies: the study file (grid x variants, errors that name the key), the leaderboard from run
directories, the job array's sbatch (golden file, and the scripts really submitted), and a 2x2
grid through submitit's local executor with re-submission (tests/test_slurm.py runs a study on
a real Slurm)."""

import json
import re
import sys
from pathlib import Path

import pytest

from launcher.profile import load_profile
from launcher.study import study_stages
from launcher.study_report import variant_state
from launcher.submit import sbatch_preview, submit
from shg.config import ConfigError
from shg.studies.leaderboard import VariantResult, variant_result, write_leaderboard
from shg.studies.spec import Variant, check_variants, load_study, variant_overrides

GOLDEN = Path(__file__).parent / "golden"


def _study(tmp_path, text: str, name: str = "s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return load_study(path)


def test_a_grid_crossed_with_named_variants_expands_to_every_combination(tmp_path):
    study = _study(tmp_path, """
name = "abl"
[grid]
"optim.lr" = [0.001, 0.0025]
train.batch_size = [4, 8]
[variants.base]
[variants.noskip]
model.skips = false
""")
    assert study.name == "abl"
    got = {v.name: v.overrides for v in study.variants}
    assert got == {
        "base_lr-0.001_batch_size-4": ["optim.lr=0.001", "train.batch_size=4"],
        "base_lr-0.001_batch_size-8": ["optim.lr=0.001", "train.batch_size=8"],
        "base_lr-0.0025_batch_size-4": ["optim.lr=0.0025", "train.batch_size=4"],
        "base_lr-0.0025_batch_size-8": ["optim.lr=0.0025", "train.batch_size=8"],
        "noskip_lr-0.001_batch_size-4": ["model.skips=false", "optim.lr=0.001",
                                         "train.batch_size=4"],
        "noskip_lr-0.001_batch_size-8": ["model.skips=false", "optim.lr=0.001",
                                         "train.batch_size=8"],
        "noskip_lr-0.0025_batch_size-4": ["model.skips=false", "optim.lr=0.0025",
                                          "train.batch_size=4"],
        "noskip_lr-0.0025_batch_size-8": ["model.skips=false", "optim.lr=0.0025",
                                          "train.batch_size=8"],
    }
    # a string value travels as TOML, so the override parser reads it back as a string
    s = _study(tmp_path, '[grid]\n"eval.select" = ["bbox@0.2", "constant@0.5"]\n', "g.toml")
    assert [v.overrides for v in s.variants] == [['eval.select="bbox@0.2"'],
                                                 ['eval.select="constant@0.5"']]
    assert [v.name for v in s.variants] == ["select-bbox-0.2", "select-constant-0.5"]


@pytest.mark.parametrize("text, message", [
    ('name = "x"\ngrids = {}\n', r"unknown key grids; valid keys: name, description, "
                                 r"best_by_loss, grid, variants"),
    ('name = "x"\n[grid]\n', r"\[grid\] is empty"),
    ('[grid]\n"optim.lr" = []\n', r"grid key optim.lr has no values"),
    ('[grid]\n"optim.lr" = 0.1\n', r"grid key optim.lr has no values"),
    ('name = "x"\n', r"no \[grid\] and no \[variants.NAME\]"),
    ('[variants.a]\nrun_dir = "elsewhere"\n', r"variant a sets run_dir, which the study sets"),
    ('[variants.a]\n"data.shards" = "/x"\n', r"variant a sets data.shards"),
    ('[variants."a b"]\n', r"variant name 'a b'"),
    ('name = "x"\n[variants\n', r"invalid TOML"),
    ('best_by_loss = "yes"\n[grid]\n"optim.lr" = [1]\n', r"best_by_loss must be bool"),
    ('grid = 3\n', r"grid must be a table"),
])
def test_bad_study_files_are_refused_naming_the_key(tmp_path, text, message):
    with pytest.raises(ConfigError, match=message):
        _study(tmp_path, text)


def test_a_variant_with_an_unknown_or_invalid_key_is_named_before_anything_is_queued(tmp_path):
    study = _study(tmp_path, "[variants.ok]\n[variants.typo]\nmodel.skip = false\n"
                             "[variants.bad]\nmodel.stacks = 0\n")
    good = study.variants[0]
    check_variants(study.__class__(study.name, [good], source=study.source), "configs/tiny.toml",
                   lambda v: variant_overrides(tmp_path, "/shards", v))
    with pytest.raises(ConfigError, match=r"variant typo: .*unknown key model.skip; valid keys "
                                          r"in \[model\]: stacks"):
        check_variants(study, "configs/tiny.toml", lambda v: variant_overrides(tmp_path, "/s", v))
    with pytest.raises(ConfigError, match=r"variant bad: .*stacks"):
        check_variants(study.__class__(study.name, [study.variants[2]], source=study.source),
                       "configs/tiny.toml", lambda v: variant_overrides(tmp_path, "/s", v))


def test_thesis_study_names_the_committee_questions():
    study = load_study("configs/studies/thesis.toml")
    assert {v.name: v.overrides for v in study.variants} == {
        "baseline": [], "no-skips": ["model.skips=false"],
        "bottleneck-128": ["model.bottleneck_features=128"],
        "bottleneck-64": ["model.bottleneck_features=64"]}
    assert study.best_by_loss
    check_variants(study, "configs/coco.toml", lambda v: variant_overrides("/s", "/shards", v))


def _fake_run(root: Path, name: str, best: float | None, curve=(), evaluated=None,
              finished=True, by_loss=None) -> dict:
    """A run directory as training and `shg eval` leave it, written by hand."""
    run = root / name
    run.mkdir(parents=True)
    (run / "config.toml").write_text('[eval]\nselect = "constant@0.5"\n')
    (run / "metrics.jsonl").write_text("".join(
        json.dumps({"step": s, "pck_constant@0.5": v}) + "\n" for s, v in curve))
    if best is not None:
        (run / "best").mkdir()
        (run / "best" / "info.json").write_text(json.dumps(
            {"step": curve[-1][0], "metrics": {"pck_constant@0.5": best}}))
    if finished:
        (run / "summary.json").write_text(json.dumps(
            {"finished": True, "step": curve[-1][0], "train_seconds": 3725.0}))
    for where, scores in (("eval", evaluated), ("eval-best-by-loss", by_loss)):
        if scores:
            (run / where).mkdir()
            (run / where / "summary.json").write_text(json.dumps(
                {"pck": {"bbox": {"0.2": scores[0]}}, "coco": {"AP": scores[1]}}))
    return {"name": name, "overrides": [f"x={name}"], "run": str(run)}


def test_leaderboard_ranks_by_the_selection_metric_and_lists_failures(tmp_path):
    entries = [_fake_run(tmp_path, "low", 0.40, [(10, 0.3), (20, 0.40)], (0.61, 0.52),
                         by_loss=(0.55, 0.47)),
               _fake_run(tmp_path, "high", 0.70, [(10, 0.5), (20, 0.70)], (0.80, 0.66),
                         by_loss=(0.79, 0.60)),
               _fake_run(tmp_path, "broken", None, [(10, 0.1)], finished=False)]
    results = [variant_result(entries[0], "finished", "", True),
               variant_result(entries[1], "finished", "", True),
               variant_result(entries[2], "failed (train FAILED)", "exit 1:0: out of memory",
                              True)]
    board = write_leaderboard(tmp_path, results, {"study": "t", "best_by_loss": True})
    assert board["best_variant"] == "high"
    assert board["selection_metric"] == "pck_constant@0.5"
    rows = board["variants"]
    assert [r["name"] for r in rows] == ["high", "low", "broken"]
    assert (rows[0]["best"], rows[0]["pck_bbox_02"], rows[0]["coco_ap"]) == (0.70, 0.80, 0.66)
    assert rows[0]["by_loss"] == {"pck_bbox_02": 0.79, "coco_ap": 0.60}
    assert rows[0]["steps"] == 20 and rows[0]["train_seconds"] == 3725.0
    assert rows[2]["state"] == "failed (train FAILED)" and rows[2]["steps"] == 10
    md = (tmp_path / "leaderboard.md").read_text()
    assert "Best variant: **high**" in md
    assert "| 1 | high | `x=high` | 0.700 | 20 | 0.800 | 0.660 | 20 | 1:02:05 | finished |" \
           " 0.790 | 0.600 |" in md
    assert "- **broken**: failed (train FAILED): exit 1:0: out of memory" in md
    for png in ("pck_curves.png", "final_scores.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_variant_state_comes_from_its_run_then_its_jobs(tmp_path):
    done = _fake_run(tmp_path, "done", 0.5, [(2, 0.5)], (0.6, 0.4))
    trained = _fake_run(tmp_path, "trained", 0.5, [(2, 0.5)])
    fresh = {"name": "fresh", "overrides": [], "run": str(tmp_path / "fresh")}
    ok = {"state": "COMPLETED", "why": ""}
    # finished runs are finished whatever the (re-submitted) jobs say
    assert variant_state(done, {"state": "FAILED", "why": "x"}, None, False) == ("finished", "")
    assert variant_state(trained, None, None, False) == ("trained, not evaluated", "")
    assert variant_state(fresh, None, None, False) == ("not submitted", "")
    assert variant_state(fresh, {"state": "PENDING", "why": "Priority"}, None, False) == \
        ("train pending", "Priority")
    assert variant_state(fresh, {"state": "FAILED", "why": "exit 2:0: bad"}, None, False) == \
        ("failed (train FAILED)", "exit 2:0: bad")
    assert variant_state(trained, ok, {"state": "RUNNING"}, False) == ("eval running", "")
    assert variant_state(trained, ok, {"state": "CANCELLED", "why": "never ran"}, False) == \
        ("failed (eval CANCELLED)", "never ran")
    # best_by_loss asked for but not evaluated: not finished
    assert variant_state(done, ok, ok, True)[0] == "failed (eval)"


def _study_stages(profile, tmp_path):
    study = load_study("configs/studies/thesis.toml")
    return study_stages(study, Path("/shared/studies/thesis"), "/shared/configs/coco.toml",
                        "/shared/shards", [], profile, study.variants)


def test_study_array_sbatch_matches_the_golden_file():
    profile = load_profile("slurm/profiles/example-2x4gpu.toml", ["array_parallelism=2"])
    stages = {s.name: s for s in _study_stages(profile, None)}
    text = sbatch_preview(stages["train"], profile, "/shared/jobs/thesis",
                          code="/shared/jobs/thesis/code-20261124-120000")
    assert text == (GOLDEN / "study_train_2x4gpu.sbatch").read_text()
    for line in ("#SBATCH --array=0-3%2", "#SBATCH --nodes=2", "#SBATCH --ntasks-per-node=4",
                 "#SBATCH --gpus-per-node=4", "#SBATCH --signal=USR2@180"):
        assert line in text


def test_the_study_scripts_really_submitted_wait_per_variant_and_report_after_all(
        tmp_path, fake_sbatch):
    bin_dir = fake_sbatch
    profile = load_profile("slurm/profiles/example-2x4gpu.toml",
                           [f"folder={tmp_path / 'jobs'}", "array_parallelism=2"])
    stages = _study_stages(profile, tmp_path)
    for stage in stages:  # the snapshot copies the training config: give it a real one
        for job in stage.callables() if stage.training else []:
            job.config = "configs/coco.toml"
    result = submit(stages, profile, "slurm", "thesis", log=lambda *a: None)
    script = {name: (bin_dir / f"sbatch-{ids[0].split('_')[0]}.sh").read_text()
              for name, ids in result["ids"].items()}
    train_id = result["ids"]["train"][0].split("_")[0]
    eval_id = result["ids"]["eval"][0].split("_")[0]
    text = script["train"].replace(str(tmp_path / "jobs"), "/shared/jobs")
    text = re.sub(r"code-\d{8}-\d{6}(-\d+)?", "code-20261124-120000", text)
    assert text.replace(sys.executable, "python") == \
        (GOLDEN / "study_train_2x4gpu.sbatch").read_text()
    assert f"#SBATCH --dependency=aftercorr:{train_id}\n" in script["eval"]
    assert "#SBATCH --array=0-3%2" in script["eval"]
    assert f"#SBATCH --dependency=afterany:{train_id}:{eval_id}\n" in script["report"]
    assert "--array" not in script["report"] and "gpus" not in script["report"]
    record = json.loads((tmp_path / "jobs" / "thesis" / "pipeline.json").read_text())
    assert record["labels"]["train"] == ["baseline", "no-skips", "bottleneck-128",
                                         "bottleneck-64"]


@pytest.mark.slow
def test_a_grid_through_the_local_executor_then_a_resubmission(small_shards, tmp_path, capsys):
    from shg.cli import main as shg

    study_file = tmp_path / "grid.toml"
    study_file.write_text('name = "grid"\n[grid]\n"model.stacks" = [1, 2]\n'
                          '"optim.lr" = [0.001]\n')
    argv = ["submit", "study", "--profile", "slurm/profiles/local.toml",
            "--set", f"folder={tmp_path / 'jobs'}", "--set", "tasks_per_node=1",
            "--executor", "local", "--config", "configs/tiny.toml", "--study", str(study_file),
            "--shards", str(small_shards), "--run", str(tmp_path / "grid"),
            "model.features=16", "train.max_steps=2", "eval.every_steps=2",
            "checkpoint.every_steps=2", "data.num_workers=0", "eval.max_samples=8"]
    assert shg(argv) == 0
    names = ["stacks-1_lr-0.001", "stacks-2_lr-0.001"]
    board = json.loads((tmp_path / "grid" / "leaderboard.json").read_text())
    assert sorted(r["name"] for r in board["variants"]) == names
    assert all(r["state"] == "finished" and r["steps"] == 2 for r in board["variants"])
    scores = {}
    for name in names:  # each variant really trained with its own settings, and was evaluated
        run = tmp_path / "grid" / name
        info = json.loads((run / "best" / "info.json").read_text())
        assert info["model"]["stacks"] == int(name[7])
        assert 'lr = 0.001' in (run / "config.toml").read_text()
        scores[name] = info["metrics"]["pck_constant@0.5"]
        evaluated = json.loads((run / "eval" / "summary.json").read_text())
        row = next(r for r in board["variants"] if r["name"] == name)
        assert row["pck_bbox_02"] == evaluated["pck"]["bbox"]["0.2"]
    # the best variant by the runs' own best/ scores (ties: the name decides, as documented)
    expected = sorted(scores, key=lambda n: (-scores[n], n))[0]
    assert board["best_variant"] == expected
    # one variant loses its evaluation: a re-submission trains/evaluates that one only
    __import__("shutil").rmtree(tmp_path / "grid" / names[1] / "eval")
    capsys.readouterr()
    assert shg(argv) == 0
    out = capsys.readouterr().out
    assert "1 already finished (left out)" in out
    record = json.loads((tmp_path / "jobs" / "grid" / "pipeline.json").read_text())
    assert record["labels"]["train"] == [names[1]] and record["labels"]["eval"] == [names[1]]
    assert (tmp_path / "grid" / names[1] / "eval" / "pck.json").is_file()
    board = json.loads((tmp_path / "grid" / "leaderboard.json").read_text())
    assert all(r["state"] == "finished" for r in board["variants"])
    # all finished: nothing is queued, the report is rebuilt
    assert shg(argv) == 0
    assert "nothing to train: rebuilding the report" in capsys.readouterr().out


def test_variant_overrides_put_the_variant_last():
    v = Variant("a", ["optim.lr=0.1"])
    assert variant_overrides("/st", "/sh", v, ["optim.lr=0.5", "train.max_steps=9"]) == \
        ["data.shards=/sh", "run_dir=/st/a", "optim.lr=0.5", "train.max_steps=9", "optim.lr=0.1"]


def test_leaderboard_with_no_validated_variant_says_so(tmp_path):
    board = write_leaderboard(tmp_path, [VariantResult("a", [], "not submitted")],
                              {"study": "t"})
    assert board["best_variant"] is None
    assert "No variant has a validated model yet." in (tmp_path / "leaderboard.md").read_text()


def test_study_report_rebuilds_the_leaderboard_from_the_runs(tmp_path, capsys):
    from shg.cli import main as shg
    from shg.studies.records import write_record

    study = _study(tmp_path, '[variants.low]\n[variants.high]\n"optim.lr" = 0.01\n')
    study_dir = tmp_path / "study"
    _fake_run(study_dir, "low", 0.40, [(10, 0.40)], (0.61, 0.52))
    _fake_run(study_dir, "high", 0.70, [(10, 0.70)], (0.80, 0.66))
    write_record(study_dir, study, "configs/tiny.toml", "/shards", None, [])
    assert shg(["study", "report", str(study_dir)]) == 0
    out = capsys.readouterr().out
    assert f"study {study.name}: 2 of 2 variants finished; best: high" in out
    board = json.loads((study_dir / "leaderboard.json").read_text())
    assert [r["name"] for r in board["variants"]] == ["high", "low"]
    assert [r["overrides"] for r in board["variants"]] == [["optim.lr=0.01"], []]
    assert "Best variant: **high**" in (study_dir / "leaderboard.md").read_text()
    assert shg(["study", "report", str(tmp_path / "none")]) == 2
    assert "study.json: not found" in capsys.readouterr().err
