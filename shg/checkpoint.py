"""Run checkpoints: RUN/checkpoints/step-{N:08d}/, complete or absent.

A checkpoint is a directory written as checkpoints/.tmp-step-N/ by every rank and renamed to
step-N/ by rank 0 once all ranks finished and the COMPLETE marker is on disk, so a directory
named step-N is always whole. It holds

    dcp/                 model + optimizer, torch.distributed.checkpoint (resharding: a run saved
                         by 2 processes resumes on 1 and vice versa)  -- or, for DeepSpeed runs,
    zero/                DeepSpeed's own (ZeRO-partitioned) checkpoint (same world size only)
    model.safetensors    plain weights (rank 0), for export and train.init_from
    state.json           step, samples seen, best PCK, data position, scheduler, grad scaler
    rng-rank{r}.json     every rank's RNG states
    COMPLETE

No pickle is read back: DCP, safetensors and JSON only (DeepSpeed's own format excepted).
The newest `keep` checkpoints are kept; best/ (chosen by PCK) lives beside them in RUN/best/.
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

MARKER = "COMPLETE"


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / MARKER).exists()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(root: Path) -> Path | None:
    found = complete_checkpoints(root)
    return found[-1] if found else None


def _atomic_json(path: Path, obj) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


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


def save_weights(path: Path, state_dict: dict, metadata: dict) -> None:
    """Atomic safetensors file with the model's config etc. in its metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    os.replace(tmp, path)


def load_weights(path: str | Path) -> tuple[dict, dict]:
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / "model.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no weights file")
    tensors, meta = {}, {}
    with safe_open(str(path), framework="pt") as f:
        for key in f.keys():
            tensors[key] = f.get_tensor(key)
        meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    return tensors, meta


def check_compatible(model: torch.nn.Module, state: dict, source: str) -> None:
    """A clear error naming the keys when weights belong to another architecture."""
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = []
        for title, keys in (("missing", missing), ("unexpected", unexpected),
                            ("shape mismatch", shapes)):
            if keys:
                shown = ", ".join(keys[:6]) + (f" (+{len(keys) - 6} more)" if len(keys) > 6 else "")
                parts.append(f"{title}: {shown}")
        raise ValueError(f"{source}: weights do not fit this model ({'; '.join(parts)}); "
                         "was it trained with other model.stacks/features/joints?")


class Checkpointer:
    """Collective save/load of a run's training state (every rank calls every method)."""

    def __init__(self, run_dir: str | Path, accelerator, keep: int = 2, deepspeed: bool = False):
        self.root = Path(run_dir) / "checkpoints"
        self.acc, self.keep, self.deepspeed = accelerator, keep, deepspeed

    # -- save ------------------------------------------------------------------------------
    def save(self, step: int, model, optimizer, state: dict, weights: dict, metadata: dict,
             fault=None) -> Path:
        acc = self.acc
        tmp = self.root / f".tmp-step-{step:08d}"
        final = step_dir(self.root, step)
        if acc.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir()
        acc.wait_for_everyone()
        if self.deepspeed:
            model.save_checkpoint(str(tmp / "zero"), tag="state")
        else:
            import torch.distributed.checkpoint as dcp
            from torch.distributed.checkpoint.state_dict import get_state_dict

            msd, osd = get_state_dict(model, optimizer)
            with warnings.catch_warnings():  # "assuming ... a single process": yes, we are
                warnings.filterwarnings("ignore", message=".*torch.distributed is disabled")
                dcp.save({"model": msd, "optim": osd}, checkpoint_id=str(tmp / "dcp"))
        _atomic_json(tmp / f"rng-rank{acc.process_index}.json", rng_state())
        if acc.is_main_process:
            save_weights(tmp / "model.safetensors", weights, metadata)
            _atomic_json(tmp / "state.json", {**state, "world_size": acc.num_processes})
        if fault:
            fault("save", step)
        acc.wait_for_everyone()
        if acc.is_main_process:
            (tmp / MARKER).write_text(str(step))
            shutil.rmtree(final, ignore_errors=True)  # a re-run after resume --none
            os.replace(tmp, final)
            self._prune()
        acc.wait_for_everyone()
        return final

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
                raise ValueError(f"{path}: not a DeepSpeed checkpoint; start a DeepSpeed run "
                                 "from its weights with train.init_from instead")
            if state["world_size"] != acc.num_processes:
                raise ValueError(
                    f"{path}: DeepSpeed ZeRO checkpoint of {state['world_size']} processes "
                    f"cannot resume on {acc.num_processes}; start a new run with "
                    f"train.init_from={path} (weights and BN statistics; fresh optimizer)")
            model.load_checkpoint(str(path / "zero"), tag="state")
        else:
            if not (path / "dcp").is_dir():
                raise ValueError(f"{path}: written by a DeepSpeed run; resume it with the same "
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
                raise ValueError(f"{path}: cannot load into this model ({exc})") from None
            set_state_dict(model, optimizer, model_state_dict=target["model"],
                           optim_state_dict=target["optim"])
        rng = path / f"rng-rank{acc.process_index}.json"
        if rng.exists() and state["world_size"] == acc.num_processes:
            set_rng_state(json.loads(rng.read_text()))
        return state
