"""Turning one stored crop into a training/evaluation sample: augmentation and heatmap targets.

Targets follow the thesis: each keypoint's 1 is placed directly in the 64x64 grid (the cell that
contains it), then blurred with a Gaussian; the Gaussian is scaled to a peak of 1 (Newell's
convention) so the MSE is not dominated by the background. Heatmap cell j covers crop pixels
[4j, 4j+4): its centre is 4j + 2, which is what decoding maps back to.
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from .keypoints import FLIP_INDEX, NUM_KEYPOINTS


@dataclass
class SampleConfig:
    """How stored crops become tensors (the `data` section of the training config uses it)."""

    heatmap_size: int = 64
    """Side of the target heatmaps (the SHG outputs input/4)."""
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

    def __post_init__(self) -> None:
        if self.heatmap_size < 4:
            raise ValueError("heatmap_size must be >= 4")
        if self.sigma <= 0:
            raise ValueError("sigma must be > 0")
        if not 0 < self.scale_min <= self.scale_max:
            raise ValueError("scale_min/scale_max: need 0 < scale_min <= scale_max")
        if not 0 <= self.flip_prob <= 1:
            raise ValueError("flip_prob must be in [0, 1]")
        if self.rotate_deg < 0:
            raise ValueError("rotate_deg must be >= 0")


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

    pixels = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR_RGB)
    if pixels is None:
        pixels = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))  # raises if corrupt
    return pixels


def heatmaps(keypoints: np.ndarray, crop_size: int, cfg: SampleConfig
             ) -> tuple[np.ndarray, np.ndarray]:
    """(K, 3) crop-pixel keypoints -> (K, H, H) float32 targets and (K,) weights.

    A joint gets weight 0 when unlabelled or when its cell falls outside the grid."""
    h = cfg.heatmap_size
    cells = np.floor(keypoints[:, :2] * (h / crop_size))
    vis = keypoints[:, 2]
    inside = (cells >= 0).all(1) & (cells < h).all(1)
    weights = np.where(vis >= 2, 1.0, np.where(vis > 0, cfg.occluded_weight, 0.0)) * inside
    grid = np.arange(h, dtype=np.float64)
    gx = np.exp(-((grid[None, :] - cells[:, 0:1]) ** 2) / (2 * cfg.sigma ** 2))
    gy = np.exp(-((grid[None, :] - cells[:, 1:2]) ** 2) / (2 * cfg.sigma ** 2))
    maps = gy[:, :, None] * gx[:, None, :]
    maps[weights == 0] = 0.0
    return maps.astype(np.float32), weights.astype(np.float32)


def decode(raw: dict, mean_rgb: np.ndarray, cfg: SampleConfig,
           rng: np.random.Generator | None) -> dict:
    """A raw tar sample ({"__key__", "png", "json"}) -> arrays ready to batch.

    `rng=None` (or cfg.augment False) means no augmentation."""
    meta = json.loads(raw["json"])
    pixels = decode_png(raw["png"])
    size = pixels.shape[1]
    kps = np.asarray(meta["keypoints"], dtype=np.float64).reshape(NUM_KEYPOINTS, 3)
    aug = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    if cfg.augment and rng is not None:
        aug, flipped = augmentation_matrix(rng, cfg, size)
        pixels = warp(pixels, aug)
        labelled = kps[:, 2] > 0
        kps[labelled, :2] = kps[labelled, :2] @ aug[:, :2].T + aug[:, 2]
        if flipped:
            kps = kps[list(FLIP_INDEX)]
    target, weight = heatmaps(kps, size, cfg)
    chw = pixels.transpose(2, 0, 1).astype(np.float32)
    chw -= np.asarray(mean_rgb, dtype=np.float32)[:, None, None]
    chw *= 1.0 / 255.0
    return {
        "key": raw["__key__"],
        "image": chw,
        "heatmaps": target,
        "weights": weight,
        "keypoints": kps.astype(np.float32),
        "augment": aug.astype(np.float32),
        "meta": meta,
    }
