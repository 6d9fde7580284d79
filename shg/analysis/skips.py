"""`shg analyze skips`: what the hourglass skip connections carry, without retraining.

On the samples the model gets perfectly right (every visible joint correct at the chosen PCK),
the skip (up) branch of one hourglass level at a time (1 = innermost 4x4 ... 4 = outermost
64x64), then of all levels, is switched off at inference in every stack. For each setting:
PCK on those samples and how much the heatmaps change (mean absolute difference, relative to
the mean absolute heatmap).

The search for perfect samples stops reading once `max_perfect` are found. The forward passes
run on the chosen device under autocast (`ModelOnSplit.precision`); decoding, PCK and the
heatmap changes are fp32. Under torch.distributed (`shg analyze skips --nproc N`) each rank
searches its share of the split and ablates what it found; rank 0 gathers and writes.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shards.reader import crops_by_key, dist_rank_world
from shards.sample import model_input

from ..errors import UserError
from ..evaluation.core import gather_list
from ..visualize import pyplot, save_figure
from .common import ModelAnalysis, batches, describe

log = logging.getLogger(__name__)


@dataclass
class SkipOptions(ModelAnalysis):
    norm: str = "bbox"
    """PCK normalisation that defines "perfectly right": bbox (PCK@0.2: every visible joint
    within 20 % of the person's size) or constant (the thesis PCK, stricter)."""
    threshold: float = 0.2
    max_perfect: int = 256
    """Ablate on at most this many perfect samples, the first ones found: reading stops once
    they are (with N ranks each rank stops at ceil(max_perfect / N) of its share)."""

    def __post_init__(self) -> None:
        if self.max_perfect < 1:
            raise UserError(f"--max-perfect {self.max_perfect}: give at least 1")


@dataclass
class _Perfect:
    index: int
    key: str
    image: torch.Tensor
    """The model input, on the device."""
    gt: np.ndarray
    vis: np.ndarray
    norm: float


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
def find_perfect(opts: SkipOptions, model, meta, place) -> tuple[list[_Perfect], int]:
    """(this rank's first perfectly predicted samples, at most its share of the quota; how many
    samples it read to find them): reading stops when the quota is met."""
    from shards.codec import HeatmapCodec

    rank, world = dist_rank_world()
    quota = -(-opts.max_perfect // world)
    workers = opts.workers()
    log.info("skips: looking for %d perfectly predicted samples of %s on %s", opts.max_perfect,
             opts.split, describe(place, world, workers))
    sigma = float(meta.get("sigma", 1.0))
    found: list[_Perfect] = []
    seen = 0
    stream = batches(opts.shards, opts.split, opts.batch_size, meta, opts.limit or None,
                     desc="select", rank=rank, world=world, num_workers=workers)
    try:
        for batch in stream:
            images = model_input(batch, place.device)
            with place.autocast():
                heat = model(images)[:, -1]
            coords, _ = HeatmapCodec(images.shape[-1], sigma=sigma).decode(heat.float().cpu())
            gt = batch["keypoints"].numpy()
            vis = gt[:, :, 2] > 0
            norm = _norms(batch, opts.norm)
            dist = np.linalg.norm(coords.numpy() - gt[:, :, :2], axis=-1)
            ok = ((dist < opts.threshold * norm[:, None]) | ~vis).all(1) & vis.any(1)
            seen += len(ok)
            for i in np.nonzero(ok)[0][:quota - len(found)]:
                found.append(_Perfect(int(batch["index"][i]), batch["key"][i],
                                      images[i].clone(), gt[i, :, :2], vis[i], float(norm[i])))
            if len(found) >= quota:
                break
    finally:
        stream.close()  # stops the loader's workers
    return found, seen


@torch.no_grad()
def ablate(model, samples: list[_Perfect], settings, place, batch_size: int, sigma: float,
           first: int | None) -> tuple[list[dict], dict | None]:
    """Every setting's predicted keypoints and heatmap change of each sample (sums of absolute
    differences from the heatmaps with every skip on, and of those heatmaps, fp32); the
    heatmaps (max over joints) of sample `first` when it is one of `samples`."""
    from shards.codec import HeatmapCodec

    rows, maps = [], None
    for start in range(0, len(samples), batch_size):
        part = samples[start:start + batch_size]
        images = torch.stack([s.image for s in part])
        codec = HeatmapCodec(images.shape[-1], sigma=sigma)
        base = None
        out = [{"index": s.index, "key": s.key, "gt": s.gt, "vis": s.vis, "norm": s.norm,
                "coords": {}, "diff": {}} for s in part]
        for name, disabled in settings:
            with model.disable_skips(disabled), place.autocast():
                heat = model(images)[:, -1].float()
            if base is None:  # settings[0]: every skip on
                base = heat
            coords, _ = codec.decode(heat.cpu())
            diff = (heat - base).abs().flatten(1).sum(1, dtype=torch.float64).cpu()
            for j, row in enumerate(out):
                row["coords"][name] = coords[j].numpy()
                row["diff"][name] = float(diff[j])
            for j, s in enumerate(part):
                if s.index == first:
                    maps = maps or {}
                    maps[name] = heat[j].max(0).values.cpu().numpy()
        for j, row in enumerate(out):
            row["base"] = float(base[j].abs().sum(dtype=torch.float64))
        rows += out
    return rows, maps


def run_skips(opts: SkipOptions) -> dict:
    """The ablation; the result on rank 0 ({} on the other ranks)."""
    from ..evaluation.pck import pck

    rank, world = dist_rank_world()
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    model, meta, source, place = opts.model_on_device()
    levels = list(range(1, model.depth + 1))
    settings = [("none", [])] + [(f"level {lv}", [lv]) for lv in levels] + [("all", levels)]
    # 1. the first perfect samples, each rank in its share; the quota's lowest indices of them
    found, seen = find_perfect(opts, model, meta, place)
    chosen = sorted(gather_list([s.index for s in found]))[:opts.max_perfect]
    seen = sum(gather_list([seen]))
    keep = set(chosen)
    mine = [s for s in found if s.index in keep]
    # 2. every setting on them (each rank its own), gathered
    rows, maps = ablate(model, mine, settings, place, opts.batch_size,
                        float(meta.get("sigma", 1.0)), chosen[0] if chosen else None)
    rows = sorted(gather_list(rows), key=lambda r: r["index"])
    maps = next((m for m in gather_list([maps]) if m is not None), None)
    if rank != 0:
        return {}
    from shards.manifest import split_entry

    total = split_entry(opts.shards, opts.split)["num_samples"]
    n = len(rows)
    result = {"model": str(source), "split": opts.split, "samples_seen": seen,
              "split_samples": min(total, opts.limit or total), "perfect": n,
              "max_perfect": opts.max_perfect,
              "criterion": f"all visible joints within {opts.norm}@{opts.threshold}",
              "device": str(place.device), "precision": place.precision, "ranks": world,
              "perfect_samples": [r["key"] for r in rows], "settings": {}}
    if n == 0:
        result["note"] = "no perfectly predicted sample: nothing to ablate (train longer?)"
        (out / "skips.json").write_text(json.dumps(result, indent=1))
        return result
    gt, vis = np.stack([r["gt"] for r in rows]), np.stack([r["vis"] for r in rows])
    norm = np.asarray([r["norm"] for r in rows])
    base = sum(r["base"] for r in rows)
    for name, disabled in settings:
        coords = np.stack([r["coords"][name] for r in rows])
        score = pck(coords, gt, vis, norm, [opts.threshold])
        change = sum(r["diff"][name] for r in rows) / max(base, 1e-12)
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
    save_figure(fig, out / "skips.png")

    first = rows[0]["key"]
    crop = crops_by_key(opts.shards, opts.split, {first}).get(first)
    fig, axes = p.subplots(1, len(names) + 1, figsize=(2.2 * (len(names) + 1), 2.4))
    if crop is not None:
        axes[0].imshow(crop)
    axes[0].set_title(first, fontsize=7)
    for ax, name in zip(axes[1:], names):
        ax.imshow(maps[name], cmap="magma", vmin=0)
        ax.set_title(f"skips off: {name}" if name != "none" else "all skips on", fontsize=8)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, out / "skips_heatmaps.png")
    (out / "skips.json").write_text(json.dumps(result, indent=1))
    return result
