"""Fault injection for the exact-resume tests, read once when training starts.

    SHG_FAULT=step:N   SIGKILL this process right after optimizer step N
    SHG_FAULT=save:N   SIGKILL it inside the save of step N (all files written, not renamed)
    SHG_FAULT=nan:N    make step N's loss NaN (the divergence stop)
    SHG_FAULT=enospc:N         the write of checkpoint N fails with ENOSPC (a full disk)
    SHG_FAULT=enospc-best:N    the write of best/ at step N fails with ENOSPC

Nothing else in the toolkit reads SHG_FAULT; the loop and the checkpointer only ask here.
"""

from __future__ import annotations

import errno
import os
import signal

_plan: tuple[str, int] | None = None


def arm(spec: str | None = None) -> None:
    """Read the plan (from SHG_FAULT unless given); called once at the start of training."""
    global _plan
    spec = os.environ.get("SHG_FAULT", "") if spec is None else spec
    where, _, step = spec.partition(":")
    kinds = ("step", "save", "nan", "enospc", "enospc-best")
    _plan = (where, int(step)) if where in kinds and step.isdigit() else None


def kill_if(where: str, step: int) -> None:
    if _plan == (where, step):
        os.kill(os.getpid(), signal.SIGKILL)


def nan_at(step: int) -> bool:
    return _plan == ("nan", step)


def fail_write(what: str, step: int) -> None:
    """`what` = "save" (a checkpoint) or "best"."""
    if _plan == ({"save": "enospc", "best": "enospc-best"}[what], step):
        raise OSError(errno.ENOSPC, "No space left on device (SHG_FAULT)")
