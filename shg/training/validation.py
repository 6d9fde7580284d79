"""Validation during training, through the one evaluation core (shg/evaluation/core.py).

Pose tasks: validation loss and PCK (constant and bbox normalisation, at eval.thresholds) over
the validation split, each sample once, split over ranks and gathered on every rank (so every
rank takes the same best-model and early-stopping decisions). AE phase 1: reconstruction error
of the clean validation latents."""

from __future__ import annotations

import torch

from shards.sample import model_input

from ..evaluation.core import gather_rows, pck_metrics, predict_rows, split_batches
from ..models import add_proportional_noise
from .distributed import unwrap


def _batches(cfg, accelerator, targets: bool = False):
    """This rank's share of the validation split, each sample once, un-augmented (with the
    training targets for a validation loss when `targets`)."""
    return split_batches(cfg.data.shards, cfg.data.val_split, cfg.eval.batch_size,
                         rank=accelerator.process_index, world=accelerator.num_processes,
                         mean_from=cfg.data.train_split, limit=cfg.eval.max_samples,
                         num_workers=min(cfg.data.num_workers, 2),
                         sample_cfg=cfg.data.sample_config(), targets=targets)


@torch.no_grad()
def validate_pose(cfg, model, accelerator) -> dict:
    net = unwrap(model, accelerator)
    was_training = net.training
    net.eval()
    rows = list(predict_rows(net, _batches(cfg, accelerator, targets=True), flip=False, sigma=cfg.data.sigma,
                             device=accelerator.device, autocast=accelerator.autocast,
                             channels_last=cfg.model.channels_last, with_loss=True))
    net.train(was_training)
    rows = gather_rows(rows)
    result = {"val_loss": sum(r["loss"] for r in rows) / max(len(rows), 1),
              "val_samples": len(rows)}
    result.update(pck_metrics(rows, cfg.eval.thresholds))
    return result


@torch.no_grad()
def validate_ae(cfg, model, accelerator) -> dict:
    """Phase 1: reconstruction error of the clean validation latents (no noise), and for
    reference the error of the noisy latent itself (what the AE must undo)."""
    net = unwrap(model, accelerator)
    net.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # recon SE, noisy SE, clean energy, elements
    gen = torch.Generator().manual_seed(0)
    for batch in _batches(cfg, accelerator):
        images = model_input(batch, accelerator.device)
        with accelerator.autocast():
            recon, clean = net(images)
        recon, clean = recon.float().cpu(), clean.float().cpu()
        noisy = add_proportional_noise(clean, cfg.ae.noise, gen)
        sums += torch.tensor([float(((recon - clean) ** 2).sum()),
                              float(((noisy - clean) ** 2).sum()),
                              float((clean ** 2).sum()), clean.numel()], dtype=torch.float64)
    net.train()
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(sums)
    n = max(float(sums[3]), 1.0)
    mse = float(sums[0]) / n
    return {"val_loss": mse, "val_recon_mse": mse,
            "val_recon_rel": float(sums[0] / sums[2].clamp_min(1e-12)),
            "val_noisy_rel": float(sums[1] / sums[2].clamp_min(1e-12))}


def validate(cfg, model, accelerator) -> dict:
    """The validation metrics of the run's task."""
    if cfg.task == "ae":
        return validate_ae(cfg, model, accelerator)
    return validate_pose(cfg, model, accelerator)
