"""The one weights module: where a model's weights are (a run's best/, a checkpoint, a file),
reading and writing them (safetensors with the model's description in the metadata), checking
that they fit a model, and exporting them.

    locate("runs/x")                 runs/x/best/model.safetensors  (the best model by PCK)
    locate("runs/x", step=500)       runs/x/checkpoints/step-00000500/model.safetensors
    locate("runs/x/checkpoints/step-00000500") or locate("model.safetensors")
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from shards import atomic

from . import integrity
from .errors import UserError

WEIGHTS_FILE = "model.safetensors"
COMPLETE_MARKER = integrity.MARKER
"""A checkpoint directory holding this file is whole (see shg/training/checkpoint.py)."""


class WeightsError(UserError):
    """Weights that are missing, unreadable or of another architecture."""


def checkpoint_dir(run: str | Path, step: int) -> Path:
    return Path(run) / "checkpoints" / f"step-{step:08d}"


def complete_checkpoints(root: Path) -> list[Path]:
    """The complete checkpoint directories in `root` (RUN/checkpoints), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if (p / COMPLETE_MARKER).exists()]
    return sorted(found, key=_step)


def _step(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def complete_steps(run: str | Path) -> list[int]:
    return [_step(p) for p in complete_checkpoints(Path(run) / "checkpoints")]


def locate(source: str | Path, step: int | None = None, best: str = "best") -> Path:
    """The weights file of a run (its `best`/ - or best_by_loss/ - or checkpoint `step`), a
    checkpoint directory or a file."""
    source = Path(source)
    if step is not None:
        ckpt = checkpoint_dir(source, step)
        if not (ckpt / COMPLETE_MARKER).exists():
            have = complete_steps(source)
            raise WeightsError(f"{ckpt}: no complete checkpoint of step {step} "
                               f"(have: {', '.join(map(str, have)) or 'none'})")
        problem = integrity.verify(ckpt)
        if problem:
            raise WeightsError(f"{ckpt}: damaged checkpoint: {problem}; use another --step "
                               f"(have: {', '.join(map(str, complete_steps(source)))})")
        return ckpt / WEIGHTS_FILE
    if source.is_file():
        return source
    for candidate in (source / best / WEIGHTS_FILE, source / WEIGHTS_FILE):
        if candidate.is_file():
            if (candidate.parent / COMPLETE_MARKER).exists():
                problem = integrity.verify(candidate.parent)
                if problem:
                    raise WeightsError(f"{candidate.parent}: damaged: {problem}")
            return candidate
    if source.suffix == ".safetensors":
        raise WeightsError(f"{source}: weights file not found")
    raise WeightsError(f"{source}: no {best}/ model yet (it is written at the first "
                       "validation; use --step N for a checkpoint), and no model.safetensors")


def save_weights(path: str | Path, state_dict: dict, metadata: dict) -> None:
    """Atomic safetensors file with the model's description etc. in its metadata."""
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    with atomic.atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})


def load_weights(path: str | Path) -> tuple[dict, dict]:
    """(tensors, metadata) of a weights file (or a directory holding model.safetensors)."""
    from safetensors import safe_open

    path = Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise WeightsError(f"{path}: no weights file")
    from safetensors import SafetensorError

    tensors = {}
    try:
        with safe_open(str(path), framework="pt") as f:
            for key in f.keys():
                tensors[key] = f.get_tensor(key)
            meta = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"{path}: cannot read the weights ({exc}): the file is damaged or "
                           "not a safetensors file") from None
    return tensors, meta


def part(weights: dict, prefix: str) -> dict:
    """The `prefix.` sub-dictionary when the file holds a combined model (an SHG with its AE),
    else all of it."""
    sub = {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}
    return sub or weights


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
        raise WeightsError(f"{source}: weights do not fit this model ({'; '.join(parts)}); "
                           "was it trained with other model.stacks/features/joints?")


def load_into(model: torch.nn.Module, source: str | Path, prefix: str | None = None) -> Path:
    """Load the weights at `source` (anything `locate` takes) into `model`, checked; with
    `prefix` only that part of a combined model ("shg", "ae"). Returns the file read."""
    path = locate(source)
    weights = load_weights(path)[0]
    if prefix:
        weights = part(weights, prefix)
    check_compatible(model, weights, str(path))
    model.load_state_dict(weights)
    return path


def load_model(source: str | Path, step: int | None = None, poses: bool = True,
               best: str = "best"):
    """(model in eval mode, metadata, file) for the weights at `source` (see `locate`), built by
    the one model factory from the metadata saved with them. `poses=True` refuses a phase-1
    autoencoder, which predicts no poses."""
    from .models import AEPhase1, from_metadata

    path = locate(source, step, best)
    weights, meta = load_weights(path)
    if "model" not in meta:
        raise WeightsError(f"{path}: no model config in its metadata (not written by shg?)")
    model = from_metadata(meta["model"])
    if poses and isinstance(model, AEPhase1):
        raise WeightsError(f"{path}: a phase-1 autoencoder run predicts no poses; use the "
                           "fine-tuned (phase 2) run")
    check_compatible(model, weights, str(path))
    model.load_state_dict(weights)
    return model.eval(), meta, path


def export(run: str | Path, out: str | Path, step: int | None = None,
           best: str = "best") -> Path:
    """A run's best (or step `step`) weights as one plain safetensors file, its metadata
    (model description, mean RGB, crop size) included, for inference elsewhere."""
    source = locate(run, step, best)
    _, meta = load_weights(source)  # validates the file
    if "model" not in meta:
        raise WeightsError(f"{source}: no model config in its metadata")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(out) as tmp:
        shutil.copyfile(source, tmp)
    return out
