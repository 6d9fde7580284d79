"""What the training tests share: the tiny settings, training in this process or in a new one,
and the checks that prove a rerun resumed.

Training here (`train_here`) is the library call every launcher makes (`shg.training.run`),
without a new interpreter; a new process (`train_process`) is for what needs one: a SIGKILL,
a stop signal, several ranks.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

CONFIG = "configs/tiny.toml"
TINY = ["model.stacks=2", "model.features=16", "train.batch_size=2", "data.num_workers=0",
        "data.shuffle_buffer=8", "eval.max_samples=8", "eval.batch_size=8",
        "optim.lr=0.002", "train.log_every=1", "train.deterministic=true"]
"""2 stacks x 16 features, batch 2, loading in the training process, bit-exact reruns."""
COMMON = ["train.max_steps=6", "eval.every_steps=2", "checkpoint.every_steps=2",
          "checkpoint.keep=3"]
"""The reference run's schedule: checkpoints and validations at steps 2, 4 and 6."""
STARTED_OVER = "nan:1"
"""The fault a rerun that must resume is given: a run that started over would diverge at its
first step (exit 3), so its weights could not come from starting over."""


def overrides(shards, run, *extra) -> list[str]:
    return [f"data.shards={shards}", f"run_dir={run}", *TINY, *extra]


@contextlib.contextmanager
def fault(spec: str):
    """SHG_FAULT=spec while the block runs in this process."""
    old = os.environ.get("SHG_FAULT")
    os.environ["SHG_FAULT"] = spec
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("SHG_FAULT", None)
        else:
            os.environ["SHG_FAULT"] = old


def train_here(shards, run, *extra, faults: str = "", config: str = CONFIG,
               base: list[str] | None = None) -> int:
    """Train in this process, as `shg train` does; returns its exit code. `base` replaces the
    tiny settings (for a run config of its own, e.g. an AE phase)."""
    from shg.config import load_config
    from shg.training import run as run_training

    args = overrides(shards, run, *extra) if base is None else [*base, *extra]
    with fault(faults):
        return run_training(load_config(config, args), hard_exit=False)


def train_process(shards, run, *extra, faults: str = "", check: bool = True, nproc: int = 1,
                  timeout: int = 600) -> subprocess.CompletedProcess:
    """Train in a new process (`shg train --nproc N` for N > 1)."""
    launch = ([sys.executable, "-m", "shg.train"] if nproc == 1 else
              [sys.executable, "-m", "shg.cli", "train", "--nproc", str(nproc)])
    proc = subprocess.run([*launch, "--config", CONFIG, *overrides(shards, run, *extra)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "SHG_FAULT": faults})
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-3000:]}")
    return proc


def start_process(shards, run, *extra, faults: str = "", nproc: int = 1) -> subprocess.Popen:
    """A training process left running (its own session: a test signals the whole group)."""
    launch = ([sys.executable, "-m", "shg.train"] if nproc == 1 else
              [sys.executable, "-m", "shg.cli", "train", "--nproc", str(nproc)])
    return subprocess.Popen([*launch, "--config", CONFIG, *overrides(shards, run, *extra)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, env={**os.environ, "SHG_FAULT": faults})


def metrics(run) -> list[dict]:
    from shg.training.metrics_log import read_metrics

    return read_metrics(Path(run))


def wait_for_step(run, step: int, proc: subprocess.Popen, timeout: float = 120) -> bool:
    """True once RUN/metrics.jsonl has a row of `step` (False if the process ended first)."""
    import time

    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            return False
        if (Path(run) / "metrics.jsonl").exists() and any(
                r.get("step", 0) >= step for r in metrics(run)):
            return True
        time.sleep(0.1)
    return False


def checkpoint(run, step: int) -> Path:
    return Path(run) / "checkpoints" / f"step-{step:08d}"


def weights(run, step: int) -> dict:
    from shg.weights import load_weights

    return load_weights(checkpoint(run, step))[0]


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def state(run, step: int) -> dict:
    return json.loads((checkpoint(run, step) / "state.json").read_text())


def assert_resumed(run, step: int, output: str, point: Path | None = None) -> None:
    """The last start of `run` resumed from checkpoint `step` (`point`: another run's): it said
    so, its metrics log records it, and it trained on from there, not from the start."""
    point = point or checkpoint(run, step)
    assert f"resumed from {point} at step {step}" in output, output[-2000:]
    rows = metrics(run)
    starts = [i for i, r in enumerate(rows) if r.get("event") == "resumed"]
    assert starts, "no resumption in metrics.jsonl"
    event = rows[starts[-1]]
    assert (event["step"], event["from"]) == (step, str(point)), event
    after = [r["step"] for r in rows[starts[-1] + 1:] if "loss" in r]
    assert after and after[0] == step + 1, after[:3]


def kill_and_resume(shards, tmp_path, common: list[str], *, kill_at: int, resumes_from: int,
                    final: int, capsys) -> tuple[Path, Path]:
    """The exact-resume check: `common` trained uninterrupted (tmp_path/ref) and in a process
    SIGKILLed at step `kill_at`, then rerun (tmp_path/killed). Asserts the rerun resumed from
    the checkpoint of step `resumes_from` and ends with the reference's weights at `final`.
    Returns (ref, killed)."""
    import signal

    ref, run = tmp_path / "ref", tmp_path / "killed"
    assert train_here(shards, ref, *common) == 0
    assert train_process(shards, run, *common, faults=f"step:{kill_at}",
                         check=False).returncode == -signal.SIGKILL
    capsys.readouterr()
    assert train_here(shards, run, *common, faults=STARTED_OVER) == 0
    assert_resumed(run, resumes_from, capsys.readouterr().out)
    assert same(weights(run, final), weights(ref, final))
    return ref, run


def run_cli(*args: str, env: dict | None = None, timeout: int = 600
            ) -> subprocess.CompletedProcess:
    """`python -m shg.cli ARGS` in a new process."""
    return subprocess.run([sys.executable, "-m", "shg.cli", *args], capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})
