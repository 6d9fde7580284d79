"""`--nproc N` on one machine: N processes with the distributed environment set, as srun would.

Unlike torchrun, the parent forwards Slurm's warning signals (USR2, TERM) to the workers
instead of dying from them, so a stop signal reaches every rank, which then save a checkpoint
collectively (see shg/training/trainer.py). If one worker fails the others are stopped.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from ..errors import EXIT_REQUEUE
from .distributed import free_port


def train_processes(train_args: list[str], nproc: int = 1) -> int:
    """`python -m shg.train TRAIN_ARGS` in `nproc` new processes on this machine; its exit code.
    The run must then have exactly that many ranks (distributed.expect_processes)."""
    args = ["-m", "shg.train", *train_args, f"distributed.expect_processes={nproc}"]
    if nproc == 1:
        return subprocess.call([sys.executable, *args])
    return run_local(args, nproc)


def run_local(python_args: list[str], nproc: int) -> int:
    # (no torch here: this parent only starts and watches; each rank finds its device itself)
    port = free_port()
    base = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc))
    base.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    workers = [subprocess.Popen([sys.executable, *python_args],
                                env={**base, "RANK": str(r), "LOCAL_RANK": str(r)})
               for r in range(nproc)]

    def forward(signum, frame):
        for w in workers:
            if w.poll() is None:
                w.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGUSR2, signal.SIGTERM)}
    try:
        while True:
            codes = [w.poll() for w in workers]
            failed = [c for c in codes if c not in (None, 0, EXIT_REQUEUE)]
            if failed:
                for w in workers:
                    if w.poll() is None:
                        w.terminate()
                for w in workers:
                    w.wait()
                return failed[0] if failed[0] > 0 else 1
            if all(c is not None for c in codes):
                return EXIT_REQUEUE if EXIT_REQUEUE in codes else 0
            time.sleep(0.1)
    except KeyboardInterrupt:
        for w in workers:
            w.terminate()
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
