"""Training of a Stacked Hourglass under Hugging Face Accelerate.

Launch (all read the same TOML config plus `section.key=value` overrides):

    shg train --config configs/tiny.toml data.shards=runs/demo/shards         # one process
    shg train --config configs/tiny.toml --nproc 2                             # 2 processes
    torchrun --standalone --nproc_per_node 2 -m shg.train --config configs/tiny.toml
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 -m shg.train ...
    accelerate launch --num_processes 8 -m shg.train --config configs/coco.toml \
        distributed.deepspeed_config=configs/deepspeed_zero2.json              # DeepSpeed ZeRO-2

Beware `accelerate launch --cpu --num_processes 2`: it starts ONE process. Set
distributed.processes (or use --nproc) and a launch that yields another world size fails.

Re-running the same command on a run directory with checkpoints resumes from the newest complete
one (checkpoint.resume=none starts over). On CPU with train.deterministic=true a run killed at
any moment and resumed ends with bit-identical weights to an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from .checkpoint import (Checkpointer, check_compatible, latest_checkpoint, load_weights,
                         save_weights)
from .config import TrainConfig, dump_toml, load_config, resolve_precision

EXIT_DIVERGED = 3
EXIT_REQUEUE = 75  # EX_TEMPFAIL: stopped by a signal after saving; run again to resume


class _StopFlag:
    """Set by the stop signals' handler; read (and agreed on by all ranks) after every step."""

    def __init__(self) -> None:
        self.signal: str | None = None

    def install(self, names: list[str]) -> None:
        for name in names:
            signal.signal(getattr(signal, f"SIG{name}"), self._handle)

    def _handle(self, signum, frame) -> None:
        self.signal = signal.Signals(signum).name


def _agreed(flag: _StopFlag, accelerator) -> bool:
    """True on every rank as soon as any rank got a stop signal."""
    wanted = torch.tensor([1.0 if flag.signal else 0.0], device=accelerator.device)
    if accelerator.num_processes > 1:
        torch.distributed.all_reduce(wanted, op=torch.distributed.ReduceOp.MAX)
    return bool(wanted.item() > 0)


class TrainingDiverged(RuntimeError):
    pass


# ----------------------------------------------------------------------------- pieces

