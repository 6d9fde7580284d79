"""Shared fixtures, built once per session (per xdist worker): a small synthetic dataset, its
shards at 256 px (the thesis layout) and at 128 px (the training tests: a quarter of the
pixels), a trained 256 px run for the evaluation and analysis tests, the reference runs the
resume tests compare with, and the real COCO sample from ../shared/data.

Under pytest-xdist (`make test` runs two workers on two cores) every worker and the processes
it starts compute with one thread: two workers then share the machine instead of fighting
over it, and a run and its reference always use the same thread count (bit-exact reruns)."""

from __future__ import annotations

import os
from pathlib import Path

if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHG_SHARED_DATA", REPO.parent / "shared" / "data"))
COCO_SAMPLE = SHARED_DATA / "coco-sample"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config):
    if os.environ.get("PYTEST_XDIST_WORKER"):
        import torch

        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def _run_from_repo_root():
    """Tests name configs/ and launch `python -m shg...` relative to the repository."""
    old = os.getcwd()
    os.chdir(REPO)
    yield
    os.chdir(old)


def shared_data(name: str) -> Path:
    """A folder of ../shared/data; missing, it skips the test (fails it in CI, which has it)."""
    path = SHARED_DATA / name
    if not path.is_dir():
        if IN_CI:
            pytest.fail(f"{path} is missing: CI runs with ../shared beside the clone")
        pytest.skip(f"{path} not found (set SHG_SHARED_DATA)")
    return path


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    return shared_data("coco-sample")


@pytest.fixture(scope="session")
def coco_val_shards(coco_sample, tmp_path_factory) -> Path:
    """The real COCO sample's val2017 persons as shards (built once for every test using them)."""
    from shards.build import BuildOptions, build

    out = tmp_path_factory.mktemp("coco_val") / "shards"
    build(BuildOptions(coco_root=str(coco_sample), split="val2017", out=str(out),
                       progress=False), log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    from shg.synth import SynthOptions, synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(SynthOptions(out=str(root), train=40, val=12, seed=3))
    return root


def _build(root: Path, out: Path, size: int = 256) -> Path:
    from shards.build import BuildOptions, build

    for split in ("train2017", "val2017"):
        build(BuildOptions(coco_root=str(root), split=split, out=str(out), shard_size=16,
                           progress=False, crop_size=size), log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def synth_shards(synth_root, tmp_path_factory) -> Path:
    return _build(synth_root, tmp_path_factory.mktemp("synth_shards"))


@pytest.fixture(scope="session")
def small_shards(synth_root, tmp_path_factory) -> Path:
    """The same persons cut at 128 px (32x32 heatmaps: a quarter of the 256 layout's pixels)."""
    return _build(synth_root, tmp_path_factory.mktemp("small_shards"), size=128)


@pytest.fixture(scope="session")
def trained_run(small_shards, tmp_path_factory):
    """4 steps of a 2-stack, 16-feature SHG on the 128 px shards, trained in this process:
    the model of the evaluation, analysis, predict and export tests (use it with
    `small_shards`)."""
    from helpers import train_here

    run = tmp_path_factory.mktemp("evalrun") / "run"
    assert train_here(small_shards, run, base=[
        f"data.shards={small_shards}", f"run_dir={run}", "model.features=16",
        "train.max_steps=4", "eval.every_steps=2", "checkpoint.every_steps=2",
        "data.num_workers=0", "eval.max_samples=8"]) == 0
    return run


@pytest.fixture(scope="session")
def exported_model(trained_run, tmp_path_factory) -> Path:
    """trained_run's best weights as `shg export` writes them (what predict reads)."""
    from shg.weights import export

    return export(trained_run, tmp_path_factory.mktemp("exported") / "model.safetensors")


@pytest.fixture(scope="session")
def detector_weights(tmp_path_factory) -> Path:
    """A state dict of torchvision's ssdlite320_mobilenet_v3_large (a seeded random
    initialisation: there is no internet here to fetch the trained one)."""
    import torch
    from torchvision.models import get_model

    torch.manual_seed(0)
    model = get_model("ssdlite320_mobilenet_v3_large", weights=None, weights_backbone=None,
                      num_classes=91)
    state = model.state_dict()
    # a random initialisation scores every class ~1/91 alike; spread the class scores and
    # favour persons so that both person and other boxes come out, at several scores
    g = torch.Generator().manual_seed(0)
    for key, bias in state.items():
        if key.startswith("head.classification_head") and key.endswith(".1.bias") \
                and bias.numel() % 91 == 0:
            bias.copy_(torch.randn(bias.shape, generator=g) * 1.5)
            bias.view(-1, 91)[:, 1] += 3.0
    path = tmp_path_factory.mktemp("detector") / "ssdlite.pth"
    torch.save(state, path)
    return path


@pytest.fixture(scope="session")
def reference_run(small_shards, tmp_path_factory) -> Path:
    """helpers.COMMON uninterrupted, in this process: what every 1-process resume test must
    end with, bit for bit."""
    from helpers import COMMON, train_here

    run = tmp_path_factory.mktemp("reference") / "run"
    assert train_here(small_shards, run, *COMMON) == 0
    return run


@pytest.fixture(scope="session")
def reference_run_2proc(small_shards, tmp_path_factory) -> Path:
    """helpers.COMMON (10 steps) uninterrupted on 2 processes (`shg train --nproc 2`)."""
    from helpers import COMMON, train_process

    run = tmp_path_factory.mktemp("reference2") / "run"
    train_process(small_shards, run, *COMMON, "train.max_steps=10", nproc=2)
    return run


@pytest.fixture
def fake_sbatch(tmp_path, monkeypatch) -> Path:
    """A stand-in `sbatch` on PATH that answers with job ids 1001, 1002, ... and keeps each
    script it was handed as BIN/sbatch-ID.sh (the script submitit really submitted)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "sbatch").write_text(
        "#!/bin/bash\nn=$(cat \"$0.count\" 2>/dev/null || echo 1000)\n"
        "echo $((n + 1)) > \"$0.count\"\ncp \"$1\" \"$0-$((n + 1)).sh\"\n"
        "echo \"Submitted batch job $((n + 1))\"\n")
    (bin_dir / "srun").write_text("#!/bin/bash\nexit 0\n")  # submitit looks for it
    for tool in ("sbatch", "srun"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return bin_dir

