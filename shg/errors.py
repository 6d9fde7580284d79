"""User-facing errors and the process exit codes every entry point shares.

A `UserError` (or the data layer's `DataError`) is something the user can fix: the command line
prints its message as one line and exits with EXIT_USAGE. Anything else is a bug or an
environment failure (CUDA, NCCL, a full disk) and keeps its traceback.
"""

from __future__ import annotations

from shards.manifest import DataError

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
"""A user error: bad config, missing file, weights of another model, ..."""
EXIT_DIVERGED = 3
"""The loss became NaN/inf; the last good checkpoint is left intact."""
EXIT_REQUEUE = 75
"""EX_TEMPFAIL: stopped by a stop signal after saving a checkpoint; run again to resume.
(slurm/train.sbatch tests for the same number in shell.)"""


class UserError(Exception):
    """An error whose message alone tells the user what to do (printed as one line)."""


class ConfigError(UserError, ValueError):
    """A config (or profile, or study file) value that cannot work; the message names the key."""


USER_ERRORS = (UserError, DataError)
"""What entry points turn into one line and EXIT_USAGE."""


def one_line(exc: BaseException) -> str:
    """The message of a user error as one line. An error raised in a DataLoader worker arrives
    re-raised with the worker's traceback in its message: keep the original message."""
    text = str(exc)
    if "Original Traceback" in text:
        last = text.rstrip().splitlines()[-1]
        text = last.split(": ", 1)[1] if ": " in last else last
    return " ".join(text.split("\n"))


def loader_worker_died(exc: BaseException) -> str | None:
    """A one-line explanation when `exc` is torch's report of a dead DataLoader worker (the OOM
    killer's usual victim), else None."""
    text = str(exc)
    if isinstance(exc, RuntimeError) and "DataLoader worker" in text and (
            "killed by signal" in text or "exited unexpectedly" in text):
        return (f"a data loader worker died ({text.splitlines()[0]}), most often killed for "
                "lack of memory: lower data.num_workers or data.shuffle_buffer, or give the "
                "job more memory; then run the same command again to resume")
    return None
