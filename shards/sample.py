"""Turning one stored crop into a training/evaluation sample: augmentation and heatmap targets.

Loader workers ship uint8 crops; the mean subtraction and scaling happen on the training device
(`model_input`). With augment_on = "device" the workers only decode: the rotation/scale/flip of
a whole batch (one affine sampling) and the targets are computed there (`device_augment`), from
the same per-sample random draws as the loader path, so exact resume holds on both paths.

Targets are the heatmap codec's (shards/codec.py: the thesis's 1 in its cell, then a
Gaussian); the left/right swap of a flip and the per-joint loss weights are the keypoint
schema's (shards/schema.py), which every sample is decoded with.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .codec import HeatmapCodec
from .schema import KeypointSchema


@dataclass
class SampleConfig:
    """How stored crops become tensors (the `data` section of the training config uses it)."""

    heatmap_size: int = 0
    """Side of the target heatmaps: 0 = a quarter of the crop side (what the SHG outputs; 64
    for the thesis's 256 px crops)."""
    sigma: float = 1.0
    """Standard deviation of the target Gaussian, in heatmap cells."""
    augment: bool = True
    """Random rotation / scale / flip (training only; evaluation never augments)."""
    rotate_deg: float = 30.0
    """Rotation drawn uniformly from [-rotate_deg, rotate_deg]."""
    scale_min: float = 0.75
    scale_max: float = 1.25
    """Zoom drawn uniformly from [scale_min, scale_max] about the crop centre."""
    flip_prob: float = 0.5
    """Probability of a horizontal flip (left/right joints swapped)."""
    occluded_weight: float = 1.0
    """Loss weight of labelled-but-occluded joints (COCO v=1); visible (v=2) joints weigh 1."""
    augment_on: str = "auto"
    """Where augmentation and targets are computed: "loader" (each loader worker, OpenCV +
    numpy), "device" (the training device, a whole batch at once; workers only decode) or
    "auto" (device on CUDA, loader on CPU, where the loader path measured faster)."""

    def __post_init__(self) -> None:
        if self.heatmap_size and self.heatmap_size < 4:
            raise ValueError("heatmap_size must be 0 (a quarter of the crop) or >= 4")
        if self.sigma <= 0:
            raise ValueError("sigma must be > 0")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError("scale_min/scale_max: need 0 < scale_min <= scale_max")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError("flip_prob must be in [0, 1]")
        if self.rotate_deg < 0:
            raise ValueError("rotate_deg must be >= 0")
        if self.augment_on not in AUGMENT_ON:
            raise ValueError(f"augment_on {self.augment_on!r}; valid: {', '.join(AUGMENT_ON)}")


AUGMENT_ON = ("auto", "loader", "device")


def resolve_augment_on(value: str, cuda: bool) -> str:
    """"auto" -> "device" on CUDA, "loader" elsewhere; other values stay."""
    return ("device" if cuda else "loader") if value == "auto" else value


def augmentation_matrix(rng: np.random.Generator, cfg: SampleConfig, size: int
                        ) -> tuple[np.ndarray, bool]:
    """Forward 2x3 affine (input crop -> augmented crop) and whether it flips."""
    angle = math.radians(rng.uniform(-cfg.rotate_deg, cfg.rotate_deg)) if cfg.rotate_deg else 0.0
    scale = rng.uniform(cfg.scale_min, cfg.scale_max)
    flip = bool(rng.random() < cfg.flip_prob)
    c = size / 2.0
    cos, sin = scale * math.cos(angle), scale * math.sin(angle)
    m = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, 1.0]])
    m[:2, 2] = (c, c) - m[:2, :2] @ (c, c)
    if flip:  # x -> size - x, in continuous coordinates
        m = np.array([[-1.0, 0.0, size], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]) @ m
    return m[:2], flip


