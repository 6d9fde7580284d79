"""Shared fixtures: a small synthetic dataset and shards built once per session, and the real
COCO sample from ../shared/data (tests that need it skip with a reason when it is absent)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHG_SHARED_DATA", REPO.parent / "shared" / "data"))
COCO_SAMPLE = SHARED_DATA / "coco-sample"


@pytest.fixture(scope="session", autouse=True)
def _run_from_repo_root():
    """Tests name configs/ and launch `python -m shg...` relative to the repository."""
    old = os.getcwd()
    os.chdir(REPO)
    yield
    os.chdir(old)


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    if not (COCO_SAMPLE / "annotations").is_dir():
        pytest.skip(f"real COCO sample not found at {COCO_SAMPLE} (set SHG_SHARED_DATA)")
    return COCO_SAMPLE


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    from shg.synth import SynthOptions, synthesize

    root = tmp_path_factory.mktemp("synth")
    synthesize(SynthOptions(out=str(root), train=40, val=12, seed=3))
    return root


@pytest.fixture(scope="session")
def synth_shards(synth_root, tmp_path_factory) -> Path:
    from shards.build import BuildOptions, build

    out = tmp_path_factory.mktemp("synth_shards")
    for split in ("train2017", "val2017"):
        build(BuildOptions(coco_root=str(synth_root), split=split, out=str(out), shard_size=16,
                           progress=False), log=lambda *a: None)
    return out


@pytest.fixture(scope="session")
def trained_run(synth_shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("evalrun") / "run"
    proc = subprocess.run(
        [sys.executable, "-m", "shg.train", "--config", "configs/tiny.toml",
         f"data.shards={synth_shards}", f"run_dir={run}", "model.features=16",
         "train.max_steps=4", "eval.every_steps=2", "checkpoint.every_steps=2",
         "data.num_workers=0", "eval.max_samples=8"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
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