def heatmap_loss(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """MSE over heatmaps weighted per joint by visibility, summed over stacks (intermediate
    supervision). pred: (N, S, K, H, W); target: (N, K, H, W); weights: (N, K)."""
    diff = (pred.float() - target[:, None]) ** 2
    per_joint = diff.mean((-1, -2))                                # (N, S, K)
    return (per_joint * weights[:, None]).mean((0, 2)).sum()


def make_optimizer(cfg: TrainConfig, params) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.name == "rmsprop":
        return torch.optim.RMSprop(params, lr=o.lr, weight_decay=o.weight_decay)
    if o.name == "sgd":
        return torch.optim.SGD(params, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.Adam(params, lr=o.lr, weight_decay=o.weight_decay)


def lr_factor(cfg: TrainConfig, step: int) -> float:
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


def set_lr(optimizer, cfg: TrainConfig, step: int) -> float:
    lr = cfg.optim.lr * lr_factor(cfg, step)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


@dataclass
class Progress:
    step: int = 0
    samples_seen: int = 0
    best_score: float = -math.inf
    """PCK for pose tasks, minus the reconstruction MSE for the AE: higher is better."""
    best_step: int = -1
    evals_without_gain: int = 0


def _fault(where: str, step: int) -> None:
    """Test hook: SHG_FAULT=step:N or save:N kills this process with SIGKILL there
    (nan:N makes step N's loss NaN)."""
    spec = os.environ.get("SHG_FAULT", "")
    if spec and spec == f"{where}:{step}":
        os.kill(os.getpid(), signal.SIGKILL)


# ----------------------------------------------------------------------------- set-up

def make_accelerator(cfg: TrainConfig):
    from accelerate import Accelerator
    from accelerate.utils import InitProcessGroupKwargs
    from datetime import timedelta

    cpu = not torch.cuda.is_available()
    # Only for real multi-process launches: given to a single process, Accelerate would ask
    # for a process group that nobody initialised.
    multi = int(os.environ.get("WORLD_SIZE", "1")) > 1 or bool(cfg.distributed.deepspeed_config)
    if cfg.distributed.deepspeed_config and "WORLD_SIZE" not in os.environ:
        from .launch import free_port

        # DeepSpeed always wants a process group; without a launcher it would try MPI.
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1",
                          MASTER_PORT=str(free_port()))
    kwargs = [InitProcessGroupKwargs(backend="gloo" if cpu else "nccl",
                                     timeout=timedelta(seconds=cfg.distributed.timeout_s))
              ] if multi else []
    if cfg.mixed_precision == "fp16" and cpu:
        raise ValueError("mixed_precision=fp16 needs a GPU; use bf16 on CPU")
    if cfg.distributed.deepspeed_config:
        from accelerate.utils import DeepSpeedPlugin

        ds = deepspeed_config(cfg)
        # ACCELERATE_USE_CPU (set for CPU DDP launches) would make Accelerate fall back to DDP.
        os.environ.pop("ACCELERATE_USE_CPU", None)
        # Not cpu=True here: Accelerate would then fall back to plain DDP and drop DeepSpeed.
        return Accelerator(deepspeed_plugin=DeepSpeedPlugin(hf_ds_config=ds),
                           kwargs_handlers=kwargs), ds
    return Accelerator(cpu=cpu, mixed_precision=cfg.mixed_precision, kwargs_handlers=kwargs), None


def deepspeed_config(cfg: TrainConfig) -> dict:
    """The user's DeepSpeed JSON with the values that must agree with our config filled in
    (no "auto": nothing here is derived from a prepared DataLoader)."""
    path = Path(cfg.distributed.deepspeed_config)
    if not path.is_file():
        raise ValueError(f"distributed.deepspeed_config: {path} not found")
    ds = json.loads(path.read_text())
    ds["train_micro_batch_size_per_gpu"] = cfg.train.batch_size
    ds["gradient_accumulation_steps"] = cfg.train.grad_accum
    ds.pop("train_batch_size", None)
    ds["gradient_clipping"] = cfg.train.clip_grad
    # DeepSpeed's bf16 mode keeps bf16 weights and breaks BatchNorm; autocast keeps fp32 weights.
    ds.pop("bf16", None)
    ds.pop("fp16", None)
    if cfg.mixed_precision == "bf16":
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16"}
    elif cfg.mixed_precision == "fp16":
        ds["fp16"] = {"enabled": True}
    stage = ds.get("zero_optimization", {}).get("stage", 0)
    if stage not in (0, 1, 2):
        raise ValueError(f"{path}: ZeRO stage {stage} is not supported (use 1 or 2)")
    return ds


def check_launch(cfg: TrainConfig, accelerator) -> None:
    """Fail loudly on launches that silently give another world size than intended."""
    expected = int(os.environ.get("SHG_EXPECT_PROCESSES", "0") or 0)
    trap = (os.environ.get("ACCELERATE_USE_CPU", "").lower() == "true"
            and "MASTER_ADDR" in os.environ and "WORLD_SIZE" not in os.environ)
    if expected and expected != accelerator.num_processes:
        hint = (" `accelerate launch --cpu --num_processes N` starts ONE process: use "
                "`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N`, "
                "`torchrun --standalone --nproc_per_node N` or `shg train --nproc N`."
                if trap else "")
        raise RuntimeError(f"expected {expected} processes, the launch gave "
                           f"{accelerator.num_processes}.{hint}")
    if trap and accelerator.is_main_process:
        print("shg train: WARNING: started by `accelerate launch --cpu`, which runs a single "
              "process whatever --num_processes says. For several CPU processes use "
              "`ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes N` "
              "(set SHG_EXPECT_PROCESSES=N to make this an error).", file=sys.stderr)


def broadcast_buffers(model, accelerator) -> None:
    """Per-rank BatchNorm: make every rank hold rank 0's running statistics (before validation
    and saving). Under DDP this equals what DDP's next forward would broadcast anyway."""
    if accelerator.num_processes == 1:
        return
    for buf in accelerator.unwrap_model(model).buffers():
        torch.distributed.broadcast(buf.data, src=0)


def unwrap(model, accelerator) -> torch.nn.Module:
    m = accelerator.unwrap_model(model)
    return getattr(m, "_orig_mod", m)


# ----------------------------------------------------------------------------- validation

def _val_batches(cfg: TrainConfig, accelerator):
    """This rank's share of the validation split, each sample once, un-augmented."""
    from shards.reader import EvalStream, eval_loader
    from shards.sample import SampleConfig

    stream = EvalStream(cfg.data.shards, cfg.data.val_split, cfg.eval.batch_size,
                        rank=accelerator.process_index, world=accelerator.num_processes,
                        cfg=SampleConfig(sigma=cfg.data.sigma), mean_from=cfg.data.train_split,
                        limit=cfg.eval.max_samples or None)
    return eval_loader(stream, num_workers=min(cfg.data.num_workers, 2))


@torch.no_grad()
def validate(cfg: TrainConfig, model, accelerator) -> dict:
    """Val loss and PCK (constant and bbox normalisation) over the validation split,
    each sample once, split over ranks and gathered."""
    from .decode import decode_heatmaps
    from .metrics import bbox_norm, constant_norm, pck

    net = unwrap(model, accelerator)
    was_training = net.training
    net.eval()
    rows, loss_sum, n = [], 0.0, 0
    for batch in _val_batches(cfg, accelerator):
        images = batch["image"].to(accelerator.device)
        if cfg.model.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with accelerator.autocast():
            out = net(images)
        target = batch["heatmaps"].to(accelerator.device)
        weights = batch["weights"].to(accelerator.device)
        loss_sum += float(heatmap_loss(out, target, weights)) * len(images)
        n += len(images)
        coords, _ = decode_heatmaps(out[:, -1].float().cpu(), images.shape[-1])
        for i in range(len(images)):
            meta = batch["meta"][i]
            side = meta["affine"][0][0] * meta["crop_size"]  # crop side in image pixels
            box = [meta["bbox"][2] * meta["crop_size"] / side,
                   meta["bbox"][3] * meta["crop_size"] / side]
            rows.append((int(batch["index"][i]), coords[i].numpy(),
                         batch["keypoints"][i].numpy(), box))
    net.train(was_training)
    if accelerator.num_processes > 1:
        gathered = [None] * accelerator.num_processes
        torch.distributed.all_gather_object(gathered, (rows, loss_sum, n))
        rows = [r for part in gathered for r in part[0]]
        loss_sum, n = sum(p[1] for p in gathered), sum(p[2] for p in gathered)
    rows.sort(key=lambda r: r[0])
    if len({r[0] for r in rows}) != len(rows):
        raise RuntimeError("validation saw a sample twice: ranks disagree on the split")
    import numpy as np

    pred = np.stack([r[1] for r in rows])
    gt = np.stack([r[2] for r in rows])
    visible = gt[:, :, 2] > 0
    thr = cfg.eval.thresholds
    const = pck(pred, gt[:, :, :2], visible, constant_norm(len(rows)), thr)
    box = pck(pred, gt[:, :, :2], visible, bbox_norm([r[3] for r in rows]), thr)
    result = {"val_loss": loss_sum / max(n, 1), "val_samples": n}
    for name, res in (("constant", const), ("bbox", box)):
        for t, v in zip(res.thresholds, res.mean):
            result[f"pck_{name}@{t:g}"] = float(v)
    return result


@torch.no_grad()
def validate_ae(cfg: TrainConfig, model, accelerator) -> dict:
    """Phase 1: reconstruction error of the clean validation latents (no noise), and for
    reference the error of the noisy latent itself (what the AE must undo)."""
    from .autoencoder import add_proportional_noise

    net = unwrap(model, accelerator)
    net.eval()
    sums = torch.zeros(4, dtype=torch.float64)  # recon SE, noisy SE, clean energy, elements
    gen = torch.Generator().manual_seed(0)
    for batch in _val_batches(cfg, accelerator):
        images = batch["image"].to(accelerator.device)
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


def task_loss(cfg: TrainConfig, out, target, weights) -> torch.Tensor:
    if cfg.task == "ae":
        recon, clean = out
        return F.mse_loss(recon.float(), clean.float())
    return heatmap_loss(out, target, weights)


def resolve_weights(path: str | Path) -> Path:
    """A run directory (its best/ model), a checkpoint directory or a .safetensors file."""
    path = Path(path)
    for candidate in (path / "best" / "model.safetensors", path / "model.safetensors", path):
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"{path}: no weights (expected RUN/best/, a checkpoint directory "
                            "or a .safetensors file)")


