import json

import numpy as np
import pytest
import torch

from shards.schema import COCO_PERSON
from shards.reader import EvalStream, TrainStream, eval_loader, train_loader
from shards.sample import SampleConfig, augmentation_matrix, codec, warp

FLIP_INDEX = COCO_PERSON.flip_index


def heatmaps(kps, crop, cfg):
    return codec(cfg, crop).encode(kps, cfg.occluded_weight)


def test_heatmap_peak_in_the_right_cell_and_weights():
    kps = np.zeros((17, 3))
    kps[0] = (10.0, 20.0, 2)      # cell (2, 5)
    kps[1] = (255.9, 0.1, 1)      # cell (63, 0), occluded-but-labelled
    kps[2] = (300.0, 10.0, 2)     # outside the crop: weight 0
    kps[3] = (100.0, 100.0, 0)    # unlabelled: weight 0
    maps, w = heatmaps(kps, 256, SampleConfig(sigma=1.0))
    assert maps.shape == (17, 64, 64)
    assert np.unravel_index(maps[0].argmax(), (64, 64)) == (5, 2)
    assert np.unravel_index(maps[1].argmax(), (64, 64)) == (0, 63)
    assert maps[0].max() == pytest.approx(1.0)
    assert maps[0][5, 3] == pytest.approx(np.exp(-0.5))  # sigma 1 cell
    assert w.tolist()[:4] == [1.0, 1.0, 0.0, 0.0] and w[4:].sum() == 0
    assert maps[2].max() == 0 and maps[3].max() == 0
    _, w = heatmaps(kps, 256, SampleConfig(occluded_weight=0.5))
    assert w[1] == 0.5


def test_augmentation_moves_pixels_and_keypoints_together():
    rng = np.random.default_rng(4)
    cfg = SampleConfig(flip_prob=0.5)
    for _ in range(10):
        img = np.zeros((256, 256, 3), np.uint8)
        pt = rng.uniform(80, 176, size=2)
        img[int(pt[1]) - 2:int(pt[1]) + 3, int(pt[0]) - 2:int(pt[0]) + 3] = 255
        centre = np.floor(pt) + 0.5  # centre of the bright 5x5 block
        m, _ = augmentation_matrix(rng, cfg, 256)
        out = warp(img, m)
        ys, xs = np.nonzero(out[:, :, 0] > 60)
        found = np.array([xs.mean() + 0.5, ys.mean() + 0.5])
        expected = m[:, :2] @ centre + m[:, 2]
        assert np.abs(found - expected).max() < 1.0


def test_flip_swaps_left_and_right(synth_shards):
    cfg = SampleConfig(rotate_deg=0, scale_min=1, scale_max=1, flip_prob=1.0)
    plain = next(iter(EvalStream(synth_shards, "train2017", 1, rank=0, world=1)))
    raw_meta = plain["meta"][0]
    from shards.sample import decode
    from shards.reader import read_shard
    from shards.manifest import read_manifest
    entry = read_manifest(synth_shards)["splits"]["train2017"]["shards"][0]
    raw = next(read_shard(synth_shards / entry["file"], None))
    flipped = decode(raw, cfg, np.random.default_rng(0), COCO_PERSON)
    orig = np.asarray(json.loads(raw["json"])["keypoints"])
    for k in range(17):
        src = orig[FLIP_INDEX[k]]
        if src[2] > 0:
            assert flipped["keypoints"][k][0] == pytest.approx(256 - src[0], abs=1e-3)
            assert flipped["keypoints"][k][1] == pytest.approx(src[1], abs=1e-3)
    assert np.allclose(flipped["image"], plain["image"][0].numpy()[:, :, ::-1], atol=1e-6)
    assert raw_meta["ann_id"] == json.loads(raw["json"])["ann_id"]


def _first_pass(batches) -> list[str]:
    """The keys a stream yields before it repeats one: one pass over its part of the data."""
    seen: list[str] = []
    for b in batches:
        for k in b["key"]:
            if k in seen:
                return seen
            seen.append(k)
    raise AssertionError("the stream never repeated a sample: ask for more batches")


