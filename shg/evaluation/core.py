"""The one evaluation core: run a model (or the ground-truth heatmaps) over a split, decode,
map back to image pixels, gather across ranks, check and sort. Training validation and
`shg eval` both use it, so they cannot drift apart: validation at step N and
`shg eval --step N --no-flip` give the same PCK (tested).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from shards.codec import HeatmapCodec, flip_back
from shards.crop import to_image
from shards.manifest import split_entry
from shards.reader import EvalStream, dist_rank_world, eval_loader
from shards.sample import model_input

from ..losses import heatmap_loss
from .pck import bbox_norm, constant_norm, head_norm, pck, torso_norm


@dataclass
class ModelOnSplit:
    """What the commands that run a model over a split share: the shards and split to read,
    the output directory, and the model as --run [--step] (best/ by default) or --model."""
    shards: str
    split: str
    out: str
    run: str | None = None
    step: int | None = None
    model_file: str | None = None
    best: str = "best"
    """Which kept model of --run without --step: "best" (by the selection metric, PCK) or
    "best_by_loss" (by validation loss)."""
    device: str = "auto"
    """Where the model runs: auto (this rank's CUDA GPU when CUDA is available, else the CPU),
    cpu, cuda or cuda:N (see `placement`)."""
    precision: str = "auto"
    """Autocast of the forward passes: auto (bf16 on a GPU that computes it natively, else fp16;
    none on the CPU), fp32, bf16 or fp16 (CUDA only). Decoding, PCK and PCA are fp32 anyway."""

    def load_model(self, poses: bool = True):
        """(model, metadata, weights file) of --run/--step or --model."""
        from ..errors import UserError
        from ..weights import load_model

        if self.model_file:
            return load_model(self.model_file, poses=poses)
        if self.run is None:
            raise UserError("give --run RUN (with --best or --step N) or --model FILE")
        return load_model(self.run, self.step, poses=poses, best=self.best)


def split_batches(shards: str, split: str, batch_size: int, *, rank: int | None = None,
                  world: int | None = None, mean=None, mean_from: str = "train2017",
                  limit: int | None = None, num_workers: int = 1, sample_cfg=None,
                  targets: bool = False) -> Iterable[dict]:
    """This rank's share of a split, every sample once, un-augmented, in manifest order (with
    the training targets when `targets`: a validation loss, the oracle)."""
    if rank is None or world is None:
        rank, world = dist_rank_world()
    stream = EvalStream(shards, split, batch_size, rank=rank, world=world, cfg=sample_cfg,
                        mean_from=mean_from, limit=limit or None, mean=mean, targets=targets)
    return eval_loader(stream, num_workers=num_workers)


def progress_bar(shards: str | None, split: str, limit: int | None, world: int, enabled: bool,
                 desc: str, total: int | None = None):
    """A bar over this rank's share of a split (or of `total` crops when given)."""
    from tqdm import tqdm

    if total is None:
        total = split_entry(shards, split)["num_samples"]
        total = min(total, limit or total) // world
    # In a log file (Slurm) a bar that redraws often is megabytes of noise: redraw rarely.
    return tqdm(total=total, disable=not enabled, unit="crop", desc=desc,
                mininterval=0.5 if sys.stderr.isatty() else 30.0)


PRECISIONS = ("auto", "fp32", "bf16", "fp16")


@dataclass(frozen=True)
class Placement:
    """Where a model runs and the precision of its forward passes (`placement`)."""
    device: torch.device
    precision: str
    """fp32 (no autocast), bf16 or fp16."""

    def autocast(self):
        """The context of a forward pass: autocast in bf16/fp16, nothing in fp32."""
        if self.precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.precision == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def describe(self) -> str:
        return f"{self.device}, " + ("fp32" if self.precision == "fp32"
                                     else f"{self.precision} autocast")


