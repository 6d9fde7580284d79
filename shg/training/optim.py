"""Optimizer and learning-rate schedule of a run (the `[optim]` section)."""

from __future__ import annotations

import math

import torch


def make_optimizer(cfg, params) -> torch.optim.Optimizer:
    """RMSProp (Newell), SGD with momentum or Adam; `cfg` is the run's RunConfig."""
    o = cfg.optim
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def lr_factor(cfg, step: int) -> float:
    """Multiplier of optim.lr for optimizer step `step` (0-based)."""
    o, total = cfg.optim, cfg.train.max_steps
    if o.warmup_steps and step < o.warmup_steps:
        return (step + 1) / o.warmup_steps
    if o.schedule == "constant":
        return 1.0
    if o.schedule == "cosine":
        span = max(1, total - o.warmup_steps)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - o.warmup_steps) / span)))
    return o.gamma ** sum(step >= int(m * total) for m in o.milestones)


def set_lr(optimizer, cfg, step: int) -> float:
    lr = cfg.optim.lr * lr_factor(cfg, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr
