"""`shg submit ...`: queue the pipeline's stages as Slurm jobs through submitit.

    shg submit pipeline --profile slurm/profiles/local.toml --coco DATA --shards SHARDS \
        --config configs/tiny.toml --run RUN [--ae] [--executor slurm|local|debug] [--dry-run] \
        [k=v ...]
    shg submit ae --profile P --run RUN [k=v ...]      # the bottleneck-AE phases of a trained run
    shg submit status FOLDER

Stages and dependencies (stages.py): prepare (a job array building shards, both splits) ->
finalize (afterok) -> train (afterok; nodes x tasks_per_node ranks) -> eval and analyze (afterok
on train); with --ae also ae-train -> ae-finetune, ae-baseline -> ae-compare. On Slurm a job
whose dependency failed is cancelled (--kill-on-invalid-dep), not left pending for ever. `slurm`
returns at once; `local` (processes on this machine) and `debug` (in this process) run the
stages in order. `--dry-run` prints the sbatch scripts and submits nothing.

One function, `executor_parameters`, computes every job's submitit parameters, for the dry run
and for the real submission alike (the golden test checks both scripts).

Code snapshot: the packages, the training config and the DeepSpeed JSON are copied into
FOLDER/RUN/code-TIMESTAMP/ and the jobs start there (cd + PYTHONPATH), so queued and requeued jobs
run the code and config they were submitted with, whatever happens to the checkout meanwhile.
"""

from __future__ import annotations

import importlib
import shlex
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Callable

from shards import atomic
from shg.errors import UserError

from .profile import Profile
from .records import earlier_record, write_record
from .stages import Stage, SubmitRequest, ae_stages, pipeline_stages
from .status import status, training_still_to_finish

PACKAGES = ("shg", "launcher", "shards")


def submit_request(request: SubmitRequest, profile: Profile, executor: str = "slurm",
                   dry_run: bool = False, snapshot: bool = True, log=print) -> dict:
    """The submission policy of `shg submit STAGE`: check the request, plan its stages (the AE
    study waits for the run's training job when that is still queued or running), submit, and
    show the jobs' state."""
    request = request.checked()
    if request.stage == "ae":
        wait = executor == "slurm" and not dry_run and \
            training_still_to_finish(profile, request.run_name)
        if not wait and not dry_run and not (Path(request.run) / "config.toml").is_file():
            raise UserError(f"--run {request.run}: no config.toml (train the SHG first, or use "
                            "`shg submit pipeline --ae` to queue both)")
        stages = ae_stages(request.run, request.overrides, profile,
                           after=["train"] if wait else [])
    else:
        stages = pipeline_stages(request.coco, request.shards, request.config, request.run,
                                 request.overrides, profile, request.build_options,
                                 request.stages_wanted(), request.eval_boxes())
    result = submit(stages, profile, executor, request.run_name, dry_run=dry_run, log=log,
                    snapshot=snapshot)
    if not dry_run:
        after_submit(result["folder"], executor, log=log)
    return result


def after_submit(folder: str | Path, executor: str, later: tuple[str, ...] = (),
                 log=print) -> None:
    """What a submission shows once its jobs are queued (`shg submit STAGE`, `shg submit
    study`): on Slurm the jobs' state, then the commands to follow them (`later`: more of
    them, after `shg submit status FOLDER`)."""
    if executor == "slurm":
        log("")
        status(str(folder), log=log)
    log("\nlater: " + "\n       ".join([f"shg submit status {folder}", *later]))


def _dependency(stage: Stage, ids: dict[str, list[str]] | None = None) -> dict:
    """submitit's slurm_* parameters making a job wait for the stages `stage.after` the way
    `stage.after_kind` says (placeholders such as ID_OF_train in a preview)."""
    if not stage.after:
        return {}
    # (a placeholder that needs no shell quoting, so the preview reads like the real script)
    deps = [i.split("_")[0] for d in stage.after for i in ids[d]] if ids else \
        [f"ID_OF_{a}" for a in stage.after]
    params = {"slurm_dependency": f"{stage.after_kind}:" + ":".join(dict.fromkeys(deps))}
    if stage.after_kind != "afterany":
        # Without kill-on-invalid-dep a job whose dependency failed stays PENDING for ever.
        params["slurm_additional_parameters"] = {"kill_on_invalid_dep": "yes"}
    return params


