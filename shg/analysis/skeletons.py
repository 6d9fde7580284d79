"""`shg analyze skeletons`: K-means on normalised ground-truth skeletons, with silhouettes.

Normalisation: each skeleton (crop pixels, labelled joints only) is centred on the mean of its
labelled joints and scaled to unit RMS distance from that centre, so clusters separate poses,
not positions or sizes. Two populations, as in the thesis:

- full: skeletons with every joint of the schema labelled (no imputation needed);
- all: every skeleton with at least `min_joints` labelled joints; an unlabelled joint is
  filled with that joint's mean normalised position over the skeletons where it is labelled
  (the centre and scale use labelled joints only), so it pulls no cluster its way.

For k in the range, K-means (scikit-learn, n_init=10) and the silhouette score (on at most
`silhouette_sample` skeletons); the best k of each population is drawn as mean skeletons and
sample montages.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from shards.reader import crops_by_key
from shards.schema import stored

from ..errors import UserError
from ..visualize import draw_tiles, pyplot, save_figure


@dataclass
class SkeletonOptions:
    shards: str
    split: str
    out: str
    k_min: int = 2
    k_max: int = 10
    min_joints: int = 8
    silhouette_sample: int = 5000
    seed: int = 0
    samples_per_cluster: int = 6

    def __post_init__(self) -> None:
        if not 2 <= self.k_min <= self.k_max:
            raise UserError("need 2 <= k_min <= k_max")


def read_skeletons(shards: str, split: str) -> tuple[list[str], np.ndarray]:
    """Every sample's key and crop keypoints, from the samples' JSON alone (no image is read)."""
    from shards.reader import split_members

    keys, kps = [], []
    for raw in split_members(shards, split, "json"):
        keys.append(raw["__key__"])
        kps.append(np.asarray(json.loads(raw["json"])["keypoints"], dtype=np.float64))
    return keys, np.stack(kps)


def normalise(kps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, K, 3) -> (N, K, 2) centred, unit-RMS skeletons (NaN where unlabelled), labelled."""
    labelled = kps[:, :, 2] > 0
    xy = np.where(labelled[..., None], kps[:, :, :2], np.nan)
    centre = np.nanmean(xy, axis=1, keepdims=True)
    rms = np.sqrt(np.nanmean(((xy - centre) ** 2).sum(-1), axis=1))
    rms = np.where(rms > 0, rms, 1.0)
    return (xy - centre) / rms[:, None, None], labelled


def cluster(vectors: np.ndarray, opts: SkeletonOptions) -> dict:
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    result = {"count": len(vectors), "silhouette": {}, "sizes": {}, "centres": {}, "labels": {}}
    for k in range(opts.k_min, opts.k_max + 1):
        if k >= len(vectors):
            break
        km = KMeans(n_clusters=k, n_init=10, random_state=opts.seed).fit(vectors)
        if len(set(km.labels_)) < 2:
            continue
        score = silhouette_score(vectors, km.labels_,
                                 sample_size=min(opts.silhouette_sample, len(vectors)),
                                 random_state=opts.seed)
        result["silhouette"][k] = float(score)
        result["sizes"][k] = np.bincount(km.labels_, minlength=k).tolist()
        result["centres"][k] = km.cluster_centers_.reshape(k, -1, 2)
        result["labels"][k] = km.labels_
    result["best_k"] = (max(result["silhouette"], key=result["silhouette"].get)
                        if result["silhouette"] else None)
    return result


def _draw_mean_skeletons(ax, centres: np.ndarray, title: str, skeleton) -> None:
    k = len(centres)
    for i, c in enumerate(centres):
        offset = np.array([i * 4.0, 0.0])
        for a, b in skeleton:
            ax.plot([c[a, 0] + offset[0], c[b, 0] + offset[0]], [c[a, 1], c[b, 1]], "-",
                    color=f"C{i % 10}", lw=2)
        ax.plot(c[:, 0] + offset[0], c[:, 1], "k.", ms=3)
    ax.set_xlim(-2.5, 4.0 * (k - 1) + 2.5)
    ax.invert_yaxis()
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title)


def run_skeletons(opts: SkeletonOptions) -> dict:
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    keys, kps = read_skeletons(opts.shards, opts.split)
    from shards.manifest import split_entry

    schema = stored(split_entry(opts.shards, opts.split))
    norm, labelled = normalise(kps)
    populations = {}
    full = labelled.all(1)
    enough = labelled.sum(1) >= opts.min_joints
    fill = np.nanmean(norm[enough], axis=0) if enough.any() else np.zeros((kps.shape[1], 2))
    fill = np.nan_to_num(fill)
    imputed = np.where(np.isnan(norm), fill[None], norm)
    for name, mask in (("all", enough), ("full", full)):
        vectors = imputed[mask].reshape(int(mask.sum()), -1)
        res = cluster(vectors, opts) if len(vectors) > opts.k_min else {
            "count": int(mask.sum()), "silhouette": {}, "sizes": {}, "best_k": None}
        res["keys"] = [k for k, m in zip(keys, mask) if m]
        populations[name] = res

    p = pyplot()
    fig, ax = p.subplots(figsize=(6, 3.5))
    for name, res in populations.items():
        if res["silhouette"]:
            ks = sorted(res["silhouette"])
            ax.plot(ks, [res["silhouette"][k] for k in ks], "o-",
                    label=f"{name} skeletons (n={res['count']})")
    ax.set_xlabel("k")
    ax.set_ylabel("silhouette score")
    ax.legend()
    ax.set_title("K-means on normalised skeletons")
    fig.tight_layout()
    save_figure(fig, out / "silhouette.png")

    for name, res in populations.items():
        k = res["best_k"]
        if k is None:
            continue
        fig, ax = p.subplots(figsize=(1.6 * k + 1, 3))
        _draw_mean_skeletons(ax, res["centres"][k], f"{name}: {k} cluster means",
                             schema.skeleton)
        fig.tight_layout()
        save_figure(fig, out / f"clusters_{name}.png")
        labels = res["labels"][k]
        rng = np.random.default_rng(opts.seed)
        picks = []
        for c in range(k):
            members = np.nonzero(labels == c)[0]
            chosen = rng.choice(members, size=min(opts.samples_per_cluster, len(members)),
                                replace=False)
            picks.append([res["keys"][i] for i in chosen])
        crops = crops_by_key(opts.shards, opts.split, {key for row in picks for key in row})
        tiles = []
        for row in picks:
            tiles += [crops.get(key) for key in row] + [None] * (opts.samples_per_cluster
                                                                - len(row))
        draw_tiles(tiles, out / f"montage_{name}.png", opts.samples_per_cluster,
                   row_labels=[f"cluster {c}\nn={res['sizes'][k][c]}" for c in range(k)])

    summary = {"split": opts.split, "normalisation": "centred on labelled joints, unit RMS",
               "imputation": "unlabelled joints -> that joint's mean normalised position",
               "populations": {
                   name: {"count": res["count"], "best_k": res["best_k"],
                          "silhouette": {str(k): v for k, v in res["silhouette"].items()},
                          "cluster_sizes": {str(k): v for k, v in res["sizes"].items()}}
                   for name, res in populations.items()}}
    (out / "skeletons.json").write_text(json.dumps(summary, indent=1))
    return summary