def _part(weights: dict, prefix: str) -> dict:
    """The `prefix.` sub-dictionary when the file holds a combined model, else all of it."""
    sub = {k[len(prefix) + 1:]: v for k, v in weights.items() if k.startswith(prefix + ".")}
    return sub or weights


def build_model(cfg: TrainConfig) -> torch.nn.Module:
    """The network of cfg.task, with weights from train.init_from / ae.shg_from / ae.ae_from."""
    from .autoencoder import AEPhase1, BottleneckAE, SHGWithAE
    from .model import StackedHourglass

    m = cfg.model
    shg = StackedHourglass(m.stacks, m.features, m.joints, init=m.init, zero_heads=m.zero_heads)
    if cfg.task == "pose":
        model = shg
    else:
        if not cfg.ae.shg_from:
            raise ValueError(f"task={cfg.task} needs ae.shg_from (the trained SHG run)")
        source = resolve_weights(cfg.ae.shg_from)
        weights = _part(load_weights(source)[0], "shg")
        check_compatible(shg, weights, str(source))
        shg.load_state_dict(weights)
        ae = BottleneckAE(m.features, cfg.ae.hidden, cfg.ae.channels, cfg.ae.downsample)
        if cfg.task == "ae":
            model = AEPhase1(shg, ae, cfg.ae.stack, cfg.ae.noise)
        else:
            if not cfg.ae.ae_from:
                raise ValueError("task=pose_ae needs ae.ae_from (the phase-1 AE run)")
            source = resolve_weights(cfg.ae.ae_from)
            weights = _part(load_weights(source)[0], "ae")
            check_compatible(ae, weights, str(source))
            ae.load_state_dict(weights)
            model = SHGWithAE(shg, ae, cfg.ae.stack, cfg.ae.freeze_ae)
    if cfg.train.init_from:
        source = resolve_weights(cfg.train.init_from)
        weights, _ = load_weights(source)
        check_compatible(model, weights, str(source))
        model.load_state_dict(weights)
    return model


