"""`shg analyze latent`: PCA of the bottleneck latents, walked in std-scaled steps.

1. Every sample's bottleneck tensor (the innermost 4x4xF map of the chosen stack's hourglass)
   is flattened and streamed to OUT/latents.npy (a memmap: memory stays bounded), its predicted
   keypoints (crop pixels) to OUT/predictions.npy, rows by manifest index. The forward passes run
   on the chosen device under autocast (`ModelOnSplit.precision`); the rows are fp32. Under
   torch.distributed (`shg analyze latent --nproc N`) each rank writes the rows of its share of
   the split into the same files and rank 0 does the rest.
2. PCA (scikit-learn; randomised SVD, or IncrementalPCA over chunks for large splits):
   explained variance ratios.
3. The mean latent and the real sample nearest to it.
4. For each of the first m components, points mean + s * sigma_c * v_c for s in the steps
   (default -3 ... +3), and the real sample nearest to each point: one montage row per component.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shards.reader import crops_by_key, dist_rank_world
from shards.sample import model_input
from shards.schema import stored

from ..evaluation.core import gather_list
from ..visualize import crop_with_skeleton, draw_tiles, pyplot, save_figure
from .common import ModelAnalysis, barrier, batches, describe, nearest

log = logging.getLogger(__name__)


@dataclass
class LatentOptions(ModelAnalysis):
    stack: int = -1
    """Which stack's bottleneck (-1 = the last)."""
    components: int = 5
    steps: list[float] = field(default_factory=lambda: [-3, -2, -1, 0, 1, 2, 3])
    incremental_above: int = 20000
    """Use IncrementalPCA (chunked) above this many samples."""


@torch.no_grad()
def extract(opts: LatentOptions, model, meta, place) -> list[str] | None:
    """Write this rank's rows of OUT/latents.npy (N, D) and OUT/predictions.npy (N, K, 2), rank 0
    creating both; returns the samples' keys by manifest index on rank 0 (None elsewhere)."""
    from shards.codec import HeatmapCodec
    from shards.manifest import split_entry

    rank, world = dist_rank_world()
    out = Path(opts.out)
    entry = split_entry(opts.shards, opts.split)
    n = min(entry["num_samples"], opts.limit or entry["num_samples"])
    stack = opts.stack % model.stacks
    size = int(entry.get("crop", {}).get("size") or meta.get("crop_size", 256))
    with model.capture_bottleneck(stack) as captured, place.autocast():  # the rows' sizes
        heat = model(torch.zeros(1, 3, size, size, device=place.device))[:, -1]
    dim, joints = captured[0][0].numel(), heat.shape[1]
    files = ((out / "latents.npy", (n, dim)), (out / "predictions.npy", (n, joints, 2)))
    if rank == 0:
        for path, shape in files:
            np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape).flush()
    barrier()  # the files exist, at their size
    store, preds = (np.lib.format.open_memmap(path, mode="r+") for path, _ in files)
    workers = opts.workers()
    log.info("latents of %d samples of %s on %s", n, opts.split, describe(place, world, workers))
    sigma = float(meta.get("sigma", 1.0))
    mine: list[tuple[int, str]] = []
    for batch in batches(opts.shards, opts.split, opts.batch_size, meta, opts.limit or None,
                         desc="latents", rank=rank, world=world, num_workers=workers):
        index = batch["index"].numpy()
        with model.capture_bottleneck(stack) as captured, place.autocast():
            heat = model(model_input(batch, place.device))[:, -1]
        store[index] = captured[0].flatten(1).float().cpu().numpy()
        codec = HeatmapCodec(batch["image"].shape[-1], sigma=sigma)
        preds[index] = codec.decode(heat.float().cpu())[0].numpy()
        mine += zip(index.tolist(), batch["key"])
    store.flush()
    preds.flush()
    del store, preds
    seen = sorted(gather_list(mine))  # (also: every rank's rows are written)
    if rank != 0:
        return None
    if [i for i, _ in seen] != list(range(n)):
        raise RuntimeError(f"latents: {len(seen)} rows written for {n} samples: ranks disagree "
                           "on the split")
    return [key for _, key in seen]


def run_latent(opts: LatentOptions) -> dict:
    from sklearn.decomposition import PCA, IncrementalPCA

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    model, meta, source, place = opts.model_on_device()
    keys = extract(opts, model, meta, place)
    if keys is None:  # not rank 0
        return {}
    latents = np.load(out / "latents.npy", mmap_mode="r")  # every rank's rows
    preds = np.load(out / "predictions.npy", mmap_mode="r")
    n, dim = latents.shape
    m = max(1, min(opts.components, n - 1, dim))
    if n > opts.incremental_above:
        pca = IncrementalPCA(n_components=min(50, n - 1, dim), batch_size=max(1024, 2 * dim))
        for start in range(0, n, pca.batch_size):
            pca.partial_fit(np.asarray(latents[start:start + pca.batch_size]))
    else:
        pca = PCA(n_components=min(50, n - 1, dim), svd_solver="randomized", random_state=0)
        pca.fit(np.asarray(latents))
    ratios = pca.explained_variance_ratio_
    sigmas = np.sqrt(pca.explained_variance_)
    mean = pca.mean_
    walk_points = np.stack([mean + s * sigmas[c] * pca.components_[c]
                            for c in range(m) for s in opts.steps])
    mean_idx = int(nearest(mean[None], latents)[0])
    walk_idx = nearest(walk_points, latents).reshape(m, len(opts.steps))

    p = pyplot()
    fig, ax = p.subplots(figsize=(6, 3.5))
    shown = min(len(ratios), 30)
    ax.bar(np.arange(1, shown + 1), ratios[:shown], label="per component")
    ax.plot(np.arange(1, shown + 1), np.cumsum(ratios[:shown]), "r.-", label="cumulative")
    ax.set_xlabel("principal component")
    ax.set_ylabel("explained variance ratio")
    ax.legend()
    ax.set_title(f"PCA of {dim}-d bottleneck latents ({n} samples)")
    fig.tight_layout()
    save_figure(fig, out / "explained_variance.png")

    needed = {keys[mean_idx]} | {keys[i] for i in walk_idx.ravel()}
    crops = crops_by_key(opts.shards, opts.split, needed)

    skeleton = stored(meta).skeleton

    def tile(i):
        return crop_with_skeleton(crops[keys[i]], preds[i], skeleton)

    from PIL import Image

    Image.fromarray(tile(mean_idx)).save(out / "mean_sample.png")
    draw_tiles([tile(i) for i in walk_idx.ravel()], out / "pca_walk.png", len(opts.steps),
               labels=[f"{s:+g} sd" if c == 0 else "" for c in range(m) for s in opts.steps],
               row_labels=[f"PC{c + 1}\n{ratios[c]:.1%}" for c in range(m)])
    result = {
        "model": str(source), "split": opts.split, "samples": n, "latent_dim": dim,
        "stack": opts.stack % model.stacks, "device": str(place.device),
        "precision": place.precision, "ranks": dist_rank_world()[1],
        "explained_variance_ratio": ratios.tolist(),
        "steps_in_sd": list(opts.steps),
        "mean_nearest": {"key": keys[mean_idx], "index": mean_idx},
        "walks": [{"component": c + 1, "sd": float(sigmas[c]),
                   "samples": [keys[i] for i in walk_idx[c]]} for c in range(m)],
    }
    (out / "latent.json").write_text(json.dumps(result, indent=1))
    return result
