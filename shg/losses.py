"""Training losses, shared by the trainer, validation and the benchmarks."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor,
                 reduction: str = "mean") -> torch.Tensor:
    """MSE over heatmaps weighted per joint by visibility, summed over stacks (intermediate
    supervision). pred: (N, S, K, H, W); target: (N, K, H, W); weights: (N, K).

    reduction="none" gives each sample's loss (N,), whose mean is the "mean" loss."""
    diff = (pred.float() - target[:, None]) ** 2
    per_joint = diff.mean((-1, -2)) * weights[:, None]            # (N, S, K)
    if reduction == "none":
        return per_joint.mean(2).sum(1)                             # (N,)
    return per_joint.mean((0, 2)).sum()


def reconstruction_loss(recon: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """AE phase 1: MSE between the reconstruction of the noisy latent and the clean latent."""
    return F.mse_loss(recon.float(), clean.float())


def task_loss(task: str, out, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The loss of a run's task ("pose", "pose_ae": heatmaps; "ae": reconstruction)."""
    if task == "ae":
        return reconstruction_loss(*out)
    return heatmap_loss(out, target, weights)