def selected_pck(cfg: TrainConfig, metrics: dict) -> float:
    norm, _, thr = cfg.eval.select.partition("@")
    key = f"pck_{norm}@{float(thr):g}"
    if key not in metrics:
        raise ValueError(f"eval.select={cfg.eval.select} needs {float(thr):g} in eval.thresholds")
    return metrics[key]


# ----------------------------------------------------------------------------- the loop

def train(cfg: TrainConfig) -> dict:
    from shards.build import read_manifest
    from shards.reader import TrainStream, train_loader
    from shards.sample import SampleConfig

    cfg.mixed_precision = resolve_precision(cfg.mixed_precision)  # saved resolved
    if not cfg.data.shards:
        raise ValueError("data.shards is not set (a directory made by `shg shards build`)")
    manifest = read_manifest(cfg.data.shards)
    for split in (cfg.data.train_split, cfg.data.val_split):
        if split not in manifest["splits"]:
            raise ValueError(f"{cfg.data.shards}: no split '{split}' (have "
                             f"{', '.join(manifest['splits'])})")
    accelerator, ds_config = make_accelerator(cfg)
    check_launch(cfg, accelerator)
    is_main, world, rank = (accelerator.is_main_process, accelerator.num_processes,
                            accelerator.process_index)
    use_ds = ds_config is not None
    run_dir = Path(cfg.run_dir)
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True)
    torch.manual_seed(cfg.train.seed)  # same initial weights on every rank

    model = build_model(cfg)
    bn_mode = cfg.distributed.batchnorm
    if bn_mode == "auto":
        bn_mode = "sync" if torch.cuda.is_available() and world > 1 else "rank0"
    if bn_mode == "sync":
        if not torch.cuda.is_available():
            raise ValueError("distributed.batchnorm=sync needs CUDA (SyncBatchNorm refuses CPU);"
                             " use rank0")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if cfg.model.channels_last and not cfg.distributed.deepspeed_config:
        # (ZeRO flattens parameters through views that need contiguous weights; there only the
        # activations go channels-last.)
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    if cfg.train.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    checkpointer = Checkpointer(run_dir, accelerator, cfg.checkpoint.keep, deepspeed=use_ds)

    progress = Progress()
    resume_from = None
    if cfg.checkpoint.resume == "auto":
        resume_from = latest_checkpoint(checkpointer.root)
    elif cfg.checkpoint.resume != "none":
        resume_from = Path(cfg.checkpoint.resume)
        if not (resume_from / "COMPLETE").exists():
            raise ValueError(f"checkpoint.resume={resume_from}: not a complete checkpoint")
    if resume_from is not None:
        check_compatible(unwrap(model, accelerator), load_weights(resume_from)[0],
                         str(resume_from))
        state = checkpointer.load(resume_from, model, optimizer)
        progress = Progress(**{k: state[k] for k in Progress.__dataclass_fields__})
        if is_main:
            print(f"resumed from {resume_from} at step {progress.step}"
                  + (f" (saved by {state['world_size']} processes, now {world}: "
                     "data order differs from an uninterrupted run)"
                     if state["world_size"] != world else ""), flush=True)
    if is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.toml").write_text(dump_toml(cfg))
    metadata = {"model": unwrap(model, accelerator).config(),
                "mean_rgb": manifest["splits"][cfg.data.train_split]["mean_rgb"],
                "crop_size": manifest["splits"][cfg.data.train_split]["crop"]["size"],
                "sigma": cfg.data.sigma}

    sample_cfg = SampleConfig(sigma=cfg.data.sigma, augment=cfg.data.augment,
                              rotate_deg=cfg.data.rotate_deg, scale_min=cfg.data.scale_min,
                              scale_max=cfg.data.scale_max, flip_prob=cfg.data.flip_prob)
    accum = cfg.train.grad_accum
    stream = TrainStream(cfg.data.shards, cfg.data.train_split, cfg.train.batch_size,
                         seed=cfg.train.seed, cfg=sample_cfg, rank=rank, world=world,
                         num_workers=max(1, cfg.data.num_workers),
                         start_batch=progress.step * accum,
                         num_batches=(cfg.train.max_steps - progress.step) * accum,
                         shuffle_buffer=cfg.data.shuffle_buffer,
                         mean_from=cfg.data.train_split)
    loader = train_loader(stream)
    logger = MetricsLogger(run_dir, is_main)
    from tqdm import tqdm

    # In a log file (Slurm) a bar that redraws often is megabytes of noise: redraw rarely.
    bar = tqdm(total=cfg.train.max_steps, initial=progress.step, disable=not is_main,
               unit="step", dynamic_ncols=True,
               mininterval=0.5 if sys.stderr.isatty() else 30.0)

    def save_checkpoint() -> None:
        broadcast_buffers(model, accelerator)
        net = unwrap(model, accelerator)
        checkpointer.save(progress.step, model, optimizer, progress.__dict__.copy(),
                          net.state_dict(), metadata, fault=_fault)

    def run_validation() -> bool:
        """Validate, keep best/ by PCK; returns True when early stopping says stop."""
        broadcast_buffers(model, accelerator)
        if cfg.task == "ae":
            metrics = validate_ae(cfg, model, accelerator)
            score, what = -metrics["val_recon_mse"], "reconstruction MSE"
        else:
            metrics = validate(cfg, model, accelerator)
            score, what = selected_pck(cfg, metrics), f"PCK {cfg.eval.select}"
        improved = score > progress.best_score
        if improved:
            progress.best_score, progress.best_step = score, progress.step
            progress.evals_without_gain = 0
            if is_main:
                save_best(run_dir, unwrap(model, accelerator).state_dict(),
                          {**metadata, "step": progress.step, "metrics": metrics})
        else:
            progress.evals_without_gain += 1
        logger.log({"step": progress.step, **metrics, "best_score": progress.best_score})
        if is_main:
            shown, best = (-score, -progress.best_score) if cfg.task == "ae" else (
                score, progress.best_score)
            bar.write(f"step {progress.step}: val loss {metrics['val_loss']:.5f}, "
                      f"{what} {shown:.4g} (best {best:.4g} at step {progress.best_step})")
        patience = cfg.eval.early_stop_patience
        return bool(patience and progress.evals_without_gain >= patience)

    stop_flag = _StopFlag()
    stop_flag.install(cfg.train.stop_signals)
    preempted = False
    saved_at = -1
    model.train()
    t_last, samples_last = time.perf_counter(), progress.samples_seen
    micro, loss_acc = 0, 0.0
    stop = False
    for batch in loader:
        if progress.step >= cfg.train.max_steps:
            break
        lr = set_lr(optimizer, cfg, progress.step)
        images = batch["image"].to(accelerator.device, non_blocking=True)
        if cfg.model.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        target = batch["heatmaps"].to(accelerator.device, non_blocking=True)
        weights = batch["weights"].to(accelerator.device, non_blocking=True)
        micro += 1
        last_micro = micro == accum
        sync = last_micro or use_ds
        with (accelerator.no_sync(model) if not sync else contextlib.nullcontext()):
            with accelerator.autocast():
                out = model(images)
            loss = task_loss(cfg, out, target, weights)
            accelerator.backward(loss if use_ds else loss / accum)
        loss_acc += float(loss.detach()) / accum
        if os.environ.get("SHG_FAULT") == f"nan:{progress.step + 1}":  # test hook
            loss_acc = float("nan")
        if not last_micro:
            continue
        micro = 0
        # Every rank must agree before stepping: one rank's NaN stops all of them. (Under
        # DeepSpeed the engine has already stepped inside backward; the run still stops before
        # anything is saved, so the last good checkpoint stays the newest.)
        bad = torch.tensor([0.0 if math.isfinite(loss_acc) else 1.0], device=accelerator.device)
        if world > 1:
            torch.distributed.all_reduce(bad)
        if bad.item() > 0:
            last = latest_checkpoint(checkpointer.root)
            raise TrainingDiverged(
                f"loss is {loss_acc} at step {progress.step + 1}: stopping before the "
                f"optimizer step. Last good checkpoint: {last or 'none'} (left intact). "
                "Lower optim.lr, set train.clip_grad, or use mixed_precision=no.")
        if not use_ds:
            if cfg.train.clip_grad > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.train.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        progress.step += 1
        progress.samples_seen += cfg.train.batch_size * accum * world
        bar.update(1)
        _fault("step", progress.step)
        if progress.step % cfg.train.log_every == 0 or progress.step == cfg.train.max_steps:
            now = time.perf_counter()
            rate = (progress.samples_seen - samples_last) / max(now - t_last, 1e-9)
            t_last, samples_last = now, progress.samples_seen
            logger.log({"step": progress.step, "loss": loss_acc, "lr": lr, "img_per_s": rate,
                        "samples_seen": progress.samples_seen,
                        "epoch": progress.samples_seen / stream.num_samples})
            bar.set_postfix(loss=f"{loss_acc:.5f}", img_s=f"{rate:.1f}")
        loss_acc = 0.0
        final = progress.step == cfg.train.max_steps
        if progress.step % cfg.eval.every_steps == 0 or final:
            stop = run_validation()
        if progress.step % cfg.checkpoint.every_steps == 0 or final or stop:
            save_checkpoint()
            saved_at = progress.step
        if not final and _agreed(stop_flag, accelerator):
            if saved_at != progress.step:
                save_checkpoint()
            preempted = True
            by = stop_flag.signal or "a signal on another rank"
            logger.log({"step": progress.step, "event": f"stopped by {by}"})
            if is_main:
                bar.write(f"stopped by a signal at step {progress.step}: checkpoint saved; "
                          "run the same command again (or requeue) to resume")
            break
        if stop:
            if is_main:
                bar.write(f"early stopping: {cfg.eval.early_stop_patience} validations "
                          "without a better PCK")
            break
    bar.close()
    logger.close()
    summary = {"step": progress.step, "best_score": progress.best_score,
               "best_step": progress.best_step, "run_dir": str(run_dir),
               "stopped_by_signal": preempted}
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


