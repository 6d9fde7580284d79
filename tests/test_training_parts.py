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


def test_precision_auto_follows_the_hardware(monkeypatch):
    from shg import config

    monkeypatch.setattr(config, "native_bf16", lambda: True)
    assert config.resolve_precision("auto") == "bf16"
    monkeypatch.setattr(config, "native_bf16", lambda: False)
    assert config.resolve_precision("auto") == "no"
    assert config.resolve_precision("bf16") == "bf16" and config.resolve_precision("no") == "no"
