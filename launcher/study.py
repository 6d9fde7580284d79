"""`shg submit study` and `shg study report`: a study's variants (shg/studies/) as jobs.

    shg submit study --profile P --config C --study STUDY.toml --shards DIR [--coco ROOT]
        [--run STUDY_DIR] [--executor slurm|local|debug] [--dry-run] [--set key=value] [k=v ...]
    shg study report STUDY_DIR

Jobs (on Slurm): [prepare -> finalize ->] train (ONE job array, a task per variant, each task
a full training job with the profile's nodes x tasks; at most profile.array_parallelism at
once) -> eval (an array too; task i waits for training task i only: `aftercorr`, so a failed
variant does not stop the others) -> report (`afterany`: after all of them, whatever their
state). Preemption and time limits requeue and resume each task like a single training job.
Variants already trained and evaluated are left out of a re-submission; the report still
lists them.
"""

from __future__ import annotations

from pathlib import Path

from shg.studies.records import variant_finished, write_record
from shg.studies.spec import Study, check_variants, load_study, variant_overrides

from . import jobs
from .profile import Profile
from .stages import Stage, pipeline_stages
from .study_report import report


def study_dir_of(study: Study, run: str | None) -> Path:
    """Where the variants' runs and the leaderboard go: --run, else runs/studies/NAME."""
    return Path(run or f"runs/studies/{study.name}").absolute()


def study_stages(study: Study, study_dir: Path, config: str, shards: str, overrides: list[str],
                 profile: Profile, todo: list, coco: str | None = None,
                 build: dict | None = None, boxes: dict | None = None) -> list[Stage]:
    stages = pipeline_stages(coco, shards, config, str(study_dir), [], profile, build,
                             which=("prepare",)) if coco else []
    common = [*profile.training_overrides(), *overrides]
    names = [v.name for v in todo]
    runs = [str(study_dir / v.name) for v in todo]
    stages.append(Stage(
        "train", None, [()] * len(todo), array=True, training=True, may_fail=True,
        fns=[jobs.TrainJob(config, variant_overrides(study_dir, shards, v, common),
                           profile.max_requeues) for v in todo],
        labels=names, after=["finalize"] if coco else []))
    stages.append(Stage("eval", jobs.evaluate_variant,
                        [(run, shards, study.best_by_loss, boxes or {}) for run in runs],
                        array=True,
                        may_fail=True, labels=names, after=["train"], after_kind="aftercorr"))
    stages.append(Stage("report", jobs.study_report, [(str(study_dir),)], gpu=False,
                        after=["train", "eval"], after_kind="afterany"))
    return stages


def submit_study(request, profile: Profile, executor: str = "slurm", dry_run: bool = False,
                 snapshot: bool = True, log=print) -> dict:
    """Check every variant's config, leave out the finished ones, queue the rest, write
    STUDY_DIR/study.json (what the report reads)."""
    from .submit import after_submit, submit

    request = request.checked()
    study = load_study(request.study)
    study_dir = study_dir_of(study, request.run)
    common = [*profile.training_overrides(), *request.overrides]
    check_variants(study, request.config,
                   lambda v: variant_overrides(study_dir, request.shards, v, common))
    todo = [v for v in study.variants
            if not variant_finished(study_dir / v.name, study.best_by_loss)]
    done = len(study.variants) - len(todo)
    log(f"study {study.name}: {len(study.variants)} variants in {study_dir}"
        + (f", {done} already finished (left out)" if done else ""))
    for v in study.variants:
        log(f"  {v.name:<28} {' '.join(v.overrides) or '(the config as it is)'}"
            + ("" if v in todo else "   [finished]"))
    folder = profile.job_folder() / study_dir.name
    boxes = request.eval_boxes()
    if not dry_run:
        write_record(study_dir, study, request.config, request.shards, str(folder), common,
                     boxes.get("boxes"))
    if not todo:
        log("nothing to train: rebuilding the report")
        report(study_dir, log=log)
        return {"folder": folder, "study_dir": study_dir, "ids": {}}
    stages = study_stages(study, study_dir, request.config, request.shards, request.overrides,
                          profile, todo, request.coco, request.build_options, boxes)
    result = submit(stages, profile, executor, study_dir.name, dry_run=dry_run, log=log,
                    snapshot=snapshot)
    if not dry_run:
        after_submit(folder, executor, later=(f"shg study report {study_dir}",), log=log)
    return {**result, "folder": folder, "study_dir": study_dir}
