"""On a CUDA GPU (marked `gpu`, skipped without one): bf16 training killed and resumed, both
augmentation paths, DeepSpeed ZeRO-2 on one GPU, `shg eval` and `shg predict`.

Run where a GPU is: `.venv/bin/python -m pytest -m gpu tests/test_gpu.py`."""

import json
import os
import subprocess
import sys

import pytest
import torch

from test_train import run_train, same, weights

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

GPU = ["mixed_precision=bf16", "model.channels_last=true", "data.num_workers=2"]


@pytest.mark.parametrize("augment_on", ["loader", "device"])
def test_bf16_training_on_cuda_killed_then_resumed_is_bit_identical(synth_shards, tmp_path,
                                                                    augment_on):
    # train.deterministic=true (in test_train's TINY): deterministic cuDNN/cuBLAS; the SHG's
    # ops (conv, BatchNorm, MaxPool2d, nearest upsampling) all have deterministic CUDA kernels.
    common = ["train.max_steps=6", "eval.every_steps=3", "checkpoint.every_steps=2",
              f"data.augment_on={augment_on}", *GPU]
    run_train(synth_shards, tmp_path / "ref", *common)
    config = (tmp_path / "ref" / "config.toml").read_text()
    assert f'augment_on = "{augment_on}"' in config and 'mixed_precision = "bf16"' in config
    run = tmp_path / "killed"
    assert run_train(synth_shards, run, *common, env={"SHG_FAULT": "step:5"},
                     check=False).returncode == -9
    run_train(synth_shards, run, *common)
    assert same(weights(run, 6), weights(tmp_path / "ref", 6))


def test_auto_augments_on_the_device_on_cuda(synth_shards, tmp_path):
    run_train(synth_shards, tmp_path / "auto", "train.max_steps=2", "eval.every_steps=2", *GPU)
    assert 'augment_on = "device"' in (tmp_path / "auto" / "config.toml").read_text()


def test_deepspeed_zero2_on_one_gpu(synth_shards, tmp_path):
    pytest.importorskip("deepspeed")
    run = tmp_path / "zero2"
    proc = subprocess.run(
        [sys.executable, "-m", "shg.cli", "train", "--nproc", "1", "--config",
         "configs/tiny.toml", f"data.shards={synth_shards}", f"run_dir={run}",
         "model.features=16", "train.max_steps=4", "eval.every_steps=2",
         "checkpoint.every_steps=2", "eval.max_samples=8",
         "distributed.deepspeed_config=configs/deepspeed_zero2.json", "mixed_precision=bf16"],
        capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "checkpoints" / "step-00000004" / "zero").is_dir()
    losses = [json.loads(line)["loss"] for line in
              (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]
    assert len(losses) == 4 and all(l == l and l < 1 for l in losses)


def test_eval_and_predict_on_cuda(trained_run, synth_shards, synth_root, tmp_path, capsys):
    from shg.cli import main as shg

    out = tmp_path / "eval"
    assert shg(["eval", "--run", str(trained_run), "--shards", str(synth_shards), "--split",
                "val2017", "--out", str(out)]) == 0
    cuda = json.loads((out / "pck.json").read_text())
    cpu_out = tmp_path / "eval-cpu"
    proc = subprocess.run([sys.executable, "-m", "shg.cli", "eval", "--run", str(trained_run),
                           "--shards", str(synth_shards), "--split", "val2017", "--out",
                           str(cpu_out)], capture_output=True, text=True,
                          env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    cpu = json.loads((cpu_out / "pck.json").read_text())
    for name in ("constant", "bbox"):  # fp32 on both: the same predictions up to rounding
        assert cuda["normalisations"][name]["mean"]["0.5"] == pytest.approx(
            cpu["normalisations"][name]["mean"]["0.5"], abs=0.01)
    image = next((synth_root / "val2017").glob("*.jpg"))
    model = tmp_path / "m.safetensors"
    assert shg(["export", "--run", str(trained_run), "--out", str(model)]) == 0
    assert shg(["predict", "--model", str(model), str(image), "--out",
                str(tmp_path / "pose.png")]) == 0
    assert (tmp_path / "pose.png").is_file()


def test_compiled_training_on_cuda_saves_plain_weights(synth_shards, tmp_path):
    run = tmp_path / "compiled"
    run_train(synth_shards, run, "train.max_steps=4", "eval.every_steps=2",
              "checkpoint.every_steps=2", "train.compile=true", *GPU)
    best = weights(run, 4)
    assert not any(k.startswith("_orig_mod.") for k in best)  # loadable without compile
