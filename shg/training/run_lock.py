"""RUN/LOCK: one trainer per run directory.

A resubmitted job that starts on a run still being trained would write over it. The first
trainer creates RUN/LOCK with O_CREAT|O_EXCL - an atomic create on local disks and on NFS
(v3 and later), Lustre and GPFS, unlike flock/fcntl locks, which some NFS set-ups ignore - and
writes who it is (host, pid, Slurm job id). A second trainer reads it and
- refuses, naming the holder, while the holder may still run;
- takes it over with a message when the holder is stale: a dead process on this host, or a
  Slurm job that no longer runs;
- takes it over silently when it is the same Slurm job (a requeued job resumes its run).
The lock is removed when training ends; a killed trainer leaves it behind, stale.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

from shards import atomic

from ..errors import UserError

LOCK = "LOCK"
_ALIVE_STATES = {"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED",
                 "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED"}


class RunInUse(UserError):
    """Another trainer holds this run directory."""


def me() -> dict:
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S")}


def describe(holder: dict) -> str:
    job = f", Slurm job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return (f"host {holder.get('host', '?')}, pid {holder.get('pid', '?')}{job}, since "
            f"{holder.get('started', '?')}")


def slurm_job_state(job_id: str) -> str | None:
    """The job's state from squeue ("" when Slurm no longer lists it), None when unknown."""
    try:
        out = subprocess.run(["squeue", "-h", "-j", job_id, "-o", "%T"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        # squeue fails for a job id it has forgotten: that job does not run
        return "" if "Invalid job id" in out.stderr else None
    return out.stdout.strip().splitlines()[0] if out.stdout.strip() else ""


def stale_reason(holder: dict, job_state=slurm_job_state) -> str | None:
    """Why the holder can no longer be training (None: it may be)."""
    if holder.get("host") == socket.gethostname():
        try:
            os.kill(int(holder["pid"]), 0)
        except ProcessLookupError:
            return f"its process {holder['pid']} is gone"
        except (PermissionError, KeyError, ValueError, TypeError):
            pass
        else:
            return None
    job = holder.get("slurm_job_id")
    if job:
        state = job_state(str(job))
        if state == "":
            return f"Slurm job {job} is no longer listed"
        if state is not None and state.split()[0] not in _ALIVE_STATES:
            return f"Slurm job {job} is {state}"
    return None


def acquire(run_dir: Path, log=print, job_state=slurm_job_state) -> dict:
    """Take RUN/LOCK for this process, or raise RunInUse naming its holder."""
    run_dir.mkdir(parents=True, exist_ok=True)
    path = run_dir / LOCK
    mine = me()
    for _ in range(3):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            holder = _read(path)
            if holder is None:  # released meanwhile: try the create again
                continue
        else:
            with os.fdopen(fd, "w") as f:
                json.dump(mine, f)
            return mine
        same_job = mine["slurm_job_id"] and holder.get("slurm_job_id") == mine["slurm_job_id"]
        if not same_job:
            reason = stale_reason(holder, job_state)
            if reason is None:
                raise RunInUse(
                    f"{run_dir} is being trained by another process ({describe(holder)}); "
                    f"wait for it, or use another run_dir. If that process is gone for sure, "
                    f"delete {path}")
            log(f"shg train: taking over {run_dir} from {describe(holder)}: {reason}",
                flush=True)
        atomic.write_json(path, mine)
        return mine
    raise RunInUse(f"{path}: other trainers keep taking and releasing it; try again")


def release(run_dir: Path, mine: dict) -> None:
    """Remove RUN/LOCK if it is still this process's."""
    path = run_dir / LOCK
    if _read(path) == mine:
        path.unlink(missing_ok=True)


def _read(path: Path) -> dict | None:
    """The holder recorded in LOCK; None when there is no LOCK."""
    for _ in range(3):  # the holder may be between its create and its write
        try:
            holder = json.loads(path.read_text())
            if isinstance(holder, dict):
                return holder
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    return {"host": "?", "pid": "?", "started": "? (unreadable LOCK file)"}
