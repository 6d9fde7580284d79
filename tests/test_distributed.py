"""Multi-process training on CPU: DDP over gloo, DeepSpeed ZeRO-2, world-size changes and the
launch trap of `accelerate launch --cpu` (ZeRO-1 trains and resumes through the Slurm job path
in test_launcher.py)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from helpers import STARTED_OVER, assert_resumed, overrides, state, train_here, train_process
from shg.training.checkpoint import complete_checkpoints
from shg.weights import load_weights

pytestmark = pytest.mark.slow
ONE_STACK = ["model.stacks=1", "checkpoint.every_steps=2", "eval.every_steps=2"]


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def _validation_here(shards, run, step: int) -> float:
    """The validation loss of checkpoint `step` computed in this one process."""
    from shg.config import load_config
    from shg.training.distributed import make_accelerator
    from shg.training.validation import validate_pose
    from shg.weights import load_model

    cfg = load_config(Path(run) / "config.toml")
    model = load_model(run, step)[0]
    return validate_pose(cfg, model, make_accelerator(cfg)[0])["val_loss"]


def test_ddp_two_processes_and_world_size_changes(small_shards, tmp_path, capsys):
    from helpers import metrics

    run = tmp_path / "ddp"
    exact = ["mixed_precision=no", "model.channels_last=false", "eval.max_samples=0"]
    train_process(small_shards, run, *ONE_STACK, *exact, "train.max_steps=4", nproc=2)
    s = state(run, 4)
    assert s["world_size"] == 2 and s["samples_seen"] == 4 * 2 * 2
    ckpt = run / "checkpoints" / "step-00000004"
    assert (ckpt / "rng-rank0.json").exists() and (ckpt / "rng-rank1.json").exists()
    # Each rank validated its half with rank 0's BatchNorm statistics (broadcast by the
    # trainer before validating): the 2-rank validation loss is the one-process loss of the
    # checkpoint (rank 0's model). With each rank's own statistics rank 1's half would differ.
    (logged,) = [r["val_loss"] for r in metrics(run) if "val_loss" in r and r["step"] == 4]
    assert _validation_here(small_shards, run, 4) == pytest.approx(logged, rel=1e-5)
    # 2 -> 1 process: DCP reshards the state
    assert train_here(small_shards, run, *ONE_STACK, *exact, "train.max_steps=6",
                      faults=STARTED_OVER) == 0
    out = capsys.readouterr().out
    assert_resumed(run, 4, out)
    assert "saved by 2 processes, now 1" in out
    assert state(run, 6)["world_size"] == 1 and state(run, 6)["samples_seen"] == 16 + 4
    # 1 -> 2 processes
    two = train_process(small_shards, run, *ONE_STACK, *exact, "train.max_steps=8", nproc=2,
                        faults=STARTED_OVER)
    assert_resumed(run, 6, two.stdout)
    assert "saved by 1 processes, now 2" in two.stdout and state(run, 8)["step"] == 8
    w6, w8 = load_weights(run / "checkpoints" / "step-00000006")[0], load_weights(
        run / "checkpoints" / "step-00000008")[0]
    assert any(not torch.equal(w6[k], w8[k]) for k in w6)


def _launch(shards, run, launcher, *extra):
    cmd = [*launcher, "-m", "shg.train", "--config", "configs/tiny.toml",
           *overrides(shards, run, *ONE_STACK, *extra)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "ACCELERATE_USE_CPU": "true"})


def test_accelerate_launch_multi_cpu_and_the_cpu_trap(small_shards, tmp_path):
    accelerate = [str(Path(sys.executable).with_name("accelerate")), "launch",
                  "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                  "--dynamo_backend", "no"]
    good = ok(_launch(small_shards, tmp_path / "acc", [*accelerate, "--multi_gpu"],
                      "train.max_steps=2"))
    assert state(tmp_path / "acc", 2)["world_size"] == 2, good.stdout
    trap = _launch(small_shards, tmp_path / "trap", [*accelerate, "--cpu"], "train.max_steps=2",
                   "distributed.expect_processes=2")
    assert trap.returncode != 0
    assert "expected 2 processes, the launch gave 1" in trap.stderr
    assert "starts ONE process" in trap.stderr
    assert not complete_checkpoints(tmp_path / "trap" / "checkpoints")


def test_deepspeed_zero2_trains_resumes_and_refuses_other_world_sizes(small_shards, tmp_path):
    import deepspeed  # noqa: F401  (make setup installs it: missing is a failure, not a skip)

    run = tmp_path / "zero2"
    ds = [*ONE_STACK, "distributed.deepspeed_config=configs/deepspeed_zero2.json",
          "mixed_precision=bf16"]
    train_process(small_shards, run, *ds, "train.max_steps=4", nproc=2)
    assert (run / "checkpoints" / "step-00000004" / "zero").is_dir()
    assert not (run / "checkpoints" / "step-00000004" / "dcp").exists()
    resumed = train_process(small_shards, run, *ds, "train.max_steps=6", nproc=2,
                            faults=STARTED_OVER)
    assert_resumed(run, 4, resumed.stdout)
    assert state(run, 6)["samples_seen"] == 6 * 2 * 2
    refused = train_process(small_shards, run, *ds, "train.max_steps=8", check=False)
    assert refused.returncode == 2
    assert "cannot resume on 1" in refused.stderr and "train.init_from" in refused.stderr
    # (what the message advises, train.init_from, is tested in test_train.py: it loads the
    # checkpoint's plain weights, which a ZeRO checkpoint holds as every other does)
    assert (run / "checkpoints" / "step-00000006" / "model.safetensors").is_file()


def _bn_worker(rank, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=2)
    from shg.models import StackedHourglass
    from shg.training.distributed import broadcast_buffers

    class Acc:
        num_processes = 2

        @staticmethod
        def unwrap_model(m):
            return m

    model = StackedHourglass(stacks=1, features=8, joints=3)
    model.train()
    torch.manual_seed(rank)  # each rank sees other data: BN statistics drift apart
    model(torch.randn(2, 3, 64, 64) * (rank + 1))
    before = model.stem[1].running_var.clone()
    broadcast_buffers(model, Acc)
    torch.save({"before": before, "after": model.stem[1].running_var.clone()},
               f"{out}/rank{rank}.pt")
    torch.distributed.destroy_process_group()


def test_rank0_batchnorm_statistics_are_broadcast(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    torch.multiprocessing.spawn(_bn_worker, args=(port, str(tmp_path)), nprocs=2)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert not torch.equal(r0["before"], r1["before"])          # drifted apart
    assert torch.equal(r0["after"], r1["after"]) and torch.equal(r1["after"], r0["before"])
