"""Run checkpoints: RUN/checkpoints/step-{N:08d}/, complete or absent, and RUN/best/.

A checkpoint is a directory written as checkpoints/.tmp-step-N/ by every rank and renamed to
step-N/ by rank 0 once all ranks finished and the COMPLETE marker is on disk, so a directory
named step-N is always whole. It holds

    dcp/                 model + optimizer, torch.distributed.checkpoint (resharding: a run saved
                         by 2 processes resumes on 1 and vice versa)  -- or, for DeepSpeed runs,
    zero/                DeepSpeed's own (ZeRO-partitioned) checkpoint (same world size only)
    model.safetensors    plain weights (rank 0), for export and train.init_from
    state.json           step, samples seen, best metric, data position
    rng-rank{r}.json     every rank's RNG states
    COMPLETE             the step and every file's size and SHA-256 (shg/integrity.py)

The Checkpointer owns the policy around them: which checkpoint a run resumes from
(checkpoint.resume), when one is due (checkpoint.every_steps and the last step), how many are
kept (checkpoint.keep), and best/ (the model chosen by the selection metric). A damaged newest
checkpoint is named and the run resumes from the one before; a failed write (a full disk)
stops the run with the earlier checkpoints and best/ intact. best/ is a link to a complete
directory (.best-N.*), switched in one rename: weights and info.json change together.
Weights and state are read with safetensors and JSON; DCP reads its own `.metadata`.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch

from shards import atomic

from .. import integrity
from ..errors import UserError
from ..weights import COMPLETE_MARKER, WEIGHTS_FILE, checkpoint_dir, complete_checkpoints, \
    save_weights
from . import faults
from .distributed import any_rank

MARKER = COMPLETE_MARKER


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def rng_state() -> dict:
    state = {"python": _jsonable(random.getstate()),
             "numpy": _jsonable(np.random.get_state()),
             "torch": torch.get_rng_state().tolist()}
    if torch.cuda.is_available():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_tuples(state["python"]))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]])


def _jsonable(obj):
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (tuple, list)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    return obj


def _tuples(obj):
    return tuple(_tuples(v) for v in obj) if isinstance(obj, list) else obj


class CheckpointWriteError(UserError):
    """A checkpoint or best/ could not be written (full disk, quota, I/O error)."""


class Checkpointer:
    """Collective save/load of a run's training state (every rank calls every method)."""

    def __init__(self, run_dir: str | Path, accelerator, cfg, deepspeed: bool = False):
        """`cfg`: the run's CheckpointConfig (every_steps, keep, resume)."""
        self.run_dir = Path(run_dir)
        self.root = self.run_dir / "checkpoints"
        self.acc, self.cfg, self.deepspeed = accelerator, cfg, deepspeed
        self.keep = cfg.keep

    # -- policy ----------------------------------------------------------------------------
    def resume_point(self, log=print) -> Path | None:
        """The checkpoint this run continues from: checkpoint.resume = auto (the newest
        complete one whose files match their checksums, if any), none, or a checkpoint
        directory."""
        if self.cfg.resume == "none":
            return None
        if self.cfg.resume != "auto":
            path = Path(self.cfg.resume)
            if not (path / MARKER).exists():
                raise UserError(f"checkpoint.resume={path}: not a complete checkpoint")
            problem = integrity.verify(path)
            if problem:
                raise UserError(f"checkpoint.resume={path}: damaged checkpoint: {problem}")
            return path
        damaged = []
        for path in reversed(complete_checkpoints(self.root)):
            problem = integrity.verify(path)
            if problem is None:
                if damaged and self.acc.is_main_process:
                    log(f"resuming from {path.name} (step {int(path.name.split('-')[1])}), "
                        f"the newest intact checkpoint", flush=True)
                return path
            damaged.append(path.name)
            if self.acc.is_main_process:
                log(f"shg train: checkpoint {path} is damaged: {problem}; trying the one "
                    "before it", flush=True)
        if damaged:
            raise UserError(f"{self.root}: every checkpoint is damaged ({', '.join(damaged)}); "
                            "start over with --resume none (or checkpoint.resume=none)")
        return None

    def due(self, step: int, final: bool) -> bool:
        return final or step % self.cfg.every_steps == 0

    def save_best(self, weights: dict, info: dict, name: str = "best") -> None:
        """RUN/best/ (or RUN/best_by_loss/): the weights and info.json (step, metrics) of the
        best model so far (main process only). Written whole into a new directory, then the
        link is switched to it in one rename; a failed write leaves the previous one as it
        was."""
        import uuid

        self.run_dir.mkdir(parents=True, exist_ok=True)
        target = self.run_dir / f".{name}-{info['step']:08d}.{uuid.uuid4().hex[:8]}"
        try:
            with atomic.atomic_path(target) as tmp:
                tmp.mkdir()
                faults.fail_write(name, info["step"])
                save_weights(tmp / WEIGHTS_FILE, weights, info)
                atomic.write_json(tmp / "info.json", info, indent=1)
                integrity.write_marker(tmp, info["step"])
        except OSError as exc:
            raise CheckpointWriteError(
                f"cannot write {name}/ of step {info['step']} in {self.run_dir}: {exc}; the "
                f"previous {name}/ and the checkpoints are intact: free space, then run the "
                "same command again to resume") from None
        link = self.run_dir / name
        if link.is_dir() and not link.is_symlink():  # a run from before best/ was a link
            os.replace(link, self.run_dir / f".{name}-legacy")
        tmp_link = self.run_dir / f".{name}.{os.getpid()}.link"
        tmp_link.unlink(missing_ok=True)
        os.symlink(target.name, tmp_link)  # relative: the run directory can move
        os.replace(tmp_link, link)
        for old in self.run_dir.glob(f".{name}-*"):
            if old != target:
                shutil.rmtree(old, ignore_errors=True)

    # -- save ------------------------------------------------------------------------------
    def save(self, step: int, model, optimizer, state: dict, weights: dict, metadata: dict
             ) -> Path:
        acc = self.acc
        tmp = self.root / f".tmp-step-{step:08d}"
        final = checkpoint_dir(self.run_dir, step)
        if acc.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        acc.wait_for_everyone()
        error = None
        try:
            self._write_state(tmp, step, model, optimizer, state, weights, metadata)
        except OSError as exc:
            error = exc
        if any_rank(error is not None, acc):  # every rank stops, none waits for the others
            self._failed(tmp, step, error)
        faults.kill_if("save", step)
        acc.wait_for_everyone()
        if acc.is_main_process:
            try:
                integrity.write_marker(tmp, step)
            except OSError as exc:
                self._failed(tmp, step, exc)
            shutil.rmtree(final, ignore_errors=True)  # a re-run after resume --none
            os.replace(tmp, final)
            self._prune()
        acc.wait_for_everyone()
        return final

    def _write_state(self, tmp: Path, step: int, model, optimizer, state: dict, weights: dict,
                     metadata: dict) -> None:
        """This rank's part of checkpoint `step` (the main rank also writes the plain weights
        and state.json)."""
        acc = self.acc
        if self.deepspeed:
            model.save_checkpoint(str(tmp / "zero"), tag="state")
        else:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            msd, osd = get_state_dict(model, optimizer)
            with warnings.catch_warnings():  # "assuming ... a single process": yes, we are
                warnings.filterwarnings("ignore", message=".*torch.distributed is disabled")
                dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "dcp"))
        atomic.write_json(tmp / f"rng-rank{acc.process_index}.json", rng_state(), fsync=True)
        if acc.is_main_process:
            faults.fail_write("checkpoint", step)
            save_weights(tmp / WEIGHTS_FILE, weights, metadata)
            atomic.write_json(tmp / "state.json", {**state, "world_size": acc.num_processes},
                              fsync=True)

    def _failed(self, tmp: Path, step: int, error: OSError | None):
        if self.acc.is_main_process:
            shutil.rmtree(tmp, ignore_errors=True)
        last = latest_checkpoint(self.root)
        raise CheckpointWriteError(
            f"cannot write checkpoint step {step} in {self.root}: "
            f"{error or 'a write failed on another rank'}; the earlier checkpoints "
            f"({last.name if last else 'none'}) and best/ are intact: free space, then run the "
            "same command again to resume") from None

    def _prune(self) -> None:
        for old in complete_checkpoints(self.root)[:-self.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in self.root.glob(".tmp-step-*"):  # left by a crash during a save
            shutil.rmtree(stale, ignore_errors=True)

    # -- load ------------------------------------------------------------------------------
    def load(self, path: Path, model, optimizer) -> dict:
        acc = self.acc
        state = json.loads((path / "state.json").read_text())
        if self.deepspeed:
            if not (path / "zero").is_dir():
                raise UserError(f"{path}: not a DeepSpeed checkpoint; start a DeepSpeed run "
                                 "from its weights with train.init_from instead")
            if state["world_size"] != acc.num_processes:
                raise UserError(
                    f"{path}: DeepSpeed ZeRO checkpoint of {state['world_size']} processes "
                    f"cannot resume on {acc.num_processes}; start a new run with "
                    f"train.init_from={path} (weights and BN statistics; fresh optimizer)")
            model.load_checkpoint(str(path / "zero"), tag="state")
        else:
            if not (path / "dcp").is_dir():
                raise UserError(f"{path}: written by a DeepSpeed run; resume it with the same "
                                 "distributed.deepspeed_config, or use train.init_from")
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

            msd, osd = get_state_dict(model, optimizer)
            target = {"model": msd, "optim": osd}
            try:
                with warnings.catch_warnings():
                    warnings.filterwarnings("ignore", message=".*torch.distributed is disabled")
                    dcp.load(target, checkpoint_id=str(path / "dcp"))
            except Exception as exc:  # DCP reports missing keys / shapes in its own words
                raise UserError(f"{path}: cannot load into this model ({exc})") from None
            set_state_dict(model, optimizer, model_state_dict=target["model"],
                           optim_state_dict=target["optim"])
        rng = path / f"rng-rank{acc.process_index}.json"
        if rng.exists() and state["world_size"] == acc.num_processes:
            set_rng_state(json.loads(rng.read_text()))
        return state
