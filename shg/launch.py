"""`--nproc N` on one machine: N processes with the distributed environment set, as srun would.

Unlike torchrun, the parent forwards Slurm's warning signals (USR2, TERM) to the workers
instead of dying from them, so a stop signal reaches every rank, which then save a checkpoint
collectively (see shg.train). If one worker fails the others are stopped.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_local(python_args: list[str], nproc: int) -> int:
    import torch

    port = free_port()
    base = dict(os.environ, MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                WORLD_SIZE=str(nproc), LOCAL_WORLD_SIZE=str(nproc),
                SHG_EXPECT_PROCESSES=str(nproc))
    if not torch.cuda.is_available():
        base["ACCELERATE_USE_CPU"] = "true"
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
            failed = [c for c in codes if c not in (None, 0, 75)]
            if failed:
                for w in workers:
                    if w.poll() is None:
                        w.terminate()
                for w in workers:
                    w.wait()
                return failed[0] if failed[0] > 0 else 1
            if all(c is not None for c in codes):
                return 75 if 75 in codes else 0
            time.sleep(0.1)
    except KeyboardInterrupt:
        for w in workers:
            w.terminate()
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
