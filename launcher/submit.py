"""`shg submit ...`: queue the pipeline's stages as Slurm jobs through submitit.

    shg submit pipeline --profile slurm/profiles/local.toml --coco DATA --shards SHARDS \
        --config configs/tiny.toml --run RUN [--ae] [--executor slurm|local|debug] [--dry-run] \
        [k=v ...]
    shg submit ae --profile P --run RUN [k=v ...]      # the bottleneck-AE phases of a trained run
    shg submit status FOLDER

Stages and dependencies: prepare (a job array building shards, both splits) -> finalize
(afterok) -> train (afterok; nodes x tasks_per_node ranks) -> eval and analyze (afterok on
train); with --ae also ae-train -> ae-finetune, ae-baseline -> ae-compare. On Slurm a job whose
dependency failed is cancelled (--kill-on-invalid-dep), not left pending for ever. `slurm`
returns at once; `local` (processes on this machine) and `debug` (in this process) run the
stages in order. `--dry-run` prints the sbatch scripts and submits nothing.

Code snapshot: the packages, the training config and the DeepSpeed JSON are copied into
FOLDER/RUN/code-TIMESTAMP/ and the jobs start there (cd + PYTHONPATH), so queued and requeued jobs
run the code and config they were submitted with, whatever happens to the checkout meanwhile.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .profile import Profile

SPLITS = ("train2017", "val2017")
PACKAGES = ("shg", "launcher", "shards")
ALL_STAGES = ("prepare", "train", "eval", "analyze")


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
                    which: tuple[str, ...] = ALL_STAGES) -> list[Stage]:
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
        train_overrides = [f"data.shards={shards}", f"run_dir={run}",
                           *profile.training_overrides(), *overrides]
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
    if "ae" in which:
        stages += ae_stages(run, [o for o in overrides if not o.startswith("run_dir=")],
                            profile, after=after_train)
    return stages


def ae_stages(run: str, overrides: list[str], profile: Profile,
              after: list[str] = ()) -> list[Stage]:
    """The autoencoder study of a trained SHG run as training jobs: phase 1 (AE on the frozen
    SHG's latents), phase 2 (fine-tune both) and the baseline that continues the plain SHG for
    the same steps, then the comparison table. Each phase reads RUN/config.toml when it starts,
    so this can be queued behind the SHG's own training job."""
    from shg.ae_jobs import phase_overrides

    from . import jobs

    stages = []
    outs = {}
    for phase, name, deps in (("train", "ae-train", list(after)),
                              ("finetune", "ae-finetune", ["ae-train"]),
                              ("baseline", "ae-baseline", list(after))):
        out, phase_args = phase_overrides(phase, run)
        outs[phase] = out
        stages.append(Stage(name, jobs.TrainJob(f"{run}/config.toml",
                                                ["checkpoint.resume=auto", *phase_args,
                                                 *profile.training_overrides(), *overrides],
                                                profile.max_requeues), [()], training=True,
                            after=deps))
    stages.append(Stage("ae-compare", jobs.ae_compare,
                        [(run, outs["baseline"], outs["finetune"], f"{run}-ae-compare")],
                        gpu=False, after=["ae-finetune", "ae-baseline"]))
    return stages


def _parameters(stage: Stage, profile: Profile) -> dict:
    params = profile.slurm_parameters(training=stage.training)
    if not stage.gpu:
        params.pop("gpus_per_node", None)
    return params


def _dependency(after: list[str], ids: dict[str, list[str]] | None = None) -> dict:
    """submitit's slurm_* parameters making a job wait for the stages `after` (placeholders
    such as <train> in a preview)."""
    if not after:
        return {}
    deps = [i.split("_")[0] for d in after for i in ids[d]] if ids else [f"<{a}>" for a in after]
    # Without kill-on-invalid-dep a job whose dependency failed stays PENDING for ever.
    return {"slurm_dependency": "afterok:" + ":".join(dict.fromkeys(deps)),
            "slurm_additional_parameters": {"kill_on_invalid_dep": "yes"}}


def _snapshot_lines(code: str) -> list[str]:
    # `python -m` puts the working directory first on sys.path: starting in the snapshot (not
    # in the checkout the user submitted from) is what makes the copy win; PYTHONPATH carries it
    # to subprocesses that change directory.
    return [f"cd {shlex.quote(code)}",
            f"export PYTHONPATH={shlex.quote(code)}${{PYTHONPATH:+:$PYTHONPATH}}"]


def sbatch_preview(stage: Stage, profile: Profile, folder: str, python: str = "python",
                   code: str | None = None) -> str:
    """The sbatch script submitit would write for this stage (no Slurm needed)."""
    import submitit
    from submitit.slurm.slurm import _convert_mem, _make_sbatch_string

    params = {**_parameters(stage, profile), **_dependency(stage.after)}
    if code:
        params["slurm_setup"] = [*params.get("slurm_setup", []), *_snapshot_lines(code)]
    generic = {k: v for k, v in params.items() if not k.startswith("slurm_")}
    generic["name"] = f"shg-{stage.name}"
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
    tmp = folder / f".{dest.name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    for pkg in PACKAGES:
        src = Path(importlib.import_module(pkg).__file__).parent
        shutil.copytree(src, tmp / pkg, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    copies = {}
    for i, file in enumerate(dict.fromkeys(files)):
        sub = tmp / "configs" / (str(i) if i else "")  # two configs may share a name
        sub.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, sub / Path(file).name)
        copies[file] = str(dest / (sub / Path(file).name).relative_to(tmp))
    os.replace(tmp, dest)  # a snapshot is complete or absent
    return dest, copies


def _snapshot_training_files(stages: list[Stage], folder: Path) -> Path:
    """Snapshot, then point the training jobs at the copies of their config and DeepSpeed JSON
    (a run's own config.toml, read by the AE phases, is an output: not copied)."""
    files = []
    for stage in stages:
        if stage.training:
            if stage.name == "train":
                files.append(stage.fn.config)
            files += [o.split("=", 1)[1] for o in stage.fn.overrides
                      if o.startswith("distributed.deepspeed_config=") and o.split("=", 1)[1]]
    code, copies = snapshot_code(folder, files)
    for stage in stages:
        if stage.training:
            stage.fn.config = copies.get(stage.fn.config, stage.fn.config)
            stage.fn.overrides = [
                f"{o.split('=', 1)[0]}={copies[o.split('=', 1)[1]]}"
                if o.startswith("distributed.deepspeed_config=") and o.split("=", 1)[1] in copies
                else o for o in stage.fn.overrides]
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
    earlier = _earlier_record(folder, executor)
    ids: dict[str, list[str]] = dict(earlier.get("jobs", {}))
    handles: dict[str, list] = {}
    for stage in stages:
        ex = submitit.AutoExecutor(folder=f"{folder}/%j", cluster=executor)
        params = _parameters(stage, profile)
        if executor != "slurm":
            params = {k: v for k, v in params.items() if not k.startswith("slurm_")}
            params.pop("nodes", None)
            if code and executor == "local":
                params["local_setup"] = _snapshot_lines(str(code))
            for dep in stage.after:  # no scheduler to wait for us: wait here
                for job in handles[dep]:
                    job.results()
        else:
            if code:
                params["slurm_setup"] = [*params.get("slurm_setup", []),
                                         *_snapshot_lines(str(code))]
            params.update(_dependency(stage.after, ids))
        ex.update_parameters(name=f"shg-{stage.name}", **params)
        if stage.array:
            jobs = ex.map_array(_call, [stage.fn] * len(stage.args), stage.args)
        else:
            jobs = [ex.submit(stage.fn, *stage.args[0])]
        handles[stage.name] = jobs
        ids[stage.name] = [j.job_id for j in jobs]
        log(f"{stage.name:<12} submitted: {', '.join(ids[stage.name])}")
    record = {"run": run_name, "executor": executor, "folder": str(folder),
              "code": str(code) if code else None,
              "submitted": time.strftime("%Y-%m-%dT%H:%M:%S"), "jobs": ids,
              # a later submission for the same run (`shg submit ae`) joins the earlier ones
              "after": {**earlier.get("after", {}), **{s.name: s.after for s in stages}}}
    name = "pipeline.json"
    tmp = folder / f".{name}.tmp"
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, folder / name)
    if executor != "slurm":
        for stage in stages:
            for job in handles[stage.name]:
                job.results()  # raises with the job's own error if it failed
        log("all stages finished")
    return {"ids": ids, "handles": handles, "record": record, "folder": folder}


