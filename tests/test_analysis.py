import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from shg.analysis.common import nearest
from shg.cli import main as shg
from shg.errors import UserError
from shg.evaluation.core import Placement, placement


def _keys(shards, split):
    from shards.manifest import read_manifest
    from shards.reader import read_shard

    keys = set()
    for s in read_manifest(shards)["splits"][split]["shards"]:
        keys |= {raw["__key__"] for raw in read_shard(shards / s["file"], None)}
    return keys


def _ordered_keys(shards, split) -> list[str]:
    """The split's keys in manifest order (index i = the i-th)."""
    return [raw["__key__"] for raw in _raws(shards, split)]


@pytest.fixture
def forwards(monkeypatch):
    """Every forward pass of the models the analyses load in this process: (the device of the
    model's parameters, the device of its input, the autocast dtype then or None)."""
    from shg.evaluation.core import ModelOnSplit

    seen = []
    load = ModelOnSplit.load_model

    def recording(self, poses=True):
        model, meta, source = load(self, poses)

        def hook(module, inputs):
            kind = inputs[0].device.type
            dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else None
            seen.append((next(module.parameters()).device, inputs[0].device, dtype))

        model.register_forward_pre_hook(hook)
        return model, meta, source

    monkeypatch.setattr(ModelOnSplit, "load_model", recording)
    return seen


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
    order = _ordered_keys(small_shards, "val2017")
    assert r["samples_seen"] == r["split_samples"] == len(order)  # fewer than 256: read all
    assert r["perfect_samples"] == sorted(r["perfect_samples"], key=order.index)

    # with a quota of 2, reading stops at the batch that holds the second perfect sample
    early = tmp_path / "early"
    assert shg(["analyze", "skips", "--run", str(trained_run), "--shards", str(small_shards),
                "--split", "val2017", "--out", str(early), "--norm", "bbox", "--threshold",
                "1.0", "--max-perfect", "2", "--batch-size", "4", "--workers", "0"]) == 0
    e = json.loads((early / "skips.json").read_text())
    assert e["perfect_samples"] == r["perfect_samples"][:2]  # the first ones
    second = order.index(e["perfect_samples"][1])
    assert e["samples_seen"] == min(len(order), (second // 4 + 1) * 4) < len(order)
    assert e["settings"]["none"]["pck"] == 1.0 and e["settings"]["all"]["heatmap_change"] > 0


def test_skips_with_nothing_perfect_says_so(trained_run, small_shards, tmp_path):
    out = tmp_path / "none"
    assert shg(["analyze", "skips", "--run", str(trained_run), "--shards", str(small_shards),
                "--out", str(out), "--norm", "constant", "--threshold", "0.001"]) == 0
    r = json.loads((out / "skips.json").read_text())
    assert r["perfect"] == 0 and "nothing to ablate" in r["note"]


# ----------------------------------------------------------------------------- device choice
def test_placement_picks_cuda_only_where_there_is_one_and_honours_the_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert placement() == Placement(torch.device("cpu"), "fp32")  # no autocast on the CPU
    assert placement("cpu", "bf16").precision == "bf16"
    for device, message in (("cuda", "this process sees no CUDA GPU; use --device cpu"),
                            ("gpu", "not a device here; use auto, cpu, cuda or cuda:N"),
                            ("mps", "not a device here")):
        with pytest.raises(UserError, match=message):
            placement(device)
    with pytest.raises(UserError, match="fp16 is for CUDA GPUs; on the CPU use fp32 or bf16"):
        placement("cpu", "fp16")
    # a node with two GPUs that compute bf16 (sm_80); this process is its rank 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert placement() == Placement(torch.device("cuda", 1), "bf16")
    assert placement("cuda") == Placement(torch.device("cuda", 1), "bf16")
    assert placement("cuda:0", "fp32") == Placement(torch.device("cuda", 0), "fp32")
    assert placement("cpu") == Placement(torch.device("cpu"), "fp32")  # cpu wins over a GPU
    monkeypatch.setenv("LOCAL_RANK", "3")  # more ranks than GPUs: they share them
    assert placement().device == torch.device("cuda", 1)
    with pytest.raises(UserError, match="sees 2 CUDA GPU"):
        placement("cuda:2")
    # a GPU without native bf16 (V100, sm_70): fp16 autocast
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 0))
    assert placement().precision == "fp16"