def _keys_of(shards, split) -> set[str]:
    from shards.manifest import read_manifest
    from shards.reader import read_shard

    return {raw["__key__"] for s in read_manifest(shards)["splits"][split]["shards"]
            for raw in read_shard(shards / s["file"], None)}


def test_two_ranks_split_each_pass_by_shard_and_get_equal_batches(synth_shards, monkeypatch):
    from shards.manifest import read_manifest
    entry = read_manifest(synth_shards)["splits"]["train2017"]
    n = entry["num_samples"]
    assert len(entry["shards"]) >= 2  # enough shards: split by shard
    streams, counts = [], []
    for rank in (0, 1):
        monkeypatch.setenv("RANK", str(rank))
        monkeypatch.setenv("WORLD_SIZE", "2")
        # more batches than a pass holds: each rank's stream comes round again
        stream = TrainStream(synth_shards, "train2017", 4, seed=5, num_batches=n // 4 + 2,
                             shuffle_buffer=1)
        assert stream.rank == rank and stream.world == 2
        batches = list(train_loader(stream))
        counts.append(len(batches))
        streams.append([k for b in batches for k in b["key"]])
        assert batches[0]["image"].shape == (4, 3, 256, 256)
    assert counts == [n // 4 + 2] * 2
    # Pass 0 is a prefix of each rank's stream: some split of n into the two prefixes must be
    # disjoint and cover the split exactly (a lost or doubled sample breaks every split).
    everything = _keys_of(synth_shards, "train2017")
    fits = [cut for cut in range(n + 1)
            if not set(streams[0][:cut]) & set(streams[1][:n - cut])
            and set(streams[0][:cut]) | set(streams[1][:n - cut]) == everything]
    assert fits and all(0 < cut < n for cut in fits)


def test_fewer_shards_than_slots_split_by_sample(synth_root, tmp_path):
    """One shard, 2 ranks x 2 workers: the 4 slots take every 4th sample of it."""
    from shards.build import BuildOptions, build

    build(BuildOptions(coco_root=str(synth_root), split="val2017", out=str(tmp_path),
                       shard_size=10_000, progress=False), log=lambda *a: None)
    keys = []
    for rank in (0, 1):
        stream = TrainStream(tmp_path, "val2017", 2, seed=1, rank=rank, world=2,
                             num_workers=2, num_batches=40, shuffle_buffer=1)
        keys.append(_first_pass(train_loader(stream)))
    everything = _keys_of(tmp_path, "val2017")
    assert not set(keys[0]) & set(keys[1])
    assert set(keys[0]) | set(keys[1]) == everything
    assert abs(len(keys[0]) - len(keys[1])) <= 2


def test_resume_mid_stream_is_bit_identical_with_workers(synth_shards):
    def batches(start, count, workers):
        stream = TrainStream(synth_shards, "train2017", 3, seed=11, rank=0, world=1,
                             num_workers=workers, start_batch=start, num_batches=count)
        return list(train_loader(stream))

    full = batches(0, 12, 2)
    resumed = batches(5, 7, 2)
    assert [b["key"] for b in full[5:]] == [b["key"] for b in resumed]
    for a, b in zip(full[5:], resumed):
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["heatmaps"], b["heatmaps"])
    with pytest.raises(RuntimeError, match="workers"):
        next(iter(torch.utils.data.DataLoader(
            TrainStream(synth_shards, "train2017", 2, rank=0, world=1, num_workers=1),
            batch_size=None, num_workers=2)))


def test_eval_reads_every_sample_once_across_ranks_and_workers(synth_shards):
    from shards.manifest import read_manifest
    n = read_manifest(synth_shards)["splits"]["train2017"]["num_samples"]
    for world, workers in ((1, 0), (2, 2), (3, 1)):
        indices = []
        for rank in range(world):
            for b in eval_loader(EvalStream(synth_shards, "train2017", 5, rank=rank,
                                            world=world), num_workers=workers):
                indices += b["index"].tolist()
                assert b["weights"].shape[1] == 17
        assert sorted(indices) == list(range(n))
    first = next(iter(EvalStream(synth_shards, "train2017", 4, rank=0, world=1)))
    again = next(iter(EvalStream(synth_shards, "train2017", 4, rank=0, world=1)))
    assert torch.equal(first["image"], again["image"])  # no augmentation in evaluation
