"""`shg analyze latent`: PCA of the bottleneck latents, walked in std-scaled steps.

1. Every sample's bottleneck tensor (the innermost 4x4xF map of the chosen stack's hourglass)
   is flattened and streamed to OUT/latents.npy (a memmap: memory stays bounded).
2. PCA (scikit-learn; randomised SVD, or IncrementalPCA over chunks for large splits):
   explained variance ratios.
3. The mean latent and the real sample nearest to it.
4. For each of the first m components, points mean + s * sigma_c * v_c for s in the steps
   (default -3 ... +3), and the real sample nearest to each point: one montage row per component.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shards.sample import model_input

from ..errors import UserError
from ..evaluation.core import ModelOnSplit
from ..evaluation.report import crops_by_key, pyplot
from shards.schema import stored

from .common import batches, crop_with_skeleton, draw_tiles, nearest


@dataclass
class LatentOptions(ModelOnSplit):
    stack: int = -1
    """Which stack's bottleneck (-1 = the last)."""
    components: int = 5
    steps: list[float] = field(default_factory=lambda: [-3, -2, -1, 0, 1, 2, 3])
    batch_size: int = 32
    limit: int = 0
    incremental_above: int = 20000
    """Use IncrementalPCA (chunked) above this many samples."""


@torch.no_grad()
def extract(opts: LatentOptions, model, meta) -> tuple[np.memmap, list[str], np.ndarray]:
    from shards.codec import HeatmapCodec

    out = Path(opts.out)
    stack = opts.stack % model.stacks
    keys, preds, store = [], [], None
    device = next(model.parameters()).device
    n_total = None
    row = 0
    for batch in batches(opts.shards, opts.split, opts.batch_size, meta, opts.limit or None,
                         desc="latents"):
        with model.capture_bottleneck(stack) as captured:
            heat = model(model_input(batch, device))[:, -1]
        lat = captured[0].flatten(1).float().numpy()
        if store is None:
            from shards.manifest import split_entry

            n_total = split_entry(opts.shards, opts.split)["num_samples"]
            n_total = min(n_total, opts.limit) if opts.limit else n_total
            store = np.lib.format.open_memmap(out / "latents.npy", mode="w+",
                                              dtype=np.float32, shape=(n_total, lat.shape[1]))
        store[row:row + len(lat)] = lat
        row += len(lat)
        keys += batch["key"]
        codec = HeatmapCodec(batch["image"].shape[-1], sigma=float(meta.get("sigma", 1.0)))
        preds.append(codec.decode(heat)[0].numpy())
    if store is None:
        raise UserError(f"{opts.shards}: split '{opts.split}' has no samples")
    store.flush()
    return store, keys, np.concatenate(preds)


def run_latent(opts: LatentOptions) -> dict:
    from sklearn.decomposition import PCA, IncrementalPCA

    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    model, meta, source = opts.load_model()
    latents, keys, preds = extract(opts, model, meta)
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
    fig.savefig(out / "explained_variance.png", dpi=100)
    p.close(fig)

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
        "stack": opts.stack % model.stacks,
        "explained_variance_ratio": ratios.tolist(),
        "steps_in_sd": list(opts.steps),
        "mean_nearest": {"key": keys[mean_idx], "index": mean_idx},
        "walks": [{"component": c + 1, "sd": float(sigmas[c]),
                   "samples": [keys[i] for i in walk_idx[c]]} for c in range(m)],
    }
    (out / "latent.json").write_text(json.dumps(result, indent=1))
    return result
