"""`shg submit status FOLDER`: one line per job of a submitted pipeline (state, elapsed time,
requeues and, when a job failed or never ran, why), from sacct, squeue and the job logs."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

from shg.errors import UserError

from .profile import Profile
from .records import earlier_record

_ERROR_LINE = re.compile(r"^([A-Za-z_][\w.]*(Error|Exception|Interrupt|Exit))(: .*)?$")
_SHG_ERROR = re.compile(r"^shg [\w -]+: error: ")


def _last_error(path: Path) -> str:
    """The reason a person wants to read in a job's log: our own one-line error (`shg train:
    error: ...`) when there is one, else the last `SomeError: message` line."""
    try:
        lines = [line.strip() for line in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    for pattern in (_SHG_ERROR, _ERROR_LINE):
        for line in reversed(lines):
            if pattern.match(line) and not line.startswith("submitit.core.utils.FailedJobState"):
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
    record = _pipeline_record(folder)
    rows = job_rows(record)
    name_blockers(rows, record.get("after", {}))
    for line in status_table(rows):
        log(line)
    return rows


def _pipeline_record(folder: str) -> dict:
    path = Path(folder) / "pipeline.json"
    if not path.is_file():
        raise UserError(f"{path}: not found; give the folder `shg submit` printed "
                        "(the profile's folder / the run's name)")
    return json.loads(path.read_text())


def job_rows(record: dict) -> list[dict]:
    """A row per job of the pipeline record (stage, job_id, state, variant, elapsed, requeues,
    why; progress for a training job that has started) from one sacct and one squeue call (on
    Slurm) or submitit's view of local jobs, and the runs' own directories."""
    import submitit

    all_ids = [i for ids in record["jobs"].values() for i in ids]
    slurm = record["executor"] == "slurm"
    acct = _sacct(all_ids) if slurm else {}
    queue = _squeue(all_ids) if slurm else {}
    labels = record.get("labels", {})
    rows = []
    for stage, ids in record["jobs"].items():
        for index, job_id in enumerate(ids):
            cls = submitit.SlurmJob if slurm else submitit.LocalJob
            job = cls(folder=f"{record['folder']}/%j", job_id=job_id)
            a, q = acct.get(job_id, {}), queue.get(job_id, {})
            state = a.get("state") or q.get("state") or (
                job.state if slurm else
                record.get("outcomes", {}).get(job_id) or _local_state(job))
            names = labels.get(stage) or []
            row = {"stage": stage, "job_id": job_id, "state": state,
                   "variant": names[index] if index < len(names) else "",
                   "elapsed": a.get("elapsed", ""), "requeues": a.get("requeues", 0),
                   "why": _why(state, a, q, bool(record.get("after", {}).get(stage)), job)}
            runs = record.get("runs", {}).get(stage) or []
            if index < len(runs) and runs[index] and state not in ("PENDING",):
                from shg.run_status import run_progress

                progress = run_progress(runs[index])
                if progress.state != "not started":
                    row["progress"] = progress.line()
                    row["why"] = "; ".join(x for x in (row["why"], row["progress"]) if x)
            rows.append(row)
    return rows


NEVER_RAN = "never ran: a job it depends on failed"


def _why(state: str, acct: dict, queue: dict, has_dependencies: bool, job) -> str:
    """Why a job failed, waits or never ran: a dependency that failed, its exit code and the
    error in its log, or Slurm's reason for keeping it pending ("" when there is nothing to
    say)."""
    reason = queue.get("reason", "")
    if reason.startswith("Dependency") and state != "PENDING" or (
            state == "CANCELLED" and acct and not acct["started"] and has_dependencies):
        return NEVER_RAN
    if state in _BAD or state.startswith("CANCELLED"):
        why = _last_error(Path(job.paths.stderr))
        if acct.get("exit") not in (None, "", "0:0"):
            why = f"exit {acct['exit']}" + (f": {why}" if why else "")
        return why or (reason if reason != "None" else "")
    if state == "PENDING" and reason not in ("None", ""):
        return reason
    return ""


def name_blockers(rows: list[dict], after: dict[str, list[str]]) -> None:
    """Name, in the why of each job that never ran, the failed jobs up its chain of
    dependencies (`after`: stage -> the stages it waits for); a study's task waits for its own
    variant's jobs only (aftercorr)."""

    def upstream(stage: str, seen: set) -> set:
        for dep in after.get(stage, []):
            if dep not in seen:
                seen.add(dep)
                upstream(dep, seen)
        return seen

    for row in rows:
        if row["why"].startswith("never ran"):
            deps = upstream(row["stage"], set())
            culprits = [f"{r['stage']} {r['job_id']}" for r in rows
                        if r["stage"] in deps and r["state"] in _BAD
                        and not r["why"].startswith("never ran")
                        and (r["variant"] == row["variant"] or not (r["variant"] and
                                                                    row["variant"]))]
            if culprits:
                row["why"] += (f" ({', '.join(culprits[:3])}"
                               f"{', ...' if len(culprits) > 3 else ''})")


def status_table(rows: list[dict]) -> list[str]:
    """The rows as a table: a header and a line per job (the variant column only when a job has
    one)."""
    width = max([len("variant")] + [len(r["variant"]) for r in rows]) \
        if any(r["variant"] for r in rows) else 0
    variant = (lambda r: f"{r['variant']:<{width + 2}}") if width else (lambda r: "")
    job = max([10] + [len(r["job_id"]) for r in rows]) + 2  # debug ids are long
    lines = [f"{'stage':<12}{'job':<{job}}" + (f"{'variant':<{width + 2}}" if width else "")
             + f"{'state':<11}{'elapsed':<10}{'requeues':<9}why / progress"]
    for r in rows:
        lines.append(f"{r['stage']:<12}{r['job_id']:<{job}}{variant(r)}{r['state']:<11}"
                     f"{r['elapsed']:<10}{r['requeues']:<9}{r['why']}")
    return lines


def _local_state(job) -> str:
    """A job run on this machine: submitit says FINISHED whether it succeeded or raised; its
    result file tells which."""
    state = job.state
    if state != "FINISHED":
        return state
    try:
        outcome, _ = job._get_outcome_and_result()
    except Exception:  # an unreadable result: say what submitit says
        return state
    return "COMPLETED" if outcome == "success" else "FAILED"


def training_still_to_finish(profile: Profile, run_name: str) -> bool:
    """For `shg submit ae` on Slurm: True when this run's training job (from an earlier
    `shg submit`) is queued or running, so the AE jobs must wait for it; raises if it failed."""
    train = earlier_record(profile.job_folder() / run_name, "slurm").get("jobs", {}).get("train")
    if not train:
        return False
    info = {**_squeue(train), **_sacct(train)}.get(train[0], {})
    state = info.get("state", "UNKNOWN")
    if state in _BAD:
        raise UserError(f"training job {train[0]} of {run_name} is {state}: see `shg submit "
                           f"status {profile.job_folder() / run_name}`")
    return state not in ("COMPLETED", "UNKNOWN")
