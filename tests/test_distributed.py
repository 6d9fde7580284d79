"""Multi-process training on CPU: DDP over gloo, DeepSpeed ZeRO-1/2, world-size changes and the
launch trap of `accelerate launch --cpu`."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from shg.training.checkpoint import complete_checkpoints
from shg.weights import load_weights

pytestmark = pytest.mark.slow
ARGS = ["--config", "configs/tiny.toml", "model.features=16", "model.stacks=1",
        "train.batch_size=2", "data.num_workers=0", "eval.max_samples=8", "eval.batch_size=8",
        "checkpoint.every_steps=2", "eval.every_steps=2"]


def shg_train(shards, run, *extra, nproc=1, env=None, launcher=None):
    base = [f"data.shards={shards}", f"run_dir={run}", *extra]
    if launcher is None:
        cmd = [sys.executable, "-m", "shg.cli", "train", "--nproc", str(nproc), *ARGS, *base]
    else:
        cmd = [*launcher, "-m", "shg.train", *ARGS, *base]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env={**os.environ, **(env or {})})
    return proc


def state(run, step):
    return json.loads((Path(run) / "checkpoints" / f"step-{step:08d}" / "state.json").read_text())


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return proc


def test_ddp_two_processes_and_world_size_changes(synth_shards, tmp_path):
    run = tmp_path / "ddp"
    ok(shg_train(synth_shards, run, "train.max_steps=4", nproc=2))
    s = state(run, 4)
    assert s["world_size"] == 2 and s["samples_seen"] == 4 * 2 * 2
    ckpt = run / "checkpoints" / "step-00000004"
    assert (ckpt / "rng-rank0.json").exists() and (ckpt / "rng-rank1.json").exists()
    # 2 -> 1 process: DCP reshards the state
    one = ok(shg_train(synth_shards, run, "train.max_steps=6", nproc=1))
    assert "saved by 2 processes, now 1" in one.stdout
    assert state(run, 6)["world_size"] == 1 and state(run, 6)["samples_seen"] == 16 + 4
    # 1 -> 2 processes
    two = ok(shg_train(synth_shards, run, "train.max_steps=8", nproc=2))
    assert "saved by 1 processes, now 2" in two.stdout and state(run, 8)["step"] == 8
    w6, w8 = load_weights(run / "checkpoints" / "step-00000006")[0], load_weights(ckpt.parent /
                                                                               "step-00000008")[0]
    assert any(not torch.equal(w6[k], w8[k]) for k in w6)


def test_accelerate_launch_multi_cpu_and_the_cpu_trap(synth_shards, tmp_path):
    accelerate = [str(Path(sys.executable).with_name("accelerate")), "launch"]
    good = ok(shg_train(synth_shards, tmp_path / "acc", "train.max_steps=2",
                        env={"ACCELERATE_USE_CPU": "true"},
                        launcher=[*accelerate, "--multi_gpu", "--num_processes", "2",
                                  "--num_machines", "1", "--mixed_precision", "no",
                                  "--dynamo_backend", "no"]))
    assert state(tmp_path / "acc", 2)["world_size"] == 2, good.stdout
    trap = shg_train(synth_shards, tmp_path / "trap", "train.max_steps=2",
                     "distributed.expect_processes=2",
                     launcher=[*accelerate, "--cpu", "--num_processes", "2",
                               "--num_machines", "1", "--mixed_precision", "no",
                               "--dynamo_backend", "no"])
    assert trap.returncode != 0
    assert "expected 2 processes, the launch gave 1" in trap.stderr
    assert "starts ONE process" in trap.stderr
    assert not complete_checkpoints(tmp_path / "trap" / "checkpoints")


@pytest.mark.parametrize("stage", [1, 2])
def test_deepspeed_zero_trains_resumes_and_refuses_other_world_sizes(synth_shards, tmp_path,
                                                                     stage):
    pytest.importorskip("deepspeed")
    run = tmp_path / f"zero{stage}"
    ds = [f"distributed.deepspeed_config=configs/deepspeed_zero{stage}.json",
          "mixed_precision=bf16"]
    ok(shg_train(synth_shards, run, "train.max_steps=4", *ds, nproc=2))
    assert (run / "checkpoints" / "step-00000004" / "zero").is_dir()
    resumed = ok(shg_train(synth_shards, run, "train.max_steps=6", *ds, nproc=2))
    assert "resumed from" in resumed.stdout and "at step 4" in resumed.stdout
    assert state(run, 6)["samples_seen"] == 6 * 2 * 2
    refused = shg_train(synth_shards, run, "train.max_steps=8", *ds, nproc=1)
    assert refused.returncode == 2
    assert "cannot resume on 1" in refused.stderr and "train.init_from" in refused.stderr
    fresh = ok(shg_train(synth_shards, tmp_path / "fresh", "train.max_steps=2", *ds,
                         f"train.init_from={run / 'checkpoints' / 'step-00000006'}", nproc=1))
    assert state(tmp_path / "fresh", 2)["step"] == 2, fresh.stdout


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
