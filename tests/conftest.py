"""Shared fixtures: a small synthetic dataset and shards built once per session, and the real
COCO sample from ../shared/data (tests that need it skip with a reason when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SHG_SHARED_DATA", REPO.parent / "shared" / "data"))
COCO_SAMPLE = SHARED_DATA / "coco-sample"


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
