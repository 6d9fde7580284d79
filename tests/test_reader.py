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
                                            world=world, targets=rank == 0),
                                 num_workers=workers):
                indices += b["index"].tolist()
                # targets only when asked (a validation loss, the oracle)
                assert ("weights" in b) == (rank == 0) and ("heatmaps" in b) == (rank == 0)
                if rank == 0:
                    assert b["weights"].shape[1] == 17
        assert sorted(indices) == list(range(n))
    first = next(iter(EvalStream(synth_shards, "train2017", 4, rank=0, world=1)))
    again = next(iter(EvalStream(synth_shards, "train2017", 4, rank=0, world=1)))
    assert torch.equal(first["image"], again["image"])  # no augmentation in evaluation


# ----------------------------------------------------------------- bytes each slot reads
def _spans(shard) -> dict[str, tuple[int, int]]:
    """Each sample's byte span in a tar, from Python's tarfile (independent of shards/index):
    from its first member's header to the end of its last member's 512-byte padded data."""
    import tarfile

    spans: dict[str, list[int]] = {}
    with tarfile.open(shard) as tar:
        for m in tar.getmembers():
            key = m.name.split(".", 1)[0]
            end = m.offset_data + -(-m.size // 512) * 512
            spans.setdefault(key, [m.offset, end])[1] = end
    return {k: (a, b) for k, (a, b) in spans.items()}


@pytest.fixture(scope="module")
def two_shards(synth_root, tmp_path_factory):
    from shards.build import BuildOptions, build

    out = tmp_path_factory.mktemp("two_shards")
    build(BuildOptions(coco_root=str(synth_root), split="val2017", out=str(out), shard_size=12,
                       crop_size=64, progress=False), log=lambda *a: None)
    from shards.manifest import read_manifest
    assert len(read_manifest(out)["splits"]["val2017"]["shards"]) == 2
    return out


@pytest.mark.parametrize("slots", [1, 4, 16])
def test_one_pass_reads_each_sample_once_for_any_number_of_slots(two_shards, slots):
    """1, 4 or 16 slots on 2 shards: together they read every sample's bytes exactly once
    (no slot reads a byte another slot uses, or one it throws away)."""
    from shards import index
    from shards.manifest import read_manifest

    entry = read_manifest(two_shards)["splits"]["val2017"]
    spans = {k: v for s in entry["shards"] for k, v in _spans(two_shards / s["file"]).items()}
    n = entry["num_samples"]
    with pytest.raises(Exception, match=f"{n} samples, fewer than the {n + 1} reader slots"):
        TrainStream(two_shards, "val2017", 1, rank=0, world=n + 1)  # a slot would get none
    from shards.reader import slot_range

    sizes = [slot_range(n, slots, q)[1] - slot_range(n, slots, q)[0] for q in range(slots)]
    assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
    keys, total = [], 0
    for rank in range(slots):
        stream = TrainStream(two_shards, "val2017", 1, seed=3, rank=rank, world=slots,
                             num_batches=sizes[rank], shuffle_buffer=4)  # one pass
        before = index.bytes_read()
        got = [k for b in stream for k in b["key"]]
        read = index.bytes_read() - before
        assert read == sum(spans[k][1] - spans[k][0] for k in got)  # its own samples' bytes
        keys += got
        total += read
    assert sorted(keys) == sorted(spans)  # every sample in exactly one slot's pass
    tar_bytes = sum((two_shards / s["file"]).stat().st_size for s in entry["shards"])
    # the whole pass: the shards' bytes, less only the end-of-archive blocks
    assert 0.95 * tar_bytes <= total <= tar_bytes


def test_eval_slots_read_only_their_own_samples(two_shards):
    from shards import index

    n = sum(len(b["key"]) for b in EvalStream(two_shards, "val2017", 100, rank=0, world=1))
    reads = []
    for rank in range(3):
        before = index.bytes_read()
        list(EvalStream(two_shards, "val2017", 2, rank=rank, world=3))
        reads.append(index.bytes_read() - before)
    before = index.bytes_read()
    list(EvalStream(two_shards, "val2017", 2, rank=0, world=1))
    whole = index.bytes_read() - before
    assert n > 6 and sum(reads) == whole and max(reads) < 0.5 * whole


def test_a_deep_resume_reads_only_the_samples_of_the_batches_it_yields(synth_shards):
    """Resuming 50 passes deep reads the bytes of the batches it returns and nothing else, and
    returns what the uninterrupted stream returns there."""
    from shards import index
    from shards.manifest import read_manifest

    entry = read_manifest(synth_shards)["splits"]["train2017"]
    spans = {k: v for s in entry["shards"] for k, v in _spans(synth_shards / s["file"]).items()}
    per_pass = entry["num_samples"] // 4
    deep = 50 * per_pass + 3

    def stream(start, count):
        return TrainStream(synth_shards, "train2017", 4, seed=9, rank=0, world=1,
                           start_batch=start, num_batches=count, shuffle_buffer=16)

    before = index.bytes_read()
    resumed = list(stream(deep, 2))
    read = index.bytes_read() - before
    assert read == sum(spans[k][1] - spans[k][0] for b in resumed for k in b["key"])
    full = list(stream(deep - 2, 4))  # an earlier start gives the same batches there
    for a, b in zip(full[2:], resumed):
        assert a["key"] == b["key"] and torch.equal(a["image"], b["image"])
        assert torch.equal(a["heatmaps"], b["heatmaps"])


def test_lookups_by_key_and_metadata_scans_read_only_what_they_return(synth_shards):
    """A few crops by key (the analyses' montages) and every sample's JSON (the skeleton
    analysis) read those members' bytes alone, not the split."""
    import tarfile

    from shards import index
    from shards.manifest import read_manifest
    from shards.reader import samples_by_key, split_members

    entry = read_manifest(synth_shards)["splits"]["train2017"]
    sizes, members = {}, {}
    for s in entry["shards"]:
        with tarfile.open(synth_shards / s["file"]) as tar:
            for m in tar.getmembers():
                sizes[m.name] = m.size
                members[m.name] = (s["file"], m)
    keys = sorted({n.split(".")[0] for n in sizes})
    wanted = {keys[1], keys[-2]}
    before = index.bytes_read()
    got = samples_by_key(synth_shards, "train2017", wanted, ("png",))
    assert set(got) == wanted
    assert index.bytes_read() - before == sum(sizes[f"{k}.png"] for k in wanted)
    with tarfile.open(synth_shards / members[f"{keys[1]}.png"][0]) as tar:
        assert got[keys[1]]["png"] == tar.extractfile(f"{keys[1]}.png").read()
    before = index.bytes_read()
    metas = list(split_members(synth_shards, "train2017", "json"))
    assert sorted(r["__key__"] for r in metas) == keys
    assert index.bytes_read() - before == sum(sizes[f"{k}.json"] for k in keys)