def _snapshot_lines(code: str) -> list[str]:
    # `python -m` puts the working directory first on sys.path: starting in the snapshot (not
    # in the checkout the user submitted from) is what makes the copy win; PYTHONPATH carries it
    # to subprocesses that change directory.
    return [f"cd {shlex.quote(code)}",
            f"export PYTHONPATH={shlex.quote(code)}${{PYTHONPATH:+:$PYTHONPATH}}"]


def executor_parameters(stage: Stage, profile: Profile, executor: str,
                        ids: dict[str, list[str]] | None = None, code: str | None = None) -> dict:
    """submitit's parameters of one stage's job(s): the profile's resources, the dependency on
    earlier stages (placeholders such as ID_OF_train when `ids` is None: a dry run) and the lines
    that start the job in the code snapshot `code`."""
    params = profile.slurm_parameters(training=stage.training)
    if not stage.gpu:
        params.pop("gpus_per_node", None)
    params["name"] = f"shg-{stage.name}"
    if stage.array and profile.array_parallelism:
        params["slurm_array_parallelism"] = profile.array_parallelism
    setup = _snapshot_lines(code) if code else []
    if executor == "slurm":
        if setup:
            params["slurm_setup"] = [*params.get("slurm_setup", []), *setup]
        params.update(_dependency(stage, ids))
        return params
    params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    params.pop("nodes", None)
    if setup and executor == "local":
        params["local_setup"] = setup
    return params


def sbatch_preview(stage: Stage, profile: Profile, folder: str, python: str = "python",
                   code: str | None = None) -> str:
    """The sbatch script submitit writes for this stage (no Slurm needed): the dry run."""
    import submitit
    from submitit.slurm.slurm import _convert_mem, _make_sbatch_string

    params = executor_parameters(stage, profile, "slurm", ids=None, code=code)
    generic = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    names = submitit.SlurmExecutor._equivalence_dict()  # submitit's own generic -> sbatch map
    converted = {names[k]: v for k, v in generic.items()}
    converted["mem"] = _convert_mem(converted["mem"])
    extra = {k[len("slurm_"):]: v for k, v in params.items() if k.startswith("slurm_")}
    job_folder = f"{folder}/%j"
    return _make_sbatch_string(
        command=shlex.join([python, "-u", "-m", "submitit.core._submit", job_folder]),
        folder=job_folder, map_count=len(stage.args) if stage.array else None, **converted,
        **extra)


