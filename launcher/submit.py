"""`shg submit ...`: queue the pipeline's stages as Slurm jobs through submitit.

    shg submit pipeline --profile slurm/profiles/local.toml --coco DATA --shards SHARDS \
        --config configs/tiny.toml --run RUN [--executor slurm|local|debug] [--dry-run] [k=v ...]

Stages and dependencies: prepare (a job array building shards, both splits) -> finalize
(afterok) -> train (afterok; nodes x tasks_per_node ranks) -> eval and analyze (afterok on
train). `slurm` chains them with Slurm dependencies and returns at once; `local` (processes on
this machine) and `debug` (in this process) run them in order. `--dry-run` prints the sbatch
scripts and submits nothing. Job ids go to FOLDER/pipeline-RUNNAME.json for `shg submit status`.
"""

from __future__ import annotations

import json
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .profile import Profile

SPLITS = ("train2017", "val2017")


@dataclass
class Stage:
    name: str
    fn: Callable
    args: list = field(default_factory=list)   # one call, or one per array task
    array: bool = False
    training: bool = False
    gpu: bool = True
    """False for CPU-only stages (shard building): no GPU is requested."""
    after: list[str] = field(default_factory=list)


def pipeline_stages(coco: str, shards: str, config: str, run: str, overrides: list[str],
                    profile: Profile, shard_size: int = 1000,
                    which: tuple[str, ...] = ("prepare", "train", "eval", "analyze")
                    ) -> list[Stage]:
    from . import jobs

    stages: list[Stage] = []
    n = profile.prepare_tasks
    if "prepare" in which:
        stages.append(Stage("prepare", jobs.build_shards,
                            [(coco, split, shards, shard_size, i, n)
                             for split in SPLITS for i in range(n)], array=True, gpu=False))
        stages.append(Stage("finalize", jobs.finalize_shards, [(shards, list(SPLITS))],
                            after=["prepare"], gpu=False))
    if "train" in which:
        train_overrides = [f"data.shards={shards}", f"run_dir={run}", *overrides]
        stages.append(Stage("train", jobs.TrainJob(config, train_overrides,
                                                   profile.max_requeues), [()], training=True,
                            after=["finalize"] if "prepare" in which else []))
    after_train = ["train"] if "train" in which else []
    if "eval" in which:
        stages.append(Stage("eval", jobs.run_cli, [(["eval", "--run", run, "--shards", shards,
                                                      "--split", "val2017", "--out",
                                                      f"{run}/eval"],)], after=after_train))
    if "analyze" in which:
        stages.append(Stage("analyze", jobs.run_cli,
                            [(["analyze", "latent", "--run", run, "--shards", shards,
                               "--out", f"{run}/analysis/latent"],),
                             (["analyze", "skips", "--run", run, "--shards", shards,
                               "--out", f"{run}/analysis/skips"],),
                             (["analyze", "skeletons", "--shards", shards,
                               "--out", f"{run}/analysis/skeletons"],)],
                            array=True, after=after_train))
    return stages


def _parameters(stage: Stage, profile: Profile) -> dict:
    params = profile.slurm_parameters(training=stage.training)
    if not stage.gpu:
        params.pop("gpus_per_node", None)
    return params


def sbatch_preview(stage: Stage, profile: Profile, folder: str) -> str:
    """The sbatch script submitit would write for this stage (no Slurm needed)."""
    import submitit
    from submitit.slurm.slurm import _convert_mem, _make_sbatch_string

    params = _parameters(stage, profile)
    generic = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    generic["name"] = f"shg-{stage.name}"
    names = submitit.SlurmExecutor._equivalence_dict()  # submitit's own generic -> sbatch map
    converted = {names[k]: v for k, v in generic.items()}
    converted["mem"] = _convert_mem(converted["mem"])
    extra = {k[len("slurm_"):]: v for k, v in params.items() if k.startswith("slurm_")}
    if stage.after:
        extra["dependency"] = "afterok:" + ":".join(f"<{a}>" for a in stage.after)
    job_folder = f"{folder}/%j"
    return _make_sbatch_string(
        command=shlex.join(["python", "-u", "-m", "submitit.core._submit", job_folder]),
        folder=job_folder, map_count=len(stage.args) if stage.array else None, **converted,
        **extra)


def submit(stages: list[Stage], profile: Profile, executor: str, run_name: str,
           dry_run: bool = False, log=print) -> dict:
    folder = str(Path(os.path.expandvars(profile.folder)) / run_name)
    if dry_run:
        for stage in stages:
            log(f"# ---- {stage.name}" + (f" (array of {len(stage.args)})" if stage.array
                                           else ""))
            log(sbatch_preview(stage, profile, folder))
        return {}
    import submitit

    ids: dict[str, list[str]] = {}
    handles: dict[str, list] = {}
    for stage in stages:
        ex = submitit.AutoExecutor(folder=f"{folder}/%j", cluster=executor)
        params = _parameters(stage, profile)
        if executor != "slurm":
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
            params.pop("nodes", None)
            for dep in stage.after:  # no scheduler to wait for us: wait here
                for job in handles[dep]:
                    job.results()
        elif stage.after:
            deps = [i.split("_")[0] for d in stage.after for i in ids[d]]
            params["slurm_additional_parameters"] = {
                "dependency": "afterok:" + ":".join(dict.fromkeys(deps))}
        ex.update_parameters(name=f"shg-{stage.name}", **params)
        if stage.array:
            jobs = ex.map_array(_call, [stage.fn] * len(stage.args), stage.args)
        else:
            jobs = [ex.submit(stage.fn, *stage.args[0])]
        handles[stage.name] = jobs
        ids[stage.name] = [j.job_id for j in jobs]
        log(f"{stage.name:<9} submitted: {', '.join(ids[stage.name])}")
    record = {"run": run_name, "executor": executor, "folder": folder,
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": ids}
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / "pipeline.json").write_text(json.dumps(record, indent=1))
    if executor != "slurm":
        for stage in stages:
            for job in handles[stage.name]:
                job.results()  # raises with the job's own error if it failed
        log("all stages finished")
    return {"ids": ids, "handles": handles, "record": record}


def _call(fn: Callable, args: tuple) -> Any:
    return fn(*args)


def status(folder: str, log=print) -> list[dict]:
    """One line per job of a submitted pipeline: its state and, for a failure, why."""
    import submitit

    record = json.loads((Path(folder) / "pipeline.json").read_text())
    rows = []
    for stage, ids in record["jobs"].items():
        for job_id in ids:
            if record["executor"] == "slurm":
                job = submitit.SlurmJob(folder=f"{record['folder']}/%j", job_id=job_id)
            else:
                job = submitit.LocalJob(folder=f"{record['folder']}/%j", job_id=job_id)
            state = job.state
            rows.append({"stage": stage, "job_id": job_id, "state": state})
    log(f"{'stage':<10}{'job':<16}state")
    for r in rows:
        log(f"{r['stage']:<10}{r['job_id']:<16}{r['state']}")
    return rows
