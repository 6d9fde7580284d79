"""On a CUDA GPU (marked `gpu`, skipped without one): bf16 training killed and resumed, both
augmentation paths, DeepSpeed ZeRO-2 on one GPU, `shg eval` and `shg predict`, compile.

Run where a GPU is: `.venv/bin/python -m pytest -m gpu tests/test_gpu.py`."""

import json
import os
import subprocess
import sys

import pytest
import torch

from helpers import kill_and_resume, metrics, train_here, train_process, weights

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU = ["mixed_precision=bf16", "model.channels_last=true", "data.num_workers=2"]


@pytest.mark.parametrize("augment_on", ["loader", "device"])
def test_bf16_training_on_cuda_killed_then_resumed_is_bit_identical(small_shards, tmp_path,
                                                                    augment_on, capsys):
    # train.deterministic=true (in helpers.TINY): deterministic cuDNN/cuBLAS; the SHG's
    # ops (conv, BatchNorm, MaxPool2d, nearest upsampling) all have deterministic CUDA kernels.
    common = ["train.max_steps=6", "eval.every_steps=3", "checkpoint.every_steps=2",
              f"data.augment_on={augment_on}", *GPU]
    kill_and_resume(small_shards, tmp_path, common, kill_at=5, resumes_from=4, final=6,
                    capsys=capsys)
    config = (tmp_path / "ref" / "config.toml").read_text()
    assert f'augment_on = "{augment_on}"' in config and 'mixed_precision = "bf16"' in config


def test_auto_augments_on_the_device_on_cuda(small_shards, tmp_path):
    assert train_here(small_shards, tmp_path / "auto", "train.max_steps=2",
                      "eval.every_steps=2", *GPU) == 0
    assert 'augment_on = "device"' in (tmp_path / "auto" / "config.toml").read_text()


def test_deepspeed_zero2_on_one_gpu_trains_the_same_model(small_shards, tmp_path):
    import deepspeed  # noqa: F401  (make setup installs it)

    common = ["model.features=16", "train.max_steps=4", "eval.every_steps=2",
              "checkpoint.every_steps=2", "eval.max_samples=8", "mixed_precision=bf16"]
    assert train_here(small_shards, tmp_path / "ddp", *common) == 0
    run = tmp_path / "zero2"
    train_process(small_shards, run, *common,
                  "distributed.deepspeed_config=configs/deepspeed_zero2.json")
    assert (run / "checkpoints" / "step-00000004" / "zero").is_dir()
    losses = [r["loss"] for r in metrics(run) if "loss" in r]
    plain = [r["loss"] for r in metrics(tmp_path / "ddp") if "loss" in r]
    assert len(losses) == 4 and all(l == l for l in losses)
    # same initial weights, same first batch, both bf16 autocast: the same first loss
    assert losses[0] == pytest.approx(plain[0], rel=0.02)


def test_eval_and_predict_on_cuda(trained_run, small_shards, synth_root, tmp_path, capsys):
    from shg.cli import main as shg

    out = tmp_path / "eval"
    assert shg(["eval", "--run", str(trained_run), "--shards", str(small_shards), "--split",
                "val2017", "--out", str(out), "--precision", "fp32"]) == 0
    cuda = json.loads((out / "pck.json").read_text())
    auto = tmp_path / "eval-auto"  # the default on a GPU: autocast (bf16 from Ampere on)
    assert shg(["eval", "--run", str(trained_run), "--shards", str(small_shards), "--split",
                "val2017", "--out", str(auto)]) == 0
    assert json.loads((auto / "summary.json").read_text())["precision"] in ("bf16", "fp16")
    mixed = json.loads((auto / "pck.json").read_text())
    cpu_out = tmp_path / "eval-cpu"
    proc = subprocess.run([sys.executable, "-m", "shg.cli", "eval", "--run", str(trained_run),
                           "--shards", str(small_shards), "--split", "val2017", "--out",
                           str(cpu_out)], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    cpu = json.loads((cpu_out / "pck.json").read_text())
    for name in ("constant", "bbox"):  # fp32 on both: the same predictions up to rounding
        assert cuda["normalisations"][name]["mean"]["0.5"] == pytest.approx(
            cpu["normalisations"][name]["mean"]["0.5"], abs=0.01)
        assert mixed["normalisations"][name]["mean"]["0.5"] == pytest.approx(
            cpu["normalisations"][name]["mean"]["0.5"], abs=0.05)
    image = next((synth_root / "val2017").glob("*.jpg"))
    model = tmp_path / "m.safetensors"
    assert shg(["export", "--run", str(trained_run), "--out", str(model)]) == 0
    assert shg(["predict", "--model", str(model), str(image), "--out",
                str(tmp_path / "pose.png")]) == 0
    assert (tmp_path / "pose.png").is_file()


def test_compiled_training_on_cuda_saves_plain_weights(small_shards, tmp_path):
    run = tmp_path / "compiled"
    assert train_here(small_shards, run, "train.max_steps=4", "eval.every_steps=2",
                      "checkpoint.every_steps=2", "train.compile=true", *GPU) == 0
    best = weights(run, 4)
    assert not any(k.startswith("_orig_mod.") for k in best)  # loadable without compile


def test_step_rows_on_cuda_split_the_time_and_give_the_peak_memory(small_shards, tmp_path):
    """The phases come from CUDA events read at log rows (no per-step synchronisation for
    measuring): they are positive and fit in the step time; the peak memory is the model's."""
    run = tmp_path / "timed"
    assert train_here(small_shards, run, "train.max_steps=8", "train.log_every=4",
                      "eval.every_steps=8", *GPU) == 0
    rows = [r for r in metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == [4, 8]
    for r in rows:
        assert r["gpu_mem_peak_gb"] > 0
        assert r["compute_s"] > 0 and r["input_s"] > 0 and r["optimizer_s"] > 0
        assert r["input_s"] + r["compute_s"] + r["optimizer_s"] <= r["step_s"] * 1.05
