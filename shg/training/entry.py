"""`run(cfg)`: train one run and turn the outcome into the process's exit code. What every
launcher calls: `python -m shg.train`, `shg train`, the Slurm training job."""

from __future__ import annotations

import json
import os
import sys

from ..errors import EXIT_DIVERGED, EXIT_FAILED, EXIT_OK, EXIT_REQUEUE, EXIT_USAGE, \
    USER_ERRORS, loader_worker_died, one_line
from .distributed import end_process_after_deepspeed


def train(cfg) -> dict:
    """Train (or resume) the run `cfg` describes; returns its summary."""
    from .trainer import Trainer

    trainer = Trainer(cfg)
    try:
        with trainer.holding_run():
            return trainer.fit()
    finally:
        trainer.close()


def run(cfg, hard_exit: bool = True) -> int:
    """Train and return the exit code: EXIT_OK, EXIT_REQUEUE (stopped by a signal after
    saving), EXIT_DIVERGED or EXIT_USAGE (a user error, printed as one line). Other errors keep
    their traceback.

    DeepSpeed sometimes aborts at interpreter exit after all work is done, so a DeepSpeed run
    ends the process itself: at once (`hard_exit`), or, for callers that still have work in
    this process (the Slurm job wrapper writes its result), as the last exit handler."""
    from ..logs import setup_logging
    from .trainer import TrainingDiverged

    setup_logging()
    code = EXIT_OK
    try:
        summary = train(cfg)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(summary))
        if summary["stopped_by_signal"]:
            code = EXIT_REQUEUE
    except TrainingDiverged as exc:
        print(f"shg train: {exc}", file=sys.stderr)
        code = EXIT_DIVERGED
    except USER_ERRORS as exc:
        print(f"shg train: error: {one_line(exc)}", file=sys.stderr)
        code = EXIT_USAGE
    except RuntimeError as exc:
        why = loader_worker_died(exc)
        if why is None:
            raise
        print(f"shg train: error: {why}", file=sys.stderr)
        code = EXIT_FAILED
    sys.stdout.flush()
    sys.stderr.flush()
    if cfg.distributed.deepspeed_config:
        if hard_exit:
            os._exit(code)
        end_process_after_deepspeed()
    return code
