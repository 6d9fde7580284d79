"""`shg analyze skips`: what the hourglass skip connections carry, without retraining.

On the samples the model gets perfectly right (every visible joint correct at the chosen PCK),
the skip (up) branch of one hourglass level at a time (1 = innermost 4x4 ... 4 = outermost
64x64), then of all levels, is switched off at inference in every stack. For each setting:
PCK on those samples and how much the heatmaps change (mean absolute difference, relative to
the mean absolute heatmap).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shards.sample import model_input

from ..evaluation.core import ModelOnSplit
from ..evaluation.report import crops_by_key, pyplot
from .common import batches


@dataclass
class SkipOptions(ModelOnSplit):
    norm: str = "bbox"
    """PCK normalisation that defines "perfectly right": bbox (PCK@0.2: every visible joint
    within 20 % of the person's size) or constant (the thesis PCK, stricter)."""
    threshold: float = 0.2
    batch_size: int = 32
    limit: int = 0
    max_perfect: int = 256
    """Ablate on at most this many perfect samples (the first ones)."""


def _norms(batch, norm: str) -> np.ndarray:
    from ..evaluation.pck import constant_norm

    if norm == "constant":
        return constant_norm(len(batch["key"]), batch["image"].shape[-1])
    sizes = []
    for meta in batch["meta"]:
        side = meta["affine"][0][0] * meta["crop_size"]
        sizes.append(max(meta["bbox"][2], meta["bbox"][3]) * meta["crop_size"] / side)
    return np.asarray(sizes)


@torch.no_grad()
def run_skips(opts: SkipOptions) -> dict:
    from shards.codec import HeatmapCodec

    from ..evaluation.pck import pck

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    model, meta, source = opts.load_model()
    sigma = float(meta.get("sigma", 1.0))

    def decode_heatmaps(heat, crop_size):
        return HeatmapCodec(crop_size, sigma=sigma).decode(heat)

    levels = list(range(1, model.depth + 1))
    settings = [("none", [])] + [(f"level {lv}", [lv]) for lv in levels] + [("all", levels)]
    # 1. find the perfect samples
    perfect = {"image": [], "gt": [], "vis": [], "norm": [], "key": []}
    device = next(model.parameters()).device
    seen = 0
    for batch in batches(opts.shards, opts.split, opts.batch_size, meta, opts.limit or None,
                         desc="select"):
        images = model_input(batch, device)
        coords, _ = decode_heatmaps(model(images)[:, -1], images.shape[-1])
        gt = batch["keypoints"].numpy()
        vis = gt[:, :, 2] > 0
        norm = _norms(batch, opts.norm)
        dist = np.linalg.norm(coords.numpy() - gt[:, :, :2], axis=-1)
        ok = ((dist < opts.threshold * norm[:, None]) | ~vis).all(1) & vis.any(1)
        seen += len(ok)
        for i in np.nonzero(ok)[0]:
            if len(perfect["key"]) < opts.max_perfect:
                perfect["image"].append(images[i])
                perfect["gt"].append(gt[i, :, :2])
                perfect["vis"].append(vis[i])
                perfect["norm"].append(norm[i])
                perfect["key"].append(batch["key"][i])
    n = len(perfect["key"])
    result = {"model": str(source), "split": opts.split, "samples_seen": seen,
              "perfect": n, "criterion": f"all visible joints within {opts.norm}@{opts.threshold}",
              "settings": {}}
    if n == 0:
        result["note"] = "no perfectly predicted sample: nothing to ablate (train longer?)"
        (out / "skips.json").write_text(json.dumps(result, indent=1))
        return result
    images = torch.stack(perfect["image"])
    gt, vis, norm = (np.stack(perfect[k]) for k in ("gt", "vis", "norm"))
    heat = {}
    for name, disabled in settings:
        maps = []
        with model.disable_skips(disabled):
            for start in range(0, n, opts.batch_size):
                maps.append(model(images[start:start + opts.batch_size])[:, -1].float())
        heat[name] = torch.cat(maps)
        coords, _ = decode_heatmaps(heat[name], images.shape[-1])
        score = pck(coords.numpy(), gt, vis, norm, [opts.threshold])
        base = heat["none"]
        change = float((heat[name] - base).abs().mean() / base.abs().mean().clamp_min(1e-12))
        result["settings"][name] = {"disabled_levels": disabled, "pck": float(score.mean[0]),
                                    "pck_drop": 1.0 - float(score.mean[0]),
                                    "heatmap_change": change}

    p = pyplot()
    names = [s for s, _ in settings]
    fig, ax1 = p.subplots(figsize=(7, 3.5))
    ax1.bar(names, [result["settings"][s]["pck"] for s in names], color="C0")
    ax1.set_ylabel(f"PCK {opts.norm}@{opts.threshold} (perfect set)")
    ax1.set_ylim(0, 1.05)
    ax2 = ax1.twinx()
    ax2.plot(names, [result["settings"][s]["heatmap_change"] for s in names], "ro-")
    ax2.set_ylabel("relative heatmap change", color="r")
    ax1.set_title(f"skip ablation on {n} perfectly predicted samples")
    fig.tight_layout()
    fig.savefig(out / "skips.png", dpi=100)
    p.close(fig)

    crop = crops_by_key(opts.shards, opts.split, {perfect["key"][0]}).get(perfect["key"][0])
    fig, axes = p.subplots(1, len(names) + 1, figsize=(2.2 * (len(names) + 1), 2.4))
    if crop is not None:
        axes[0].imshow(crop)
    axes[0].set_title(perfect["key"][0], fontsize=7)
    for ax, name in zip(axes[1:], names):
        ax.imshow(heat[name][0].max(0).values.numpy(), cmap="magma", vmin=0)
        ax.set_title(f"skips off: {name}" if name != "none" else "all skips on", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(out / "skips_heatmaps.png", dpi=100)
    p.close(fig)
    (out / "skips.json").write_text(json.dumps(result, indent=1))
    return result
