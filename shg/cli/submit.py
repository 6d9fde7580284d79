"""`shg submit STAGE|status` and `shg study report`: Slurm (launcher/, which prints the jobs
and their state as it goes)."""

from __future__ import annotations

import argparse

from .base import add_command, add_group

STAGES = (("pipeline", "prepare -> finalize -> train -> eval + analyze [+ ae]"),
          ("prepare", "shard building as a job array, then finalize"),
          ("train", "the training job (nodes x tasks per node)"),
          ("eval", "the evaluation job"), ("analyze", "the analysis jobs"),
          ("ae", "bottleneck-AE phases 1 and 2, the baseline, the comparison"),
          ("study", "a grid/list of training variants: one job array, evaluations, a leaderboard"))


def add_submit(sub) -> None:
    ssub = add_group(sub, "submit", "queue the pipeline as Slurm jobs (submitit)", "stage",
                     "STAGE")
    for name, text in STAGES:
        add_command(ssub, name, text, lambda p, n=name: _submit_args(p, n), submit)
    add_command(ssub, "status", "state of a submitted pipeline's jobs", _status_args,
                submit_status)


def add_study(sub) -> None:
    stsub = add_group(sub, "study", "a study's leaderboard (shg submit study queues one)",
                      "study_command", "ACTION")
    add_command(stsub, "report", "rebuild leaderboard.md/json and plots from the runs and jobs",
                _report_args, study_report)


# ----------------------------------------------------------------------------- submit
def _submit_args(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--profile", required=True, help="slurm/profiles/NAME.toml")
    p.add_argument("--set", dest="profile_set", action="append", metavar="KEY=VALUE",
                   help="override a profile key (repeatable)")
    p.add_argument("--executor", choices=["slurm", "local", "debug"], default="slurm")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch scripts only")
    p.add_argument("--no-snapshot", action="store_true",
                   help="jobs import the live checkout instead of a copy made at submission")
    if name != "ae":
        p.add_argument("--shards", help="shard directory (shared filesystem)")
    if name in ("pipeline", "prepare", "study"):
        p.add_argument("--coco", help="COCO root" + (" (optional: also build the shards first)"
                                                     if name == "study" else ""))
        p.add_argument("--shard-size", type=int, default=1000)
        p.add_argument("--crop-size", type=int, default=256,
                       help="side of the crops the shards hold, a multiple of 64 (default 256)")
    if name in ("pipeline", "train", "study"):
        p.add_argument("--config", help="training TOML" + (" every variant starts from"
                                                           if name == "study" else ""))
    if name == "study":
        p.add_argument("--study", required=True, help="study TOML: [grid] and/or [variants.X]")
        p.add_argument("--run", help="study directory: a run per variant and the leaderboard "
                                     "(default runs/studies/NAME)")
    elif name != "prepare":
        p.add_argument("--run", help="run directory")
    if name in ("pipeline", "eval", "study"):
        p.add_argument("--boxes", help="detection-results JSON: the evaluation jobs evaluate "
                       "on its person boxes (COCO AP on detections)")
        p.add_argument("--images", help="with --boxes: the COCO root holding val2017/ (default "
                       "--coco, else the root of the shards' annotation file)")
    if name == "pipeline":
        p.add_argument("--ae", action="store_true",
                       help="also queue the bottleneck-AE phases after training")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="training config overrides")
    p.set_defaults(coco=None, shards=None, config=None, run=None, shard_size=1000,
                   crop_size=256, ae=False,
                   study=None, boxes=None, images=None)


def submit(args: argparse.Namespace) -> int:
    from launcher.profile import load_profile
    from launcher.study import submit_study
    from launcher.submit import SubmitRequest, submit_request

    request = SubmitRequest(stage=args.stage, coco=args.coco, shards=args.shards,
                            config=args.config, run=args.run, shard_size=args.shard_size,
                            crop_size=args.crop_size,
                            ae=args.ae, overrides=list(args.overrides), study=args.study,
                            boxes=args.boxes, images=args.images)
    how = submit_study if args.stage == "study" else submit_request
    how(request, load_profile(args.profile, args.profile_set or []), args.executor,
        dry_run=args.dry_run, snapshot=not args.no_snapshot)
    return 0


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="the profile folder / run name printed at submission")


def submit_status(args: argparse.Namespace) -> int:
    from launcher.status import status

    status(args.folder)
    return 0


# ----------------------------------------------------------------------------- study
def _report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study_dir", help="the study directory (holds study.json)")


def study_report(args: argparse.Namespace) -> int:
    from launcher.study_report import report

    report(args.study_dir)
    return 0
