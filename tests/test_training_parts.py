"""The training pieces with hand-computed expectations: the heatmap loss, the learning-rate
schedules and the precision choice."""

import pytest
import torch

from shg.config import load_config
from shg.losses import heatmap_loss


def test_heatmap_loss_weights_joints_and_sums_stacks():
    target = torch.zeros(1, 2, 2, 2)
    target[0, 0, 0, 0] = 1.0                        # joint 0: one cell lit
    pred = torch.zeros(1, 3, 2, 2, 2)               # 3 stacks
    pred[0, 0, 1] = 2.0                             # stack 0, joint 1: every cell off by 2
    pred[0, 2, 0, 0, 0] = 1.0                       # stack 2 predicts joint 0 exactly
    both = torch.tensor([[1.0, 1.0]])
    # stack 0: joint 0 MSE 1/4, joint 1 MSE 4 -> mean over joints 2.125
    # stack 1: joint 0 1/4, joint 1 0 -> 0.125; stack 2: 0 -> 0; summed over stacks: 2.25
    assert heatmap_loss(pred, target, both).item() == pytest.approx(2.25)
    only_first = torch.tensor([[1.0, 0.0]])         # joint 1 unlabelled: its error is ignored
    assert heatmap_loss(pred, target, only_first).item() == pytest.approx(0.125 + 0.125)
    per_sample = heatmap_loss(pred.repeat(2, 1, 1, 1, 1), target.repeat(2, 1, 1, 1),
                              torch.tensor([[1.0, 1.0], [1.0, 0.0]]), reduction="none")
    assert per_sample.tolist() == pytest.approx([2.25, 0.25])
    assert heatmap_loss(pred.repeat(2, 1, 1, 1, 1), target.repeat(2, 1, 1, 1),
                        torch.tensor([[1.0, 1.0], [1.0, 0.0]])).item() == pytest.approx(1.25)


def _cfg(*overrides):
    return load_config(None, ["train.max_steps=100", "optim.lr=1.0", *overrides])


def test_step_schedule_drops_by_gamma_at_the_milestones():
    from shg.training.optim import lr_factor

    cfg = _cfg("optim.schedule=step", "optim.milestones=[0.5, 0.8]", "optim.gamma=0.1")
    assert [lr_factor(cfg, s) for s in (0, 49, 50, 79, 80, 99)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])


def test_warmup_then_cosine():
    from shg.training.optim import lr_factor, make_optimizer, set_lr

    cfg = _cfg("optim.schedule=cosine", "optim.warmup_steps=10")
    assert [lr_factor(cfg, s) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])
    assert lr_factor(cfg, 10) == pytest.approx(1.0)
    assert lr_factor(cfg, 55) == pytest.approx(0.5)        # half way through the 90 cosine steps
    assert lr_factor(cfg, 100) == pytest.approx(0.0, abs=1e-12)
    constant = _cfg("optim.schedule=constant", "optim.warmup_steps=4")
    assert [lr_factor(constant, s) for s in (0, 3, 4, 99)] == pytest.approx([0.25, 1, 1, 1])
    opt = make_optimizer(_cfg("optim.name=sgd", "optim.lr=0.5"), [torch.zeros(1, requires_grad=True)])
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    assert set_lr(opt, cfg, 4) == pytest.approx(0.5) and opt.param_groups[0]["lr"] == 0.5


def test_precision_auto_detects_the_hardware_itself():
    """No stub: `auto` reads this machine's CPU flags (or the GPU), and the parser reads flags
    lines, not substrings."""
    from pathlib import Path

    from shg import config

    if not torch.cuda.is_available():
        flags = {f for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("flags") for f in line.split(":", 1)[1].split()}
        native = bool(flags & {"avx512_bf16", "amx_bf16"})
        assert config.native_bf16() is native
        assert config.resolve_precision("auto") == ("bf16" if native else "no")
    text = "processor\t: 0\nflags\t\t: fpu sse2 avx512f {}\nbugs\t\t: avx512_bf16\n"
    assert config.native_bf16(text.format("avx512_bf16")) is True
    assert config.native_bf16(text.format("amx_bf16 amx_tile")) is True
    assert config.native_bf16(text.format("avx512_bf16x")) is False
    assert config.native_bf16(text.format("avx2")) is False  # a 'bugs' line does not count
    assert config.resolve_precision("bf16") == "bf16" and config.resolve_precision("no") == "no"



def test_deepspeed_gets_torch_autocast_and_our_batch_settings(tmp_path):
    """bf16 reaches DeepSpeed as its torch_autocast (its own bf16 mode would keep bf16 weights
    and break BatchNorm), whatever the user's JSON says; batch and clipping come from ours."""
    import json

    from shg.config import ConfigError
    from shg.errors import UserError
    from shg.training.distributed import deepspeed_config

    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 2}, "bf16": {"enabled": True},
                                "fp16": {"enabled": True}, "train_batch_size": 999,
                                "train_micro_batch_size_per_gpu": 1}))
    cfg = load_config(None, [f"distributed.deepspeed_config={user}", "mixed_precision=bf16",
                             "model.joints=17",
                             "train.batch_size=6", "train.grad_accum=3", "train.clip_grad=2.5"])
    ds = deepspeed_config(cfg)
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16"}
    assert "bf16" not in ds and "fp16" not in ds and "train_batch_size" not in ds
    assert (ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"],
            ds["gradient_clipping"]) == (6, 3, 2.5)
    fp32 = deepspeed_config(load_config(None, [f"distributed.deepspeed_config={user}",
                                               "mixed_precision=no", "model.joints=17"]))
    assert "torch_autocast" not in fp32 and "bf16" not in fp32
    user.write_text(json.dumps({"zero_optimization": {"stage": 3}}))
    with pytest.raises(UserError, match="ZeRO stage 3 is not supported"):
        deepspeed_config(cfg)
    with pytest.raises(ConfigError, match="nope.json not found"):
        load_config(None, ["distributed.deepspeed_config=nope.json"])


def test_deepspeed_buckets_hold_the_model_not_deepspeeds_2gb_default(tmp_path):
    """ZeRO's buckets default to 5e8 elements whatever the model; unset, they are the model's
    parameter count (aligned up to 4096), so one bucket still holds every gradient. A user's
    own sizes are kept."""
    import json

    from shg.training.distributed import deepspeed_config

    user = tmp_path / "ds.json"
    user.write_text(json.dumps({"zero_optimization": {"stage": 2}}))
    newell = deepspeed_config(load_config(None, [f"distributed.deepspeed_config={user}",
                                                   "model.joints=17"]))
    # the 8-stack, 256-feature SHG has 25,437,960 parameters (README, `shg info`):
    # 6210.4 x 4096, so the bucket is 6211 x 4096
    assert newell["zero_optimization"]["reduce_bucket_size"] == 6211 * 4096 == 25_440_256
    assert newell["zero_optimization"]["allgather_bucket_size"] == 25_440_256
    user.write_text(json.dumps({"zero_optimization": {"stage": 1, "reduce_bucket_size": 1e6}}))
    mine = deepspeed_config(load_config(None, [f"distributed.deepspeed_config={user}",
                                                   "model.joints=17"]))
    assert mine["zero_optimization"]["reduce_bucket_size"] == 1e6
    assert mine["zero_optimization"]["allgather_bucket_size"] == 25_440_256