def save_best(run_dir: Path, state_dict: dict, info: dict) -> None:
    best = run_dir / "best"
    best.mkdir(parents=True, exist_ok=True)
    save_weights(best / "model.safetensors", state_dict, info)
    tmp = best / "info.json.tmp"
    tmp.write_text(json.dumps(info, indent=1))
    os.replace(tmp, best / "info.json")


class MetricsLogger:
    """metrics.jsonl (appended, so a resumed run continues it) and TensorBoard, main rank only."""

    def __init__(self, run_dir: Path, enabled: bool):
        self.enabled = enabled
        self.file = self.tb = None
        if enabled:
            run_dir.mkdir(parents=True, exist_ok=True)
            self.file = open(run_dir / "metrics.jsonl", "a")
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError:  # tensorboard is optional at run time
                self.tb = None

    def log(self, row: dict) -> None:
        if not self.enabled:
            return
        self.file.write(json.dumps({"time": time.time(), **row}) + "\n")
        self.file.flush()
        if self.tb:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k.replace("@", "_at_"), v, row["step"])

    def close(self) -> None:
        if self.file:
            self.file.close()
        if self.tb:
            self.tb.close()


# ----------------------------------------------------------------------------- entry points

def end_process_after_deepspeed() -> None:
    """Make this process end with os._exit(0) once its caller is done: registered last, this
    exit handler runs first, after everything the caller wrote at its own end (DeepSpeed's
    abort comes later in the interpreter's shutdown)."""
    import atexit

    def _exit_now() -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    atexit.register(_exit_now)