def _earlier_record(folder: Path, executor: str) -> dict:
    """What an earlier submission for this run recorded (same executor), or {}."""
    path = folder / "pipeline.json"
    if not path.is_file():
        return {}
    old = json.loads(path.read_text())
    return old if old.get("executor") == executor else {}


def training_still_to_finish(profile: Profile, run_name: str) -> bool:
    """For `shg submit ae` on Slurm: True when this run's training job (from an earlier
    `shg submit`) is queued or running, so the AE jobs must wait for it; raises if it failed."""
    train = _earlier_record(profile.job_folder() / run_name, "slurm").get("jobs", {}).get("train")
    if not train:
        return False
    info = {**_squeue(train), **_sacct(train)}.get(train[0], {})
    state = info.get("state", "UNKNOWN")
    if state in _BAD:
        raise RuntimeError(f"training job {train[0]} of {run_name} is {state}: see `shg submit "
                           f"status {profile.job_folder() / run_name}`")
    return state not in ("COMPLETED", "UNKNOWN")


def _call(fn: Callable, args: tuple) -> Any:
    return fn(*args)


# ---------------------------------------------------------------------------------- status

_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit))(: .*)?$")


def _last_error(path: Path) -> str:
    """The last `SomeError: message` line of a job's log: the reason a person wants to read."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in reversed(lines):
        line = line.strip()
        if _ERROR_LINE.match(line) and not line.startswith("submitit.core.utils.FailedJobState"):
            return line[:200]
    return ""


def _sacct(job_ids: list[str]) -> dict[str, dict]:
    """State, exit code, start, elapsed time and requeue count per job (array task) id from one
    sacct call; {} when sacct cannot answer (no accounting)."""
    bases = sorted({j.split("_")[0] for j in job_ids})
    rows: dict[str, dict] = {}
    for line in _run(["sacct", "-X", "-D", "-P", "-n", "-o",
                      "JobID,State,ExitCode,Start,Elapsed", "-j", ",".join(bases)]):
        parts = line.split("|")
        if len(parts) < 5:
            continue
        job_id, state, exit_code, start, elapsed = parts[:5]
        previous = rows.get(job_id)
        requeues = previous["requeues"] + 1 if previous else 0  # -D: one row per start
        rows[job_id] = {"state": state.split()[0], "exit": exit_code, "elapsed": elapsed,
                        "started": start not in ("None", "Unknown", ""), "requeues": requeues}
    return _spread_arrays(rows, job_ids)


def _squeue(job_ids: list[str]) -> dict[str, dict]:
    """State and reason (DependencyNeverSatisfied, Priority, ...) for the jobs slurmctld still
    remembers (MinJobAge): sacct has no such reason."""
    rows = {}
    for line in _run(["squeue", "-h", "-t", "all", "-o", "%i|%T|%r", "-j",
                      ",".join(sorted({j.split("_")[0] for j in job_ids}))]):
        parts = line.split("|")
        if len(parts) == 3:
            rows[parts[0]] = {"state": parts[1], "reason": parts[2]}
    return _spread_arrays(rows, job_ids)


def _spread_arrays(rows: dict[str, dict], job_ids: list[str]) -> dict[str, dict]:
    # an array that has not started is one row such as 5_[0-2%3]: it speaks for its tasks
    for key in [k for k in rows if "[" in k]:
        base = key.split("_")[0]
        for job_id in job_ids:
            if job_id.startswith(base + "_") and job_id not in rows:
                rows[job_id] = rows[key]
    return rows


def _run(cmd: list[str]) -> list[str]:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return out.stdout.splitlines() if out.returncode == 0 else []


_BAD = ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "CANCELLED", "BOOT_FAIL",
        "DEADLINE", "PREEMPTED")


def status(folder: str, log=print) -> list[dict]:
    """One line per job of a submitted pipeline: state, elapsed time, requeues and, when a job
    failed or never ran, why."""
    import submitit

    path = Path(folder) / "pipeline.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; give the folder `shg submit` printed "
                                "(the profile's folder / the run's name)")
    record = json.loads(path.read_text())
    all_ids = [i for ids in record["jobs"].values() for i in ids]
    slurm = record["executor"] == "slurm"
    acct = _sacct(all_ids) if slurm else {}
    queue = _squeue(all_ids) if slurm else {}
    rows = []
    for stage, ids in record["jobs"].items():
        for job_id in ids:
            cls = submitit.SlurmJob if slurm else submitit.LocalJob
            job = cls(folder=f"{record['folder']}/%j", job_id=job_id)
            a, q = acct.get(job_id, {}), queue.get(job_id, {})
            state = a.get("state") or q.get("state") or job.state
            row = {"stage": stage, "job_id": job_id, "state": state,
                   "elapsed": a.get("elapsed", ""), "requeues": a.get("requeues", 0), "why": ""}
            reason = q.get("reason", "")
            if reason.startswith("Dependency") and state != "PENDING" or (
                    state == "CANCELLED" and a and not a["started"]
                    and record.get("after", {}).get(stage)):
                row["why"] = "never ran: a job it depends on failed"
            elif state in _BAD or state.startswith("CANCELLED"):
                why = _last_error(Path(job.paths.stderr))
                if a.get("exit") not in (None, "", "0:0"):
                    why = f"exit {a['exit']}" + (f": {why}" if why else "")
                row["why"] = why or (reason if reason != "None" else "")
            elif state == "PENDING" and reason not in ("None", ""):
                row["why"] = reason
            rows.append(row)
    after = record.get("after", {})

    def upstream(stage: str, seen: set) -> set:
        for dep in after.get(stage, []):
            if dep not in seen:
                seen.add(dep)
                upstream(dep, seen)
        return seen

    for row in rows:  # name the failed jobs up the chain a job that never ran waited for
        if row["why"].startswith("never ran"):
            deps = upstream(row["stage"], set())
            culprits = [f"{r['stage']} {r['job_id']}" for r in rows
                        if r["stage"] in deps and r["state"] in _BAD
                        and not r["why"].startswith("never ran")]
            if culprits:
                row["why"] += (f" ({', '.join(culprits[:3])}"
                               f"{', ...' if len(culprits) > 3 else ''})")
    log(f"{'stage':<12}{'job':<12}{'state':<11}{'elapsed':<10}{'requeues':<9}why")
    for r in rows:
        log(f"{r['stage']:<12}{r['job_id']:<12}{r['state']:<11}{r['elapsed']:<10}"
            f"{r['requeues']:<9}{r['why']}")
    return rows
