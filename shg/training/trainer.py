"""The Trainer: set-up in `__init__`, the loop in `fit` (nanoGPT's shape: resume -> step ->
maybe validate -> maybe save -> stop on signal, NaN or early stopping).

On CPU with train.deterministic=true a run killed at any moment and resumed ends with
bit-identical weights to an uninterrupted run (tests/test_train.py).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from shards import atomic
from shards.sample import training_inputs
from shards.schema import stored

from ..config import dump_toml
from ..errors import UserError
from ..losses import task_loss
from . import faults
from .checkpoint import Checkpointer, CheckpointWriteError, latest_checkpoint
from .distributed import StopSignals, any_rank, broadcast_buffers, check_launch, \
    make_accelerator, unwrap
from .metrics_log import MetricsLogger
from .optim import set_lr
from .selection import Selection
from .setup import data_facts, prepare_model, resolved, train_stream
from .timing import LoaderWatch, StepClock
from .validation import validate


log = logging.getLogger(__name__)


class TrainingDiverged(UserError):
    """The loss became NaN or inf (exit code EXIT_DIVERGED)."""


@dataclass
class Progress:
    """What a checkpoint's state.json records of the run's position."""
    step: int = 0
    samples_seen: int = 0
    best_metric: float | None = None
    """The best value of the selection metric so far (PCK, or the AE's reconstruction MSE)."""
    best_step: int = -1
    evals_without_gain: int = 0
    skipped_samples: int = 0
    """Damaged samples left out so far (data.on_error = "skip")."""
    best_loss: float | None = None
    """The lowest validation loss so far (best_by_loss/, for comparing the selection rules)."""
    best_loss_step: int = -1
    train_seconds: float = 0.0
    """Wall time spent in training so far, summed over resumptions (queue time left out)."""
    compute_seconds: float = 0.0
    """Of it: input, forward+backward and optimizer (timing.py), summed over resumptions."""
    data_wait_seconds: float = 0.0
    """Of it: waiting for the loader's next batch."""
    checkpoint_seconds: float = 0.0
    validation_seconds: float = 0.0

    @classmethod
    def from_state(cls, state: dict, selection: Selection) -> "Progress":
        fields = {k: state[k] for k in cls.__dataclass_fields__ if k in state}
        if "best_metric" not in state and math.isfinite(state.get("best_score", -math.inf)):
            # checkpoints before the selection had a direction stored minus the AE's MSE
            best = state["best_score"]
            fields["best_metric"] = best if selection.higher_is_better else -best
        return cls(**fields)


class Trainer:
    def __init__(self, cfg):
        faults.arm()
        train_split = data_facts(cfg)
        self.cfg = cfg = resolved(cfg, train_split)
        self.accelerator, ds_config = make_accelerator(cfg)
        check_launch(cfg, self.accelerator)
        self.deepspeed = ds_config is not None
        self.is_main = self.accelerator.is_main_process
        self.run_dir = Path(cfg.run_dir)
        self._deterministic_before = torch.are_deterministic_algorithms_enabled()
        if cfg.train.deterministic:
            # cuBLAS needs a fixed workspace to be deterministic (read when CUDA starts)
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
        self.model, self.optimizer = prepare_model(cfg, self.accelerator)
        self.checkpointer = Checkpointer(self.run_dir, self.accelerator, cfg.checkpoint,
                                         deepspeed=self.deepspeed)
        self.selection = Selection.for_run(cfg)
        self.progress = Progress()
        self.schema = stored(train_split)
        self.metadata = {"model": unwrap(self.model, self.accelerator).config(),
                         "mean_rgb": train_split["mean_rgb"],
                         "crop_size": train_split["crop"]["size"],
                         "crop_enlarge": train_split["crop"]["enlarge"], "sigma": cfg.data.sigma,
                         "schema": self.schema.to_dict()}
        self.logger = None
        self.signals: StopSignals | None = None
        self.stopped_by_signal = False
        self._skipped_pending = 0
        self._rate_from = (0.0, 0)
        self._clock = (time.perf_counter(), 0.0)
        self.steps = StepClock(cuda=self.accelerator.device.type == "cuda")
        self.loader_watch = LoaderWatch(cfg.train.data_wait_warn)

    @contextlib.contextmanager
    def holding_run(self):
        """RUN/LOCK held by the main rank while training (see run_lock.py); every rank stops
        when the run belongs to another trainer."""
        from . import run_lock

        mine, refused = None, None
        if self.is_main:
            try:
                mine = run_lock.acquire(self.run_dir)
            except run_lock.RunInUse as exc:
                refused = exc
        if any_rank(refused is not None, self.accelerator):
            raise refused or run_lock.RunInUse(f"{self.run_dir}: held by another trainer")
        try:
            yield
        finally:
            if mine:
                run_lock.release(self.run_dir, mine)

    # ------------------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        self.resume()
        cfg, acc, progress = self.cfg, self.accelerator, self.progress
        stream, loader = train_stream(cfg, acc, progress.step)
        bar = self._bar()
        self.signals = signals = StopSignals(cfg.train.stop_signals)
        accum, micro, loss_acc = cfg.train.grad_accum, 0, 0.0
        self._rate_from = (time.perf_counter(), progress.samples_seen)
        self._clock = (time.perf_counter(), progress.train_seconds)
        clock = self.steps
        self.model.train()
        clock.waiting()
        for batch in loader:
            clock.got_batch()
            if progress.step >= cfg.train.max_steps:
                break
            micro += 1
            lr = set_lr(self.optimizer, cfg, progress.step)
            # the loss stays on the device: read at log steps (and checked once per step)
            loss_acc = loss_acc + self.forward_backward(batch, last_micro=micro == accum) / accum
            if faults.nan_at(progress.step + 1):
                loss_acc = loss_acc * float("nan")
            if micro < accum:
                clock.waiting()
                continue
            micro = 0
            self.optimizer_step(loss_acc)
            bar.update(1)
            faults.kill_if("step", progress.step)
            final = progress.step == cfg.train.max_steps
            if progress.step % cfg.train.log_every == 0 or final:
                self.log_step(float(loss_acc), lr, stream.num_samples, bar)
            loss_acc = 0.0
            early_stop = (progress.step % cfg.eval.every_steps == 0 or final) and \
                self.timed("validation", lambda: self.validate_and_select(bar))
            saved = self.checkpointer.due(progress.step, final or early_stop)
            if saved:
                self.timed("checkpoint", self.save)
            faults.hold_if(progress.step, signals, self.run_dir)
            if not final and signals.agreed(acc):
                self.stop_on_signal(signals.received, saved, bar)
                break
            if early_stop:
                self.say(bar, f"early stopping: {cfg.eval.early_stop_patience} validations "
                              f"without a better {self.selection.label}")
                break
            clock.waiting()
        bar.close()
        acc.wait_for_everyone()
        acc.end_training()
        return self.summary()

    def close(self) -> None:
        """Leave the process as training found it: signal handlers, the deterministic-algorithms
        flag, the metrics file (a process may go on: a notebook, a test, several runs)."""
        if self.signals is not None:
            self.signals.restore()
        if self.logger is not None:
            self.logger.close()
        torch.use_deterministic_algorithms(self._deterministic_before)

    # ------------------------------------------------------------------------------ its steps
    def resume(self) -> None:
        """Continue from the checkpoint checkpoint.resume names, then record the config and
        open the metrics log (a resumption is a row of its own there)."""
        point = self.checkpointer.resume_point()
        resumed = None
        if point is not None:
            from ..weights import check_compatible, load_weights

            check_compatible(unwrap(self.model, self.accelerator), load_weights(point)[0],
                             str(point))
            state = self.checkpointer.load(point, self.model, self.optimizer)
            self.progress = Progress.from_state(state, self.selection)
            world = self.accelerator.num_processes
            resumed = {"step": self.progress.step, "event": "resumed", "from": str(point),
                       "saved_by_processes": state["world_size"], "processes": world}
            if self.is_main:
                log.info("resumed from %s at step %d%s", point, self.progress.step,
                         f" (saved by {state['world_size']} processes, now {world}: data order "
                         "differs from an uninterrupted run)"
                         if state["world_size"] != world else "")
        if self.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            atomic.write_text(self.run_dir / "config.toml", dump_toml(self.cfg))
        from ..config import to_dict

        self.logger = MetricsLogger(self.run_dir, self.is_main, self.cfg.log, to_dict(self.cfg))
        if resumed:
            self.logger.log(resumed)

    def forward_backward(self, batch: dict, last_micro: bool) -> torch.Tensor:
        """One micro-batch: forward, loss, backward (gradients synchronised on the last one);
        returns the loss, on the device (reading it would wait for the GPU)."""
        acc, cfg = self.accelerator, self.cfg
        self._skipped_pending += int(batch.get("skipped", 0))
        with self.steps.phase("input"):
            images, target, weights = training_inputs(batch, cfg.data, acc.device, self.schema,
                                                      cfg.model.channels_last)
        sync = last_micro or self.deepspeed
        with self.steps.phase("compute"), \
                acc.no_sync(self.model) if not sync else contextlib.nullcontext():
            with acc.autocast():
                out = self.model(images)
            loss = task_loss(cfg.task, out, target, weights)
            acc.backward(loss if self.deepspeed else loss / cfg.train.grad_accum)
        return loss.detach().float()

    TIMED = {"validation": "val_s", "checkpoint": "checkpoint_s"}
    """What `timed` runs, with the key of its row's seconds."""

    def timed(self, what: str, work):
        """Run a validation or a checkpoint save: its time goes to its own total and a row of
        its own (`"event": what`), not to the steps' timing."""
        started = time.perf_counter()
        result = work()
        seconds = time.perf_counter() - started
        self.steps.exclude(seconds)
        setattr(self.progress, f"{what}_seconds",
                getattr(self.progress, f"{what}_seconds") + seconds)
        self.logger.log({"step": self.progress.step, "event": what,
                         self.TIMED[what]: round(seconds, 4)})
        return result

    def log_step(self, loss: float, lr: float, split_samples: int, bar) -> None:
        """metrics.jsonl / TensorBoard row of this step (every rank calls it: the count of
        skipped samples is summed over ranks)."""
        progress = self.progress
        self.count_skipped()
        now, (t_last, samples_last) = time.perf_counter(), self._rate_from
        rate = (progress.samples_seen - samples_last) / max(now - t_last, 1e-9)
        self._rate_from = (now, progress.samples_seen)
        timing, waited, busy = self.steps.row()
        progress.data_wait_seconds += waited
        progress.compute_seconds += busy
        row = {"step": progress.step, "loss": loss, "lr": lr, "img_per_s": rate,
               "samples_seen": progress.samples_seen,
               "epoch": progress.samples_seen / split_samples,
               **{k: round(v, 6) for k, v in timing.items()}}
        if progress.skipped_samples:
            row["skipped_samples"] = progress.skipped_samples
        self.logger.log(row)
        bar.set_postfix(loss=f"{loss:.5f}", img_s=f"{rate:.1f}",
                        wait=f"{timing['data_wait_frac']:.0%}")
        warning = self.loader_watch.check(timing, self.cfg.train.batch_size
                                          * self.cfg.train.grad_accum, self.cfg.data.num_workers)
        if warning and self.is_main:
            log.warning("step %d: %s", progress.step, warning)
            self.logger.log({"step": progress.step, "event": "loader_bottleneck",
                             "message": warning})

    def count_skipped(self) -> None:
        """Add the damaged samples every rank skipped since the last count (data.on_error=skip)
        to progress.skipped_samples (collective)."""
        pending = torch.tensor([float(self._skipped_pending)], device=self.accelerator.device)
        if self.accelerator.num_processes > 1:
            torch.distributed.all_reduce(pending)
        self.progress.skipped_samples += int(pending.item())
        self._skipped_pending = 0

    def train_seconds(self) -> float:
        """progress.train_seconds plus the time since this process started training."""
        started, before = self._clock
        return before + time.perf_counter() - started

    def summary(self) -> dict:
        """The run's outcome; a run that ended normally (not stopped by a signal) also writes
        it to RUN/summary.json, which marks it finished (studies skip it on re-submission)."""
        progress = self.progress
        if progress.skipped_samples and self.is_main:
            log.warning("shg train: %d damaged samples were skipped (data.on_error=skip; see "
                        "the warnings above)", progress.skipped_samples)
        summary = {"step": progress.step, "best_score": progress.best_metric,
                   "best_step": progress.best_step, "run_dir": str(self.run_dir),
                   "skipped_samples": progress.skipped_samples,
                   "stopped_by_signal": self.stopped_by_signal,
                   "train_seconds": round(self.train_seconds(), 1),
                   # where it went (summed over resumptions; compute + data wait is the time
                   # of the steps up to the last log row)
                   "seconds": {"compute": round(progress.compute_seconds, 2),
                               "data_wait": round(progress.data_wait_seconds, 2),
                               "checkpoint": round(progress.checkpoint_seconds, 2),
                               "validation": round(progress.validation_seconds, 2)}}
        if self.is_main and not self.stopped_by_signal:
            atomic.write_json(self.run_dir / "summary.json", {**summary, "finished": True},
                              indent=1)
        return summary

    def optimizer_step(self, loss: torch.Tensor) -> None:
        """Every rank agrees before stepping: one rank's NaN stops all of them. (Under DeepSpeed
        the engine has already stepped inside backward; the run still stops before anything is
        saved, so the last good checkpoint stays the newest.) This check is the one host-device
        synchronisation per step: the price of never applying a NaN step."""
        if any_rank(~torch.isfinite(loss), self.accelerator):
            last = latest_checkpoint(self.checkpointer.root)
            raise TrainingDiverged(
                f"loss is {float(loss)} at step {self.progress.step + 1}: stopping before the "
                f"optimizer step. Last good checkpoint: {last or 'none'} (left intact). "
                "Lower optim.lr, set train.clip_grad, or use mixed_precision=no.")
        if not self.deepspeed:
            with self.steps.phase("optimizer"):
                if self.cfg.train.clip_grad > 0:
                    self.accelerator.clip_grad_norm_(self.model.parameters(),
                                                     self.cfg.train.clip_grad)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
        self.steps.stepped()
        self.progress.step += 1
        self.progress.samples_seen += (self.cfg.train.batch_size * self.cfg.train.grad_accum
                                       * self.accelerator.num_processes)

    def validate_and_select(self, bar) -> bool:
        """Validate, keep best/ by the selection metric; True when early stopping says stop."""
        progress, selection = self.progress, self.selection
        broadcast_buffers(self.model, self.accelerator)
        metrics = validate(self.cfg, self.model, self.accelerator)
        value = selection.value(metrics)
        if selection.better(value, progress.best_metric):
            progress.best_metric, progress.best_step = value, progress.step
            progress.evals_without_gain = 0
            self.keep_best("best", metrics)
        else:
            progress.evals_without_gain += 1
        if self.cfg.task != "ae" and (progress.best_loss is None
                                      or metrics["val_loss"] < progress.best_loss):
            # kept beside best/ so the thesis's comparison of the two rules is one command
            progress.best_loss, progress.best_loss_step = metrics["val_loss"], progress.step
            self.keep_best("best_by_loss", metrics)
        self.logger.log({"step": progress.step, **metrics, "best_score": progress.best_metric})
        self.say(bar, f"step {progress.step}: val loss {metrics['val_loss']:.5f}, "
                      f"{selection.label} {value:.4g} (best {progress.best_metric:.4g} at step "
                      f"{progress.best_step})")
        patience = self.cfg.eval.early_stop_patience
        return bool(patience and progress.evals_without_gain >= patience)

    def keep_best(self, name: str, metrics: dict) -> None:
        """Write RUN/best/ or RUN/best_by_loss/ (main rank); every rank stops if it fails."""
        failed = None
        if self.is_main:
            try:
                self.checkpointer.save_best(
                    unwrap(self.model, self.accelerator).state_dict(),
                    {**self.metadata, "step": self.progress.step, "metrics": metrics}, name)
            except CheckpointWriteError as exc:
                failed = exc
        if any_rank(failed is not None, self.accelerator):  # all ranks stop together
            raise failed or CheckpointWriteError(f"{name}/ could not be written on rank 0")

    def save(self) -> None:
        self.count_skipped()
        self.progress.train_seconds = self.train_seconds()
        broadcast_buffers(self.model, self.accelerator)
        self.checkpointer.save(self.progress.step, self.model, self.optimizer,
                               asdict(self.progress),
                               unwrap(self.model, self.accelerator).state_dict(), self.metadata)

    def stop_on_signal(self, received: str | None, saved: bool, bar) -> None:
        """Slurm's warning came: make sure this step is saved, then leave (exit EXIT_REQUEUE)."""
        if not saved:
            self.save()
        self.stopped_by_signal = True
        self.logger.log({"step": self.progress.step,
                         "event": f"stopped by {received or 'a signal on another rank'}"})
        self.say(bar, f"stopped by a signal at step {self.progress.step}: checkpoint saved; "
                      "run the same command again (or requeue) to resume")

    def say(self, bar, text: str) -> None:
        if self.is_main:
            bar.write(text)

    def _bar(self):
        from tqdm import tqdm

        # In a log file (Slurm) a bar that redraws often is megabytes of noise: redraw rarely.
        return tqdm(total=self.cfg.train.max_steps, initial=self.progress.step,
                    disable=not self.is_main, unit="step", dynamic_ncols=True,
                    mininterval=0.5 if sys.stderr.isatty() else 30.0)
