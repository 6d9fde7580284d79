"""Everything a training run needs before its first step: the resolved config, the data
checks, the model with its initial weights, the optimizer, the data stream."""

from __future__ import annotations

import dataclasses

import torch

from shards.manifest import read_manifest
from shards.reader import TrainStream, check_split, train_loader
from shards.sample import resolve_augment_on
from shards.schema import stored

from .. import weights
from ..config import ConfigError, resolve_precision
from ..models import from_config
from .distributed import batchnorm_mode
from .optim import make_optimizer


def resolved(cfg, train_split: dict):
    """A copy of the config with the values decided at run time filled in (what config.toml
    records): mixed_precision "auto" becomes the precision used, data.augment_on "auto" the
    place augmentation runs, data.heatmap_size 0 a quarter of the training split's crops,
    model.joints 0 the joints of its keypoint schema (`train_split`: its manifest entry). The
    caller's config is kept."""
    data = dataclasses.replace(
        cfg.data, augment_on=resolve_augment_on(cfg.data.augment_on, torch.cuda.is_available()),
        heatmap_size=cfg.data.heatmap_size or train_split["crop"]["size"] // 4)
    model = dataclasses.replace(cfg.model,
                                joints=cfg.model.joints or stored(train_split).num_joints)
    return dataclasses.replace(cfg, mixed_precision=resolve_precision(cfg.mixed_precision),
                               data=data, model=model)


def data_facts(cfg) -> dict:
    """The training split's manifest entry, after checking that the run can read its data."""
    if not cfg.data.shards:
        raise ConfigError("data.shards is not set (a directory made by `shg shards build`)")
    manifest = read_manifest(cfg.data.shards)
    for split in (cfg.data.train_split, cfg.data.val_split):
        if split not in manifest["splits"]:
            raise ConfigError(f"{cfg.data.shards}: no split '{split}' (have "
                              f"{', '.join(manifest['splits'])})")
    for split in (cfg.data.train_split, cfg.data.val_split):
        check_split(cfg.data.shards, split)  # every listed shard there, with its samples
    train = manifest["splits"][cfg.data.train_split]
    schema = stored(train)
    where = f"{cfg.data.shards}: split"
    schema.check_same(stored(manifest["splits"][cfg.data.val_split]),
                      f"{where} {cfg.data.train_split}", f"split {cfg.data.val_split}")
    if cfg.model.joints and cfg.model.joints != schema.num_joints:
        raise ConfigError(f"model.joints={cfg.model.joints}, but {cfg.data.shards} holds "
                          f"{schema.describe()}: leave model.joints at 0 (the shards' count)")
    crop = train["crop"]["size"]
    if cfg.data.heatmap_size and cfg.data.heatmap_size * 4 != crop:
        raise ConfigError(f"data.heatmap_size={cfg.data.heatmap_size}: the SHG outputs "
                          f"{crop // 4} (a quarter of the {crop} px crops)")
    return train


def build_model(cfg) -> torch.nn.Module:
    """The network of cfg.task with its initial weights: the trained SHG (ae.shg_from) and AE
    (ae.ae_from) for the AE phases, then train.init_from over the whole model."""
    model = from_config(cfg)
    if cfg.task != "pose":
        weights.load_into(model.shg, cfg.ae.shg_from, prefix="shg")
    if cfg.task == "pose_ae":
        weights.load_into(model.ae, cfg.ae.ae_from, prefix="ae")
    if cfg.train.init_from:
        weights.load_into(model, cfg.train.init_from)
    return model


def prepare_model(cfg, accelerator):
    """(model, optimizer) prepared by Accelerate: BatchNorm mode, memory format, compile."""
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank
    model = build_model(cfg)
    if batchnorm_mode(cfg, accelerator.num_processes) == "sync":
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.model.channels_last and not cfg.distributed.deepspeed_config:
        # (ZeRO flattens parameters through views that need contiguous weights; there only the
        # activations go channels-last.)
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    if cfg.train.compile:
        model = torch.compile(model)
    return accelerator.prepare(model, optimizer)


def train_stream(cfg, accelerator, start_step: int):
    """(stream, loader) of this rank's training batches from optimizer step `start_step` on."""
    accum = cfg.train.grad_accum
    stream = TrainStream(cfg.data.shards, cfg.data.train_split, cfg.train.batch_size,
                         seed=cfg.train.seed, cfg=cfg.data.sample_config(),
                         rank=accelerator.process_index, world=accelerator.num_processes,
                         num_workers=max(1, cfg.data.num_workers),
                         start_batch=start_step * accum,
                         num_batches=(cfg.train.max_steps - start_step) * accum,
                         shuffle_buffer=cfg.data.shuffle_buffer,
                         mean_from=cfg.data.train_split, on_error=cfg.data.on_error)
    return stream, train_loader(stream)