def main(argv: list[str] | None = None, hard_exit: bool = True) -> int:
    """`hard_exit=False` for callers that still have work after training in this process (the
    Slurm job wrapper writes its result): they must end the process themselves, see
    `end_process_after_deepspeed`."""
    import argparse

    parser = argparse.ArgumentParser(prog="shg.train", description=__doc__.split("\n")[0])
    parser.add_argument("--config", help="TOML config (configs/*.toml)")
    parser.add_argument("--resume", choices=["auto", "none"], default=None,
                        help="same as checkpoint.resume=...")
    parser.add_argument("overrides", nargs="*", help="section.key=value")
    args = parser.parse_args(argv)
    overrides = list(args.overrides)
    if args.resume:
        overrides.append(f"checkpoint.resume={args.resume!s}")
    from shards.coco import DataError

    from .config import ConfigError

    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:
        print(f"shg train: error: {exc}", file=sys.stderr)
        return 2
    code = 0
    try:
        summary = train(cfg)
        if int(os.environ.get("RANK", "0")) == 0:
            print(json.dumps(summary))
        if summary["stopped_by_signal"]:
            code = EXIT_REQUEUE
    except TrainingDiverged as exc:
        print(f"shg train: {exc}", file=sys.stderr)
        code = EXIT_DIVERGED
    except (ValueError, DataError, FileNotFoundError, RuntimeError) as exc:
        if os.environ.get("SHG_DEBUG"):
            raise
        print(f"shg train: error: {exc}", file=sys.stderr)
        code = 2
    sys.stdout.flush()
    sys.stderr.flush()
    if cfg.distributed.deepspeed_config:
        if hard_exit:
            # DeepSpeed sometimes aborts at interpreter exit after all work is done: skip the
            # exit handlers once everything is flushed.
            os._exit(code)
        end_process_after_deepspeed()
    return code


if __name__ == "__main__":
    sys.exit(main())
