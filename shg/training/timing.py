"""Where a run's time goes: per log interval, the wall time per optimizer step, the share spent
waiting for the loader, and the split of the rest into input (host->device copy and device
augmentation), forward+backward and optimizer; checkpoints and validations timed apart.

Nothing here synchronises the host with the GPU per step: the loader wait is host wall time
(the host blocks in the loader's `next`), and on CUDA the phases are CUDA events recorded in
the stream, read once per log row (after the one synchronisation a log row makes). On a CPU
the phases are host wall time (the work is synchronous there).
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field

PHASES = ("input", "compute", "optimizer")


@dataclass
class StepClock:
    cuda: bool = False
    _phases: dict = field(default_factory=lambda: {p: 0.0 for p in PHASES})
    _events: list = field(default_factory=list)
    _wait: float = 0.0
    _steps: int = 0
    _since: float = field(default_factory=time.perf_counter)
    _waiting_from: float | None = None

    # -- the loop marks these ------------------------------------------------------------
    def waiting(self) -> None:
        """The loop is about to ask the loader for a batch."""
        self._waiting_from = time.perf_counter()

    def got_batch(self) -> None:
        if self._waiting_from is not None:
            self._wait += time.perf_counter() - self._waiting_from
            self._waiting_from = None

    @contextlib.contextmanager
    def phase(self, name: str):
        if self.cuda:
            import torch

            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(
                enable_timing=True)
            start.record()
            yield
            end.record()
            self._events.append((name, start, end))
        else:
            t = time.perf_counter()
            yield
            self._phases[name] += time.perf_counter() - t

    def stepped(self) -> None:
        self._steps += 1

    def exclude(self, seconds: float) -> None:
        """Leave out time spent on something timed apart (a validation, a checkpoint)."""
        self._since += seconds

    # -- read at log rows ----------------------------------------------------------------
    def row(self) -> tuple[dict, float, float]:
        """(step_s, data_wait_frac and the phases' seconds per step since the last row; the
        seconds waited for data; the seconds of the phases) - CUDA: synchronises once to read
        the events - and starts a new window."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()
            for name, start, end in self._events:
                self._phases[name] += start.elapsed_time(end) / 1000.0
            self._events.clear()
        now = time.perf_counter()
        wall, steps = max(now - self._since, 1e-9), max(self._steps, 1)
        busy = sum(self._phases.values())
        row = {"step_s": wall / steps, "data_wait_frac": min(1.0, self._wait / wall),
               **{f"{name}_s": self._phases[name] / steps for name in PHASES}}
        if self.cuda:
            import torch

            row["gpu_mem_peak_gb"] = torch.cuda.max_memory_allocated() / 2**30
            torch.cuda.reset_peak_memory_stats()
        waited = self._wait
        self._phases = {p: 0.0 for p in PHASES}
        self._wait, self._steps, self._since = 0.0, 0, now
        return row, waited, busy


@dataclass
class LoaderWatch:
    """Warns once when the loader is the bottleneck: data wait above `threshold` of the step
    time over `window` consecutive log rows."""
    threshold: float
    window: int = 3
    warned: bool = False
    _recent: list = field(default_factory=list)

    def check(self, row: dict, samples_per_step: int, workers: int) -> str | None:
        """The warning to give now (once), or None."""
        if self.warned or self.threshold <= 0:
            return None
        self._recent = (self._recent + [row])[-self.window:]
        if len(self._recent) < self.window or \
                min(r["data_wait_frac"] for r in self._recent) <= self.threshold:
            return None
        self.warned = True
        step = sum(r["step_s"] for r in self._recent) / self.window
        wait = sum(r["data_wait_frac"] for r in self._recent) / self.window
        delivered = samples_per_step / step  # the loader keeps the pace it sets
        needed = samples_per_step / max(step * (1.0 - wait), 1e-9)  # what compute could take
        per_worker = delivered / max(workers, 1)
        advice = max(workers + 1, math.ceil(needed / per_worker)) if workers else 2
        return (f"the data loader is the bottleneck: {wait:.0%} of each step waited for a "
                f"batch over the last {self.window} log intervals; {max(workers, 1)} "
                f"{'worker delivers' if workers else 'main process (data.num_workers=0) delivers'}"
                f" {per_worker:.1f} samples/s each, training could take {needed:.1f}/s: "
                f"data.num_workers={advice} would keep up (or data.augment_on=device)")
