"""The callables Slurm runs. Small, picklable, importing the heavy modules only when they run
on the compute node (dinov2's habit)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

log = logging.getLogger(__name__)


def _announce(what: str) -> None:
    """Which code a job runs (the submission's snapshot) goes first in its log."""
    import shg
    from shg.logs import setup_logging

    setup_logging()
    log.info("shg: %s with code from %s", what, os.path.dirname(shg.__file__))


def build_shards(coco: str, split: str, out: str, task_index: int, num_tasks: int,
                 options: dict) -> dict:
    """One task of the shard building array; `options`: BuildOptions fields (shard_size,
    crop_size, ...)."""
    from shards.build import BuildOptions, build

    _announce(f"building {split} shards, task {task_index + 1}/{num_tasks}")

    return build(BuildOptions(coco_root=coco, split=split, out=out, task_index=task_index,
                              num_tasks=num_tasks, progress=False, **options))


def finalize_shards(out: str, splits: list[str]) -> dict:
    from shards.build import finalize

    _announce("finalizing shards")

    return {split: finalize(out, split)["num_samples"] for split in splits}


class TrainJob:
    """One task of the training job: the distributed environment comes from Slurm (through
    submitit), the trainer handles the pre-time-out signal by saving; on EXIT_REQUEUE the job
    requeues itself (at most max_requeues times) and resumes from that checkpoint."""

    def __init__(self, config: str, overrides: list[str], max_requeues: int = 3):
        self.config, self.overrides, self.max_requeues = config, list(overrides), max_requeues

    @property
    def run_dir(self) -> str | None:
        """Where this job trains (the last run_dir= override, else the config file's), for
        `shg submit status`; None when the config cannot be read yet (an AE phase reads its
        run's config.toml, written when the SHG's training starts)."""
        for item in reversed(self.overrides):
            if item.startswith("run_dir="):
                return item.split("=", 1)[1]
        try:
            import tomllib

            with open(self.config, "rb") as f:
                return tomllib.load(f).get("run_dir")
        except OSError:
            return None

    def __call__(self) -> int:
        import submitit

        env = submitit.JobEnvironment()
        if env.global_rank == 0:
            _announce(f"training ({env.num_tasks} ranks on {env.num_nodes} nodes)")
        if env.num_tasks > 1:
            submitit.helpers.TorchDistributedEnvironment().export(set_cuda_visible_devices=False)
            os.environ["MASTER_PORT"] = str(master_port(str(env.job_id)))  # see master_port
            os.environ.setdefault("LOCAL_WORLD_SIZE", str(env.num_tasks // env.num_nodes))
        from shg.config import load_config
        from shg.errors import EXIT_REQUEUE
        from shg.training import run

        code = run(load_config(self.config, self.overrides), hard_exit=False)
        if code == EXIT_REQUEUE:
            return requeue_or_fail(code, env.global_rank == 0, self.max_requeues)
        if code:
            raise RuntimeError(f"training failed with exit code {code}")
        return 0


def master_port(job_id: str) -> int:
    """The rendezvous port of a multi-task job: the same on every task (from the job id), and
    below Linux's ephemeral range (32768-60999). submitit's own choice, a seeded draw in
    20000-60000, usually falls inside it, where an outgoing connection of any process on the
    node (gloo opens many) can hold it: rank 0 then fails with EADDRINUSE and the other ranks
    wait for it until the collective timeout."""
    import zlib

    return 20000 + zlib.crc32(job_id.encode()) % 12000


def requeue_or_fail(code: int, leader: bool, max_requeues: int, run=subprocess.run) -> int:
    """After the trainer stopped on Slurm's signal and saved: requeue the job (the leader asks
    Slurm; the requeued job resumes from that checkpoint), or, past max_requeues or outside
    Slurm, fail, so that jobs depending on a finished training do not start."""
    restarts = int(os.environ.get("SLURM_RESTART_COUNT", "0"))
    job_id = os.environ.get("SLURM_JOB_ID")
    if job_id and restarts < max_requeues:
        if leader:
            log.info("shg: requeue %d/%d of job %s", restarts + 1, max_requeues, job_id)
            run(["scontrol", "requeue", job_id], check=False)
        return code
    why = (f"after {restarts} requeues (max_requeues = {max_requeues})" if job_id
           else "outside Slurm (nothing requeues it)")
    raise RuntimeError(f"training stopped by a signal {why}; its checkpoint is saved: submit "
                       "the training again to continue from it")


def evaluate(options: dict) -> dict:
    """The evaluation job: `shg eval` with these EvalOptions fields."""
    from shg.evaluation.runner import EvalOptions, print_summary, run_eval

    _announce("shg eval")
    if options.get("coco_ann") is None and options.get("shards"):
        options = {**options, "coco_ann": _annotation_file(options["shards"],
                                                          options.get("split", "val2017"))}
    summary = run_eval(EvalOptions(**options))
    print_summary(summary)
    sys.stdout.flush()
    return summary


def analyze(kind: str, options: dict) -> dict:
    """One analysis job (`shg analyze latent|skips|skeletons`) with these option fields."""
    _announce(f"shg analyze {kind}")
    if kind == "latent":
        from shg.analysis.latent import LatentOptions, run_latent

        result = run_latent(LatentOptions(**options))
    elif kind == "skips":
        from shg.analysis.skips import SkipOptions, run_skips

        result = run_skips(SkipOptions(**options))
    elif kind == "skeletons":
        from shg.analysis.skeletons import SkeletonOptions, run_skeletons

        result = run_skeletons(SkeletonOptions(**options))
    else:
        raise ValueError(f"unknown analysis {kind!r}; valid: latent, skips, skeletons")
    log.info("shg: %s analysis written to %s", kind, options["out"])
    return result


def ae_compare(run: str, baseline: str, finetuned: str, out: str) -> dict:
    from shg.studies.ae_compare import write_comparison

    _announce("comparing the AE fine-tuning with the baseline")
    return write_comparison(run, baseline, finetuned, out)


def _annotation_file(shards: str, split: str) -> str | None:
    """The COCO annotation file the split's shards were built from, when it is still there
    (the evaluation jobs then also report COCO AP)."""
    from shards.manifest import split_entry

    ann = split_entry(shards, split).get("source", {}).get("annotation_file")
    return ann if ann and os.path.isfile(ann) else None


def evaluate_variant(run: str, shards: str, best_by_loss: bool, boxes: dict | None = None
                     ) -> dict:
    """A study variant's evaluation job: `shg eval` of best/ (and best_by_loss/) on val2017,
    with COCO AP when the annotation file the shards were built from is still there; on a
    detector's boxes with `boxes` (SubmitRequest.eval_boxes)."""
    from shg.evaluation.runner import EvalOptions, print_summary, run_eval
    from shg.studies.records import EVAL_DIRS, training_finished

    _announce(f"evaluating {run}")
    if not training_finished(run):
        raise RuntimeError(f"{run}: its training did not finish (no summary.json): nothing to "
                           "evaluate")
    ann = _annotation_file(shards, "val2017")
    summaries = {}
    for which in ("best", "best_by_loss") if best_by_loss else ("best",):
        summaries[which] = run_eval(EvalOptions(
            shards=shards, split="val2017", out=f"{run}/{EVAL_DIRS[which]}", run=run,
            best=which, coco_ann=ann, **(boxes or {})))
        print(f"== {which}/", flush=True)
        print_summary(summaries[which])
    sys.stdout.flush()
    return summaries


def study_report(study_dir: str) -> dict:
    """The study's last job: the leaderboard, whatever state the variants ended in."""
    from .study_report import report

    _announce("the study's report")
    return report(study_dir)
