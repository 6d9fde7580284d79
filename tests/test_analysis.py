import json

import numpy as np
import pytest

from shg.analysis.common import nearest
from shg.cli import main as shg


def _keys(shards, split):
    from shards.manifest import read_manifest
    from shards.reader import read_shard

    keys = set()
    for s in read_manifest(shards)["splits"][split]["shards"]:
        keys |= {raw["__key__"] for raw in read_shard(shards / s["file"], None)}
    return keys


def _raws(shards, split):
    from shards.manifest import read_manifest
    from shards.reader import read_shard

    for s in read_manifest(shards)["splits"][split]["shards"]:
        yield from read_shard(shards / s["file"], None)


def test_kmeans_finds_three_poses_with_a_high_silhouette():
    """Three distinct poses with small jitter: k = 3 must win, clearly."""
    from shg.analysis.skeletons import SkeletonOptions, cluster, normalise

    rng = np.random.default_rng(0)
    poses = rng.uniform(0, 100, size=(3, 17, 2))
    kps = np.concatenate([np.concatenate([poses[i] + rng.normal(0, 1.0, (40, 17, 2)),
                                          np.full((40, 17, 1), 2.0)], -1) for i in range(3)])
    norm, labelled = normalise(kps)
    assert labelled.all()
    assert np.allclose(np.nanmean(norm, 1), 0, atol=1e-9)                  # centred
    assert np.allclose(np.sqrt((norm ** 2).sum(-1).mean(1)), 1.0)          # unit RMS
    res = cluster(norm.reshape(120, -1), SkeletonOptions(shards="", split="", out="",
                                                          k_min=2, k_max=5))
    assert res["best_k"] == 3 and res["silhouette"][3] > 0.8
    assert sorted(res["sizes"][3]) == [40, 40, 40]
    assert res["silhouette"][2] < res["silhouette"][3] and res["silhouette"][5] < \
        res["silhouette"][3]


def test_nearest_matches_brute_force():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(1000, 7))
    points = rng.normal(size=(13, 7))
    brute = ((points[:, None] - data[None]) ** 2).sum(-1).argmin(1)
    assert (nearest(points, data, chunk=97) == brute).all()


def test_latent_pca_walk(trained_run, small_shards, tmp_path):
    out = tmp_path / "latent"
    assert shg(["analyze", "latent", "--run", str(trained_run), "--shards", str(small_shards),
                "--split", "train2017", "--out", str(out), "--components", "3",
                "--walk=-2,0,2"]) == 0
    r = json.loads((out / "latent.json").read_text())
    ratios = np.asarray(r["explained_variance_ratio"])
    latents = np.load(out / "latents.npy", mmap_mode="r")
    # features 16; the innermost map is a 16th of the heatmap side: 2x2 for 128 px crops
    assert latents.shape == (r["samples"], 16 * 2 * 2)
    # the ratios are the latents' own: eigenvalues of their covariance over the total variance
    # (numpy here, scikit-learn's randomised SVD there)
    centred = latents - latents.mean(0)
    eigen = np.linalg.svd(centred, compute_uv=False) ** 2
    np.testing.assert_allclose(ratios[:5], (eigen / eigen.sum())[:5], rtol=1e-3, atol=1e-6)
    real = _keys(small_shards, "train2017")
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
    # the populations hold what they claim, counted here from the shards' own json
    labelled = [int((np.asarray(json.loads(raw["json"])["keypoints"]).reshape(17, 3)[:, 2]
                     > 0).sum()) for raw in _raws(synth_shards, "train2017")]
    assert r["populations"]["all"]["count"] == sum(n >= 8 for n in labelled)
    assert r["populations"]["full"]["count"] == sum(n == 17 for n in labelled)
    from shg.analysis.skeletons import normalise, read_skeletons
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    _, kps = read_skeletons(str(synth_shards), "train2017")
    norm, labelled = normalise(kps)
    full = norm[labelled.all(1)].reshape(int(labelled.all(1).sum()), -1)
    for name, pop in r["populations"].items():
        assert set(pop["silhouette"]) == {"2", "3", "4"}, name
        # the best k is the one of the highest silhouette
        assert pop["best_k"] == int(max(pop["silhouette"], key=pop["silhouette"].get))
    # the full population's silhouettes, recomputed here with scikit-learn directly
    for k, score in r["populations"]["full"]["silhouette"].items():
        labels = KMeans(n_clusters=int(k), n_init=10, random_state=0).fit(full).labels_
        assert score == pytest.approx(silhouette_score(full, labels), abs=1e-9)
    for name, pop in r["populations"].items():
        assert all(sum(sizes) == pop["count"] for sizes in pop["cluster_sizes"].values())
        assert (out / f"clusters_{name}.png").exists() and (out / f"montage_{name}.png").exists()
    assert r["populations"]["full"]["count"] <= r["populations"]["all"]["count"]
    assert (out / "silhouette.png").stat().st_size > 0


def test_skip_ablation_changes_the_output(trained_run, small_shards, tmp_path):
    out = tmp_path / "skips"
    # a lenient threshold so the briefly trained model has some "perfect" samples, not all
    assert shg(["analyze", "skips", "--run", str(trained_run), "--shards", str(small_shards),
                "--split", "val2017", "--out", str(out), "--norm", "bbox",
                "--threshold", "1.0"]) == 0
    r = json.loads((out / "skips.json").read_text())
    assert 0 < r["perfect"] < r["samples_seen"]
    s = r["settings"]
    assert set(s) == {"none", "level 1", "level 2", "level 3", "level 4", "all"}
    assert s["none"]["heatmap_change"] == 0
    assert s["none"]["pck"] == 1.0  # the perfect samples, by their definition
    assert s["all"]["heatmap_change"] > 0
    assert all(s[f"level {i}"]["heatmap_change"] > 0 for i in range(1, 5))
    assert (out / "skips.png").exists() and (out / "skips_heatmaps.png").exists()


def test_skips_with_nothing_perfect_says_so(trained_run, small_shards, tmp_path):
    out = tmp_path / "none"
    assert shg(["analyze", "skips", "--run", str(trained_run), "--shards", str(small_shards),
                "--out", str(out), "--norm", "constant", "--threshold", "0.001"]) == 0
    r = json.loads((out / "skips.json").read_text())
    assert r["perfect"] == 0 and "nothing to ablate" in r["note"]