def warp(pixels: np.ndarray, forward: np.ndarray) -> np.ndarray:
    """Apply a forward affine (continuous coordinates) to an HxWx3 crop.

    OpenCV addresses pixel centres by integer indices, we by i + 0.5; shift accordingly."""
    import cv2

    m = forward.astype(np.float64).copy()
    m[:, 2] += m[:, :2] @ (0.5, 0.5) - 0.5
    h, w = pixels.shape[:2]
    return cv2.warpAffine(pixels, m, (w, h), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> HxWx3 uint8 RGB (grey or RGBA PNGs are converted)."""
    import cv2
    import pyspng

    try:  # libspng: 1.2x faster than OpenCV on level-1 crops, 6x on level 0 (bench/png_decode.py)
        pixels = pyspng.load(data)
        if pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.dtype == np.uint8:
            return pixels
    except Exception:  # noqa: BLE001 - not a plain RGB PNG: OpenCV and PIL convert it below
        pass
    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if pixels is None:
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # raises if corrupt
    return pixels


def codec(cfg: SampleConfig, crop_size: int) -> HeatmapCodec:
    """The heatmap codec of these settings for crops of `crop_size`."""
    return HeatmapCodec(crop_size, cfg.heatmap_size, cfg.sigma)


def decode(raw: dict, cfg: SampleConfig, rng: np.random.Generator | None,
           schema: KeypointSchema, targets: bool = True) -> dict:
    """A raw tar sample ({"__key__", "png", "json"}) -> arrays ready to batch: the uint8 CHW
    crop, warped and with its targets (loader path), or as stored with the augmentation to
    apply on the device (cfg.augment_on == "device"). `schema`: the shards' keypoint schema.

    `rng=None` (or cfg.augment False) means no augmentation; `targets=False` (evaluation)
    leaves the heatmap targets out: crop, keypoints and metadata only."""
    meta = json.loads(raw["json"])
    pixels = decode_png(raw["png"])
    size = pixels.shape[1]
    kps = np.asarray(meta["keypoints"], dtype=np.float64).reshape(-1, 3)
    if len(kps) != schema.num_joints:
        raise ValueError(f"{len(kps)} keypoints, the shards' schema has {schema.num_joints}")
    aug, flipped = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]), False
    if cfg.augment and rng is not None:
        aug, flipped = augmentation_matrix(rng, cfg, size)
        if cfg.augment_on == "device":  # warp and targets happen batched on the device
            return {"key": raw["__key__"], "image": np.ascontiguousarray(pixels.transpose(2, 0, 1)),
                    "keypoints": kps, "augment": aug, "flip": flipped, "meta": meta}
        pixels = warp(pixels, aug)
        labelled = kps[:, 2] > 0
        kps[labelled, :2] = kps[labelled, :2] @ aug[:, :2].T + aug[:, 2]
        if flipped:
            kps = kps[list(schema.flip_index)]
    if not targets:
        return {"key": raw["__key__"], "image": np.ascontiguousarray(pixels.transpose(2, 0, 1)),
                "keypoints": kps.astype(np.float32), "flip": flipped, "meta": meta}
    target, weight = codec(cfg, size).encode(kps, cfg.occluded_weight, schema.weights)
    return {
        "key": raw["__key__"],
        "image": np.ascontiguousarray(pixels.transpose(2, 0, 1)),
        "heatmaps": target,
        "weights": weight,
        "keypoints": kps.astype(np.float32),
        "augment": aug.astype(np.float32),
        "flip": flipped,
        "meta": meta,
    }


# ----------------------------------------------------------------------------- on the device
def model_input(batch: dict, device, channels_last: bool = False):
    """The batch's uint8 crops as the model's input on `device`: (x - mean RGB) / 255, computed
    there (the same float32 arithmetic the loader workers used to do)."""
    import torch

    images = batch["image"].to(device, non_blocking=True)
    if images.dtype != torch.uint8:  # already model input
        return images.contiguous(memory_format=torch.channels_last) if channels_last else images
    return _scaled(images.float(), batch, device, channels_last)


def _scaled(images, batch: dict, device, channels_last: bool):
    """float pixels -> (x - mean RGB) / 255 on `device`, optionally channels_last."""
    import torch

    mean = batch["mean_rgb"].to(device, non_blocking=True).view(1, -1, 1, 1)
    x = (images - mean) * (1.0 / 255.0)
    return x.contiguous(memory_format=torch.channels_last) if channels_last else x


def training_inputs(batch: dict, cfg: SampleConfig, device, schema: KeypointSchema,
                    channels_last: bool = False):
    """(images, target heatmaps, weights) of a training batch on `device`, augmented in the
    loader workers or here (batches from augment_on = "device" carry no targets yet)."""
    if "heatmaps" in batch:
        return (model_input(batch, device, channels_last),
                batch["heatmaps"].to(device, non_blocking=True),
                batch["weights"].to(device, non_blocking=True))
    return device_augment(batch, cfg, device, schema, channels_last)


def device_augment(batch: dict, cfg: SampleConfig, device, schema: KeypointSchema,
                   channels_last: bool = False):
    """The loader path's augmentation for a whole batch on `device`: one affine sampling
    (bilinear, zeros outside, as cv2.warpAffine), the keypoints moved by the same matrices and
    the schema's left/right swap, then the codec's targets (the 1 in its cell, the Gaussian)."""
    import torch
    import torch.nn.functional as F

    images = batch["image"].to(device, non_blocking=True).float()
    n, _, h, w = images.shape
    if h != w:
        raise ValueError(f"device augmentation needs square crops, got {h}x{w}")
    forward = batch["augment"].to(device, torch.float64)  # (N, 2, 3): input -> output
    bottom = torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64, device=device).expand(n, 1, 3)
    inverse = torch.linalg.inv(torch.cat([forward, bottom], 1))[:, :2]  # output -> input
    a, b = inverse[:, :, :2], inverse[:, :, 2]
    # pixel coordinates x (edges 0..w) <-> grid_sample's u = 2x/w - 1 (align_corners=False)
    theta = torch.cat([a, (a.sum(-1) + 2 * b / w - 1).unsqueeze(-1)], -1)
    grid = F.affine_grid(theta.float(), [n, 3, h, w], align_corners=False)
    warped = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros",
                           align_corners=False)
    x = _scaled(warped, batch, device, channels_last)

    kps = batch["keypoints"].to(device, torch.float64)
    moved = kps[..., :2] @ forward[:, :, :2].transpose(1, 2) + forward[:, None, :, 2]
    kps = torch.cat([torch.where((kps[..., 2:] > 0), moved, kps[..., :2]), kps[..., 2:]], -1)
    swap = torch.as_tensor(schema.flip_index, device=device)
    flip = torch.as_tensor(batch["flip"], device=device).view(n, 1, 1)
    kps = torch.where(flip, kps[:, swap], kps)
    target, weight = codec(cfg, h).encode_batch(kps, cfg.occluded_weight, schema.weights)
    return x, target, weight