def placement(device: str = "auto", precision: str = "auto") -> Placement:
    """The device and precision of inference. `device`: auto (CUDA when available, else the
    CPU), cpu, cuda or cuda:N; "cuda" is this rank's GPU (LOCAL_RANK; ranks beyond the GPUs of
    the node share them). `precision`: auto (bf16 autocast on a GPU that computes bf16 natively,
    fp16 on older GPUs, fp32 on the CPU), fp32, bf16 or fp16 (CUDA only)."""
    import os

    from ..errors import UserError

    cuda = torch.cuda.is_available()
    try:
        where = torch.device("cuda" if cuda else "cpu") if device == "auto" else torch.device(
            device)
    except RuntimeError:
        where = None
    if where is None or where.type not in ("cpu", "cuda"):
        raise UserError(f"--device {device}: not a device here; use auto, cpu, cuda or cuda:N")
    if where.type == "cuda":
        if not cuda:
            raise UserError(f"--device {device}: this process sees no CUDA GPU; use --device cpu "
                            "(or auto)")
        count = torch.cuda.device_count()
        index = where.index if where.index is not None else \
            int(os.environ.get("LOCAL_RANK", 0)) % count
        if index >= count:
            raise UserError(f"--device {device}: this process sees {count} CUDA GPU(s), "
                            f"cuda:0 to cuda:{count - 1}")
        where = torch.device("cuda", index)
    if precision not in PRECISIONS:
        raise UserError(f"--precision {precision}; valid: {', '.join(PRECISIONS)}")
    if precision == "auto":
        precision = "fp32" if where.type == "cpu" else "bf16" if _native_bf16(where) else "fp16"
    if precision == "fp16" and where.type != "cuda":
        raise UserError("--precision fp16 is for CUDA GPUs; on the CPU use fp32 or bf16")
    return Placement(where, precision)


def _native_bf16(device: torch.device) -> bool:
    """Does this GPU compute bf16 natively (Ampere, sm_80, and later; ROCm: torch's answer)?"""
    if torch.version.hip:
        return torch.cuda.is_bf16_supported()
    return torch.cuda.get_device_capability(device) >= (8, 0)