def test_autocast_follows_the_precision():
    layer = torch.nn.Linear(4, 4)
    with Placement(torch.device("cpu"), "bf16").autocast():
        assert torch.is_autocast_enabled("cpu")
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    with Placement(torch.device("cpu"), "fp32").autocast():
        assert not torch.is_autocast_enabled("cpu")
        assert layer(torch.ones(1, 4)).dtype == torch.float32


def test_device_cpu_is_honoured_where_cuda_is_available(trained_run, small_shards, tmp_path,
                                                         monkeypatch, forwards):
    """A process that sees CUDA (claimed here: there is none, so anything that went there
    would fail) runs the analyses where --device says: the model and every batch on the CPU."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self, *a, **k: self)  # the loader's
    assert placement("auto", "fp32").device.type == "cuda"  # what auto would pick here
    out = tmp_path / "latent"
    assert shg(["analyze", "latent", "--device", "cpu", "--run", str(trained_run), "--shards",
                str(small_shards), "--split", "val2017", "--out", str(out), "--workers", "0",
                "--components", "2"]) == 0
    r = json.loads((out / "latent.json").read_text())
    assert (r["device"], r["precision"], r["ranks"]) == ("cpu", "fp32", 1)
    assert len(forwards) > 1
    assert all(p.type == "cpu" and x.type == "cpu" and dtype is None for p, x, dtype in forwards)
    forwards.clear()
    skips = tmp_path / "skips"
    assert shg(["analyze", "skips", "--device", "cpu", "--run", str(trained_run), "--shards",
                str(small_shards), "--split", "val2017", "--out", str(skips), "--workers", "0",
                "--threshold", "1.0", "--max-perfect", "1"]) == 0
    assert json.loads((skips / "skips.json").read_text())["device"] == "cpu"
    assert len(forwards) > 1 and all(x.type == "cpu" for _, x, _ in forwards)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without CUDA")
def test_auto_runs_on_the_cpu_without_cuda_and_cuda_is_refused_in_one_line(
        trained_run, small_shards, tmp_path, forwards, capsys):
    out = tmp_path / "latent"
    assert shg(["analyze", "latent", "--run", str(trained_run), "--shards", str(small_shards),
                "--split", "val2017", "--out", str(out), "--max-samples", "12",
                "--components", "2"]) == 0
    assert json.loads((out / "latent.json").read_text())["device"] == "cpu"
    assert forwards and all(x.type == "cpu" and d is None for _, x, d in forwards)
    capsys.readouterr()
    assert shg(["analyze", "skips", "--device", "cuda", "--run", str(trained_run), "--shards",
                str(small_shards), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "sees no CUDA GPU; use --device cpu" in err


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_analyses_run_on_cuda_under_autocast_by_default(trained_run, small_shards, tmp_path,
                                                         forwards):
    out = tmp_path / "latent"
    assert shg(["analyze", "latent", "--run", str(trained_run), "--shards", str(small_shards),
                "--split", "train2017", "--out", str(out), "--components", "2"]) == 0
    r = json.loads((out / "latent.json").read_text())
    assert r["device"].startswith("cuda") and r["precision"] in ("bf16", "fp16")
    dtype = torch.bfloat16 if r["precision"] == "bf16" else torch.float16
    assert len(forwards) > 1
    assert all(p.type == "cuda" and x.type == "cuda" and d == dtype for p, x, d in forwards)
    # the rows are fp32, and the autocast latents are the fp32 CPU ones up to rounding
    cpu = tmp_path / "latent-cpu"
    assert shg(["analyze", "latent", "--device", "cpu", "--run", str(trained_run), "--shards",
                str(small_shards), "--split", "train2017", "--out", str(cpu),
                "--components", "2"]) == 0
    a, b = np.load(out / "latents.npy"), np.load(cpu / "latents.npy")
    assert a.dtype == np.float32 and a.shape == b.shape
    assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.99
    forwards.clear()
    skips = tmp_path / "skips"
    assert shg(["analyze", "skips", "--run", str(trained_run), "--shards", str(small_shards),
                "--split", "val2017", "--out", str(skips), "--threshold", "1.0"]) == 0
    assert json.loads((skips / "skips.json").read_text())["device"].startswith("cuda")
    assert forwards and all(x.type == "cuda" and d == dtype for _, x, d in forwards)


def test_loader_workers_follow_the_cpus_of_the_process(monkeypatch):
    import os

    from shg.analysis.common import auto_workers

    for name in ("SLURM_CPUS_PER_TASK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(2)))
    assert auto_workers() == 1  # this machine's 2 cores: one for the rank, one reads
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert auto_workers() == 8  # at most 8
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "8")  # a Slurm job's share of a big node
    assert auto_workers() == 7
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # shared by 4 ranks of --nproc 4
    assert auto_workers() == 1


def test_the_slurm_analysis_job_asks_for_a_gpu():
    """The analysis jobs run on the job's GPU (device auto): the job must ask for one, with
    the CPUs its loader workers use."""
    from launcher.profile import load_profile
    from launcher.stages import pipeline_stages
    from launcher.submit import sbatch_preview

    profile = load_profile("slurm/profiles/example-2x4gpu.toml")
    (stage,) = [s for s in pipeline_stages("/data/coco", "/shared/shards", "configs/coco.toml",
                                           "/shared/runs/r1", [], profile, which=("analyze",))]
    text = sbatch_preview(stage, profile, "/shared/jobs/r1", code="/shared/jobs/r1/code")
    assert profile.gpus_per_node == 4 and "#SBATCH --gpus-per-node=1" in text
    assert f"#SBATCH --cpus-per-task={profile.cpus_per_task}" in text
    kinds = {args[0]: args[1] for args in stage.args}
    assert "device" not in kinds["latent"] and "device" not in kinds["skips"]  # auto


# ----------------------------------------------------------------------------- ranks
@pytest.mark.slow
def test_analyses_over_two_ranks_match_one_process(trained_run, small_shards, tmp_path):
    """`--nproc 2` (torchrun, as shg eval's): each rank writes its rows of the latents and
    searches its share for perfect samples; the results are the single process's."""
    common = ["--run", str(trained_run), "--shards", str(small_shards), "--split", "val2017",
              "--components", "2"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert shg(["analyze", "latent", *common, "--out", str(one)]) == 0
    proc = subprocess.run([sys.executable, "-m", "shg.cli", "analyze", "latent", "--nproc", "2",
                           *common, "--out", str(two)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("latent: 24 samples") == 1  # printed once, by rank 0
    a, b = json.loads((one / "latent.json").read_text()), json.loads((two / "latent.json")
                                                                     .read_text())
    assert b["ranks"] == 2 and b["samples"] == a["samples"] == 24
    np.testing.assert_allclose(np.load(two / "latents.npy"), np.load(one / "latents.npy"),
                               rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(np.load(two / "predictions.npy"),
                               np.load(one / "predictions.npy"), atol=1e-3)
    np.testing.assert_allclose(b["explained_variance_ratio"][:3],
                               a["explained_variance_ratio"][:3], rtol=1e-3)
    assert b["mean_nearest"] == a["mean_nearest"]

    skips = ["--run", str(trained_run), "--shards", str(small_shards), "--split", "val2017",
             "--threshold", "1.0"]
    assert shg(["analyze", "skips", *skips, "--out", str(one / "skips")]) == 0
    proc = subprocess.run([sys.executable, "-m", "shg.cli", "analyze", "skips", "--nproc", "2",
                           *skips, "--out", str(two / "skips")], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = (json.loads((d / "skips" / "skips.json").read_text()) for d in (one, two))
    assert b["ranks"] == 2 and b["samples_seen"] == a["samples_seen"] == 24
    assert b["perfect_samples"] == a["perfect_samples"]
    for name, setting in a["settings"].items():
        assert b["settings"][name]["pck"] == pytest.approx(setting["pck"], abs=1e-9)
        assert b["settings"][name]["heatmap_change"] == pytest.approx(
            setting["heatmap_change"], rel=1e-4, abs=1e-7)
    # a quota of 3 over 2 ranks: each stops at 2 of its share, the first 3 of those are kept
    proc = subprocess.run([sys.executable, "-m", "shg.cli", "analyze", "skips", "--nproc", "2",
                           *skips, "--max-perfect", "3", "--batch-size", "4", "--out",
                           str(two / "early")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    e = json.loads((two / "early" / "skips.json").read_text())
    assert e["perfect"] == 3 and set(e["perfect_samples"]) <= set(a["perfect_samples"])
    assert e["samples_seen"] < 24
