import json

import numpy as np

from shg.analysis.common import nearest
from shg.cli import main as shg


def _keys(shards, split):
    from shards.manifest import read_manifest
    from shards.reader import read_shard

    keys = set()
    for s in read_manifest(shards)["splits"][split]["shards"]:
        keys |= {raw["__key__"] for raw in read_shard(shards / s["file"], None)}
    return keys


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1000, 7))
    points = rng.normal(size=(13, 7))
    brute = ((points[:, None] - data[None]) ** 2).sum(-1).argmin(1)
    assert (nearest(points, data, chunk=97) == brute).all()


def test_latent_pca_walk(trained_run, synth_shards, tmp_path):
    out = tmp_path / "latent"
    assert shg(["analyze", "latent", "--run", str(trained_run), "--shards", str(synth_shards),
                "--split", "train2017", "--out", str(out), "--components", "3",
                "--walk=-2,0,2"]) == 0
    r = json.loads((out / "latent.json").read_text())
    ratios = np.asarray(r["explained_variance_ratio"])
    assert (np.diff(ratios) <= 1e-9).all() and ratios.sum() <= 1 + 1e-9 and ratios[0] > 0
    latents = np.load(out / "latents.npy", mmap_mode="r")
    assert latents.shape == (r["samples"], 16 * 4 * 4)  # tiny run: features 16, 4x4 bottleneck
    real = _keys(synth_shards, "train2017")
    assert r["mean_nearest"]["key"] in real
    assert len(r["walks"]) == 3
    for walk in r["walks"]:
        assert len(walk["samples"]) == 3 and set(walk["samples"]) <= real
    for png in ("explained_variance.png", "mean_sample.png", "pca_walk.png"):
        assert (out / png).stat().st_size > 0


def test_skeleton_clusters(synth_shards, tmp_path):
    out = tmp_path / "skel"
    assert shg(["analyze", "skeletons", "--shards", str(synth_shards), "--split", "train2017",
                "--out", str(out), "--k-min", "2", "--k-max", "4"]) == 0
    r = json.loads((out / "skeletons.json").read_text())
    assert set(r["populations"]) == {"all", "full"}
    for name, pop in r["populations"].items():
        assert pop["silhouette"], name
        assert all(-1 <= v <= 1 for v in pop["silhouette"].values())
        assert pop["best_k"] in (2, 3, 4)
        assert all(sum(sizes) == pop["count"] for sizes in pop["cluster_sizes"].values())
        assert (out / f"clusters_{name}.png").exists() and (out / f"montage_{name}.png").exists()
    assert r["populations"]["full"]["count"] <= r["populations"]["all"]["count"]
    assert (out / "silhouette.png").stat().st_size > 0


def test_skip_ablation_changes_the_output(trained_run, synth_shards, tmp_path):
    out = tmp_path / "skips"
    # a very lenient threshold so the briefly trained model has "perfect" samples to ablate
    assert shg(["analyze", "skips", "--run", str(trained_run), "--shards", str(synth_shards),
                "--split", "val2017", "--out", str(out), "--norm", "bbox",
                "--threshold", "5"]) == 0
    r = json.loads((out / "skips.json").read_text())
    assert r["perfect"] > 0
    s = r["settings"]
    assert set(s) == {"none", "level 1", "level 2", "level 3", "level 4", "all"}
    assert s["none"]["pck"] == 1.0 and s["none"]["heatmap_change"] == 0
    assert s["all"]["heatmap_change"] > 0
    assert all(s[f"level {i}"]["heatmap_change"] > 0 for i in range(1, 5))
    assert (out / "skips.png").exists() and (out / "skips_heatmaps.png").exists()


def test_skips_with_nothing_perfect_says_so(trained_run, synth_shards, tmp_path):
    out = tmp_path / "none"
    assert shg(["analyze", "skips", "--run", str(trained_run), "--shards", str(synth_shards),
                "--out", str(out), "--norm", "constant", "--threshold", "0.001"]) == 0
    r = json.loads((out / "skips.json").read_text())
    assert r["perfect"] == 0 and "nothing to ablate" in r["note"]
