"""The data path that feeds a GPU, tested on the CPU: uint8 batches normalised on the device,
augmentation and targets on the device (data.augment_on = "device") equal to the loader
path's, and exact resume on both paths."""


import numpy as np
import pytest
import torch

from shards.manifest import read_manifest
from shards.reader import EvalStream, TrainStream, read_shard, train_loader
from shards.sample import SampleConfig, decode_png, model_input, resolve_augment_on, \
    training_inputs
from shards.schema import COCO_PERSON
from shg.config import ConfigError, load_config


def test_batches_are_uint8_and_the_device_subtracts_the_mean(synth_shards):
    batch = next(iter(EvalStream(synth_shards, "val2017", 3, rank=0, world=1,
                                 mean_from="train2017")))
    assert batch["image"].dtype == torch.uint8 and batch["image"].shape == (3, 3, 256, 256)
    entry = read_manifest(synth_shards)["splits"]
    raw = next(read_shard(synth_shards / entry["val2017"]["shards"][0]["file"], None))
    assert raw["__key__"] == batch["key"][0]
    mean = np.asarray(entry["train2017"]["mean_rgb"], dtype=np.float64)  # the training mean
    expected = (decode_png(raw["png"]).astype(np.float64) - mean) / 255.0
    x = model_input(batch, "cpu")
    assert x.dtype == torch.float32
    assert np.abs(x[0].numpy().transpose(1, 2, 0) - expected).max() < 1e-6
    assert model_input(batch, "cpu", channels_last=True).is_contiguous(
        memory_format=torch.channels_last)


def _streams(shards, count, start=0, seed=3, batch=8):
    return {where: TrainStream(shards, "train2017", batch, seed=seed, rank=0, world=1,
                               num_batches=count, start_batch=start,
                               cfg=SampleConfig(augment_on=where))
            for where in ("loader", "device")}


def test_device_augmentation_gives_the_loader_paths_targets_and_images(synth_shards):
    streams = _streams(synth_shards, 5)
    flips = 0
    for a, b in zip(streams["loader"], streams["device"]):
        assert a["key"] == b["key"]
        assert "heatmaps" not in b  # the worker only decoded
        xa, ta, wa = training_inputs(a, streams["loader"].cfg, "cpu", COCO_PERSON)
        xb, tb, wb = training_inputs(b, streams["device"].cfg, "cpu", COCO_PERSON)
        assert torch.equal(ta, tb) and torch.equal(wa, wb)  # targets: the same numbers
        # images: cv2 rounds to uint8 with 1/32-pixel interpolation weights; the device path
        # keeps floats. Half a grey level is that rounding; a misplaced sampling grid (half a
        # pixel off) would be tens of levels at the edges.
        grey = (xa - xb).abs() * 255
        assert grey.max() < 1.0 and grey.mean() < 0.3, (grey.max(), grey.mean())
        assert b["flip"].dtype == torch.bool
        flips += int(b["flip"].sum())
    assert 0 < flips < 40  # both flipped and unflipped samples were compared


def test_device_path_resumes_mid_stream_bit_identically(synth_shards):
    cfg = SampleConfig(augment_on="device")
    full = list(train_loader(TrainStream(synth_shards, "train2017", 3, seed=11, rank=0,
                                         world=1, num_workers=2, num_batches=10, cfg=cfg)))
    resumed = list(train_loader(TrainStream(synth_shards, "train2017", 3, seed=11, rank=0,
                                            world=1, num_workers=2, start_batch=4,
                                            num_batches=6, cfg=cfg)))
    assert [b["key"] for b in full[4:]] == [b["key"] for b in resumed]
    for a, b in zip(full[4:], resumed):
        for got, want in zip(training_inputs(b, cfg, "cpu", COCO_PERSON),
                             training_inputs(a, cfg, "cpu", COCO_PERSON)):
            assert torch.equal(got, want)


def test_augment_on_auto_resolves_by_device_and_bad_values_are_named():
    assert resolve_augment_on("auto", cuda=True) == "device"
    assert resolve_augment_on("auto", cuda=False) == "loader"
    assert resolve_augment_on("device", cuda=False) == "device"
    with pytest.raises(ConfigError, match="data.augment_on 'gpu'; valid: auto, loader, device"):
        load_config("configs/tiny.toml", ["data.augment_on=gpu"])


@pytest.mark.slow
def test_training_with_device_augmentation_resumes_exactly(small_shards, tmp_path, capsys):
    from helpers import kill_and_resume, metrics, same, train_here, weights

    common = ["train.max_steps=4", "eval.every_steps=100", "checkpoint.every_steps=2",
              "data.augment_on=device"]
    kill_and_resume(small_shards, tmp_path, common, kill_at=3, resumes_from=2, final=4,
                    capsys=capsys)
    assert 'augment_on = "device"' in (tmp_path / "ref" / "config.toml").read_text()
    losses = [r["loss"] for r in metrics(tmp_path / "ref") if "loss" in r]
    assert len(losses) == 4 and all(np.isfinite(losses))
    # the loader path trains on other pixels (OpenCV's rounding): a different run
    assert train_here(small_shards, tmp_path / "loader", *common[:-1],
                      "data.augment_on=loader") == 0
    assert not same(weights(tmp_path / "loader", 4), weights(tmp_path / "ref", 4))


def test_per_joint_loss_weights_of_the_schema_reach_both_paths(synth_shards):
    """A schema's `weights` multiply every joint's loss weight, on the loader path and on the
    device path alike (targets unchanged)."""
    from dataclasses import replace

    weighted = replace(COCO_PERSON, weights=tuple(0.5 if i % 2 else 2.0 for i in range(17)))
    for where in ("loader", "device"):
        cfg = SampleConfig(augment_on=where)
        plain_stream = TrainStream(synth_shards, "train2017", 4, seed=2, rank=0, world=1,
                                   num_batches=1, cfg=cfg)
        batch = next(iter(train_loader(plain_stream)))
        _, t0, w0 = training_inputs(batch, cfg, "cpu", COCO_PERSON)
        plain_stream.schema = weighted  # the shards' schema, as a schema file would give it
        batch = next(iter(train_loader(plain_stream)))
        x1, t1, w1 = training_inputs(batch, cfg, "cpu", weighted)
        assert torch.equal(t0, t1), where
        assert torch.equal(w1, w0 * torch.tensor(weighted.weights, dtype=torch.float32)), where
        assert (w0 > 0).any()
