"""Fault injection for the exact-resume tests, read once when training starts.

    SHG_FAULT=step:N   SIGKILL this process right after optimizer step N
    SHG_FAULT=save:N   SIGKILL it inside the save of step N (all files written, not renamed)
    SHG_FAULT=nan:N    make step N's loss NaN (the divergence stop)
    SHG_FAULT=enospc:N         the write of checkpoint N fails with ENOSPC (a full disk)
    SHG_FAULT=enospc-best:N    the write of best/ at step N fails with ENOSPC
    SHG_FAULT=enospc-best_by_loss:N    the same for best_by_loss/
    SHG_FAULT=hold:N   after step N (and its save, if one is due), wait until a stop signal
                       arrives: a test then stops a run at a known step instead of racing it.
                       Once per run directory (RUN/.fault-hold-N marks it): a requeued job
                       that inherits the variable but starts over does not hold again.

Several at once are separated by commas (`SHG_FAULT=nan:1,hold:5`). A resumed run given
`nan:1` proves it resumed: a run that started over would diverge at its first step.
A malformed SHG_FAULT is an error, so a typo in a test cannot silently inject nothing.
Nothing else in the toolkit reads SHG_FAULT; the loop and the checkpointer only ask here.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import time
from pathlib import Path

from ..errors import UserError

KINDS = ("step", "save", "nan", "enospc", "enospc-best", "enospc-best_by_loss", "hold")
_plan: frozenset[tuple[str, int]] = frozenset()


def parse(spec: str) -> frozenset[tuple[str, int]]:
    """{(kind, step), ...} of a SHG_FAULT value ("" = none)."""
    plan = set()
    for item in filter(None, (part.strip() for part in spec.split(","))):
        kind, _, step = item.partition(":")
        if kind not in KINDS or not step.isdigit():
            raise UserError(f"SHG_FAULT={spec!r}: {item!r} is not KIND:STEP with KIND one of "
                            f"{', '.join(KINDS)}")
        plan.add((kind, int(step)))
    return frozenset(plan)


def arm(spec: str | None = None) -> None:
    """Read the plan (from SHG_FAULT unless given); called once at the start of training."""
    global _plan
    _plan = parse(os.environ.get("SHG_FAULT", "") if spec is None else spec)


def kill_if(where: str, step: int) -> None:
    if (where, step) in _plan:
        os.kill(os.getpid(), signal.SIGKILL)


def nan_at(step: int) -> bool:
    return ("nan", step) in _plan


def fail_write(what: str, step: int) -> None:
    """`what` = "checkpoint", "best" or "best_by_loss" (the directory being written)."""
    if ("enospc" if what == "checkpoint" else f"enospc-{what}", step) in _plan:
        raise OSError(errno.ENOSPC, "No space left on device (SHG_FAULT)")


def hold_if(step: int, signals, run_dir: Path) -> None:
    """hold:N: after step N, wait until `signals` (the run's StopSignals) has received one."""
    marker = Path(run_dir) / f".fault-hold-{step}"
    if ("hold", step) not in _plan or marker.exists():
        return
    logging.getLogger(__name__).info("SHG_FAULT: holding after step %d until a stop signal",
                                     step)
    while signals.received is None:
        time.sleep(0.02)
    try:
        marker.touch()
    except OSError:  # several ranks may race to create it: one is enough
        pass
