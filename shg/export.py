"""`shg export`: a run's weights as one plain safetensors file (model config and mean RGB in its
metadata), for inference elsewhere."""

from __future__ import annotations

import shutil
from pathlib import Path

from .checkpoint import complete_checkpoints, load_weights, step_dir


def export(run: str | Path, out: str | Path, step: int | None = None) -> Path:
    run = Path(run)
    if step is None:
        source = run / "best" / "model.safetensors"
        if not source.is_file():
            raise FileNotFoundError(f"{run}: no best/ model yet (it appears after the first "
                                    "validation); use --step N for a checkpoint")
    else:
        ckpt = step_dir(run / "checkpoints", step)
        if not (ckpt / "COMPLETE").exists():
            have = [int(p.name.split("-")[1]) for p in complete_checkpoints(run / "checkpoints")]
            raise FileNotFoundError(f"{run}: no complete checkpoint of step {step} "
                                    f"(have: {have or 'none'})")
        source = ckpt / "model.safetensors"
    _, meta = load_weights(source)  # validates the file
    if "model" not in meta:
        raise ValueError(f"{source}: no model config in its metadata")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    shutil.copyfile(source, tmp)
    tmp.replace(out)
    return out