@torch.no_grad()
def forward_heatmaps(model, images: torch.Tensor, flip_index=None, flip_shift: bool = False
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """(every stack's output (N, S, K, H, W), the last stack's heatmaps (N, K, H, W) in fp32,
    averaged with the flipped input's when `flip_index` (the schema's) is given for the flip
    test; `flip_shift` moves the flipped heatmaps one cell right first, as HRNet and mmpose do
    for their pixel convention)."""
    out = model(images)
    heat = out[:, -1].float()
    if flip_index is not None:
        flipped = flip_back(model(images.flip(-1))[:, -1].float(), flip_index)
        if flip_shift:
            flipped[..., 1:] = flipped[..., :-1].clone()
        heat = 0.5 * (heat + flipped)
    return out, heat


@torch.no_grad()
def predict_rows(model, batches: Iterable[dict], *, schema=None, sigma: float = 1.0,
                 flip: bool = False, flip_shift: bool = False, refine: str = "quarter",
                 device: torch.device | str = "cpu", autocast=contextlib.nullcontext,
                 channels_last: bool = False, with_loss: bool = False, bar=None
                 ) -> Iterator[dict]:
    """One row per sample: predictions in crop and image pixels, confidences, ground truth, box.

    `schema`: the keypoint schema (the flip test's left/right swap, needed with `flip`);
    `sigma`: the target
    Gaussian the model was trained with (DARK decoding smooths with it). `model=None` decodes
    the ground-truth target heatmaps (the oracle). `with_loss` adds each sample's training
    loss (all stacks, no flip) as row["loss"]."""
    for batch in batches:
        if not batch["key"]:  # a loader worker reporting unreadable images only
            continue
        loss = None
        if model is None:
            heat = batch["heatmaps"]
        else:
            images = model_input(batch, device, channels_last)
            with autocast():
                out, heat = forward_heatmaps(model, images,
                                             schema.flip_index if flip else None, flip_shift)
            if with_loss:
                loss = heatmap_loss(out, batch["heatmaps"].to(device),
                                    batch["weights"].to(device), reduction="none").cpu()
        crop_size = batch["image"].shape[-1]
        coords, conf = HeatmapCodec(crop_size, sigma=sigma).decode(heat.float().cpu(), refine)
        # The rows outlive the batch: give them compact copies made once the heatmaps are
        # freed. Views of the decoder's tensors, allocated while the heatmaps lived, pinned
        # ~16 KB of heap per row (RSS grew 21 KB per row on 64 px crops; 0.3 KB copied).
        del heat
        coords, conf = coords.numpy().copy(), conf.numpy().copy()
        keypoints = batch["keypoints"].numpy().copy()
        for i, meta in enumerate(batch["meta"]):
            kps = keypoints[i]
            row = {"index": int(batch["index"][i]), "key": batch["key"][i],
                   "image_id": meta["image_id"], "ann_id": meta["ann_id"],
                   "pred_crop": coords[i], "conf": conf[i],
                   "pred_image": to_image(coords[i], meta["affine"]),
                   "gt_crop": kps[:, :2], "visible": kps[:, 2] > 0,
                   "bbox": meta["bbox"], "affine": meta["affine"], "area": meta["area"],
                   "box_score": meta.get("score", 1.0), "crop_size": crop_size,
                   "category_id": meta.get("category_id", 1),
                   "head_box": meta.get("head_box")}
            if loss is not None:
                row["loss"] = float(loss[i])
            yield row
        if bar is not None:
            bar.update(len(batch["key"]))


def noting_problems(batches: Iterable[dict], problems: list) -> Iterator[dict]:
    """The batches, with the unreadable images they report (BoxCrops' "problems") moved into
    `problems`."""
    for batch in batches:
        problems.extend(batch.pop("problems", []))
        yield batch


def gather_list(items: list) -> list:
    """Every rank's items on every rank, rank by rank (this rank's alone outside a group)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized() \
            and torch.distributed.get_world_size() > 1:
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, items)
        return [x for p in parts for x in p]
    return items


def gather_rows(rows: list[dict]) -> list[dict]:
    """Every rank's rows on every rank, sorted by sample index; a sample seen twice (ranks that
    disagree on the split) is an error."""
    rows = sorted(gather_list(rows), key=lambda r: r["index"])
    if len({r["index"] for r in rows}) != len(rows):
        raise RuntimeError("a sample was evaluated twice: ranks disagree on the split")
    return rows


NORMALISATIONS = ("constant", "bbox", "torso", "head")


def normalisations(rows: list[dict], schema=None, names=NORMALISATIONS
                   ) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """For each PCK normalisation of `names` the data allows: (predictions, ground truth,
    per-instance norm) in the pixels it is defined in. constant: crop pixels (the thesis); bbox,
    torso and head: image pixels. torso needs shoulders and hips in the schema, head (PCKh)
    head boxes in the data; without them they are left out (reported unavailable)."""
    out = {}
    pred_c = np.stack([r["pred_crop"] for r in rows])
    gt_c = np.stack([r["gt_crop"] for r in rows])
    if "constant" in names:
        crop_sizes = np.array([r["crop_size"] for r in rows], dtype=np.float64)
        out["constant"] = (pred_c, gt_c, constant_norm(len(rows), crop_sizes))
    # Image-pixel ground truth = the crop keypoints mapped back (exact: same affine).
    pred_i = np.stack([r["pred_image"] for r in rows])
    gt_i = np.stack([to_image(r["gt_crop"], r["affine"]) for r in rows])
    if "bbox" in names:
        out["bbox"] = (pred_i, gt_i, bbox_norm([r["bbox"][2:] for r in rows]))
    torso = schema.torso() if schema is not None else None
    if "torso" in names and torso is not None:
        out["torso"] = (pred_i, gt_i, torso_norm(gt_i, visible(rows), torso))
    if "head" in names and any(r.get("head_box") for r in rows):
        out["head"] = (pred_i, gt_i, head_norm([r.get("head_box") for r in rows]))
    return out


def visible(rows: list[dict]) -> np.ndarray:
    return np.stack([r["visible"] for r in rows])


def pck_metrics(rows: list[dict], thresholds, names=("constant", "bbox")) -> dict[str, float]:
    """{"pck_constant@0.5": ..., "pck_bbox@0.2": ...}: mean PCK over joints per threshold."""
    vis = visible(rows)
    out = {}
    for name, (p, g, n) in normalisations(rows, names=names).items():
        res = pck(p, g, vis, n, thresholds)
        for t, v in zip(res.thresholds, res.mean):
            out[f"pck_{name}@{t:g}"] = float(v)
    return out