def snapshot_code(folder: Path, files: list[str] = ()) -> tuple[Path, dict[str, str]]:
    """Copy the packages and the given files (configs) into the job folder; returns the
    snapshot directory and where each file's copy is."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    dest = folder / f"code-{stamp}"
    n = 1
    while dest.exists():
        dest, n = folder / f"code-{stamp}-{n}", n + 1
    with atomic.atomic_path(dest) as tmp:  # a snapshot is complete or absent
        return dest, _copy_code(tmp, dest, files)


def _copy_code(tmp: Path, dest: Path, files: list[str]) -> dict[str, str]:
    for pkg in PACKAGES:
        src = Path(importlib.import_module(pkg).__file__).parent
        shutil.copytree(src, tmp / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    copies = {}
    for i, file in enumerate(dict.fromkeys(files)):
        sub = tmp / "configs" / (str(i) if i else "")  # two configs may share a name
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, sub / Path(file).name)
        copies[file] = str(dest / (sub / Path(file).name).relative_to(tmp))
    return copies


def _snapshot_training_files(stages: list[Stage], folder: Path) -> Path:
    """Snapshot, then point the training jobs at the copies of their config and DeepSpeed JSON
    (a run's own config.toml, read by the AE phases, is an output: not copied)."""
    training = [(stage, job) for stage in stages if stage.training for job in stage.callables()]
    files = []
    for stage, job in training:
        if stage.name == "train":
            files.append(job.config)
        files += [o.split("=", 1)[1] for o in job.overrides
                  if o.startswith("distributed.deepspeed_config=") and o.split("=", 1)[1]]
    code, copies = snapshot_code(folder, files)
    for _, job in training:
        job.config = copies.get(job.config, job.config)
        job.overrides = [
            f"{o.split('=', 1)[0]}={copies[o.split('=', 1)[1]]}"
            if o.startswith("distributed.deepspeed_config=") and o.split("=", 1)[1] in copies
            else o for o in job.overrides]
    return code


def submit(stages: list[Stage], profile: Profile, executor: str, run_name: str,
           dry_run: bool = False, log=print, snapshot: bool = True) -> dict:
    folder = profile.job_folder() / run_name
    if dry_run:
        for stage in stages:
            log(f"# ---- {stage.name}" + (f" (array of {len(stage.args)})" if stage.array
                                           else ""))
            log(sbatch_preview(stage, profile, str(folder), python=sys.executable,
                               code=str(folder / "code-TIMESTAMP") if snapshot else None))
        return {}
    import submitit

    folder.mkdir(parents=True, exist_ok=True)
    code = None
    if snapshot and executor != "debug":  # debug runs in this process: nothing to snapshot
        code = _snapshot_training_files(stages, folder)
        log(f"code snapshot: {code}")
    earlier = earlier_record(folder, executor)
    ids: dict[str, list[str]] = dict(earlier.get("jobs", {}))
    record = {"run": run_name, "executor": executor, "folder": str(folder),
              "code": str(code) if code else None,
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": ids,
              # a later submission for the same run (`shg submit ae`) joins the earlier ones
              "after": {**earlier.get("after", {}), **{s.name: s.after for s in stages}},
              "labels": {**earlier.get("labels", {}),
                         **{s.name: s.labels for s in stages if s.labels}},
              # where each training job trains: `shg submit status` shows how far it is
              "runs": {**earlier.get("runs", {}),
                       **{s.name: [getattr(fn, "run_dir", None) for fn in s.callables()]
                          for s in stages if s.training}}}
    handles: dict[str, list] = {}
    for stage in stages:
        ex = submitit.AutoExecutor(folder=f"{folder}/%j", cluster=executor)
        if executor != "slurm":  # no scheduler to wait for us: wait here
            _wait_locally([j for dep in stage.after for j in handles[dep]],
                          raise_failed=stage.after_kind == "afterok")
        ex.update_parameters(**executor_parameters(stage, profile, executor, ids,
                                                   str(code) if code else None))
        if stage.array:
            jobs = ex.map_array(_call, stage.callables(), stage.args)
        else:
            jobs = [ex.submit(stage.callables()[0], *stage.args[0])]
        handles[stage.name] = jobs
        ids[stage.name] = [j.job_id for j in jobs]
        # written after each stage: what was queued is on record even if a later stage fails
        # to submit, and a local job reading the record sees its own stage
        write_record(folder, record)
        log(f"{stage.name:<12} submitted: {', '.join(ids[stage.name])}")
    if executor != "slurm":
        failed = []
        for stage in stages:
            failed += _wait_locally(handles[stage.name], raise_failed=not stage.may_fail,
                                    names=stage.labels or [stage.name] * len(stage.args))
        if executor == "debug":  # ran in this process: no file of theirs tells status
            gone = {job_id for _, job_id in failed}
            record["outcomes"] = {**earlier.get("outcomes", {}), **{
                j: "FAILED" if j in gone else "COMPLETED" for s in stages for j in ids[s.name]}}
            write_record(folder, record)
        log("all stages finished" + (f"; failed (see the report): "
                                     f"{', '.join(name for name, _ in failed)}"
                                     if failed else ""))
    return {"ids": ids, "handles": handles, "record": record, "folder": folder}


def _wait_locally(jobs: list, raise_failed: bool, names: list[str] = ()
                  ) -> list[tuple[str, str]]:
    """Wait for jobs run on this machine; re-raise a failure with the job's own error, or
    return (name, job id) of the failed ones."""
    failed = []
    for i, job in enumerate(jobs):
        try:
            job.results()
        except Exception:  # submitit re-raises the job's error (FailedJobState)
            if raise_failed:
                raise
            failed.append((names[i] if i < len(names) else job.job_id, job.job_id))
    return failed


def _call(fn: Callable, args: tuple) -> Any:
    return fn(*args)
