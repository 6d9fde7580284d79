"""The heatmap codec: keypoints <-> heatmaps, encode and decode together (as mmpose's codecs).

Encoding follows the thesis: each keypoint's 1 is placed directly in the heatmap cell that
contains it, then blurred with a Gaussian of `sigma` cells, scaled to a peak of 1 (Newell's
convention, so the MSE is not dominated by the background). Heatmap cell j covers crop pixels
[s*j, s*(j+1)) with s = crop / heatmap (4 for 256/64): a peak at cell j decodes to s*(j + 0.5).
Decoding takes the argmax and refines it: a quarter cell towards the higher neighbour
(Newell's, the default; halves the expected quantisation error), DARK's Taylor step on the
Gaussian-smoothed log heatmap (Zhang et al. 2020, smoothing with the codec's own sigma), or
nothing.

One codec per model: the crop size and sigma it was trained with travel in its weights'
metadata (`HeatmapCodec.for_model`), so decoding uses the sigma the targets were made with.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

REFINES = ("quarter", "dark", "none")


@dataclass(frozen=True)
class HeatmapCodec:
    crop_size: int = 256
    heatmap_size: int = 0
    """Side of the heatmaps: 0 = a quarter of the crop side (what the SHG outputs)."""
    sigma: float = 1.0
    """Standard deviation of the target Gaussian, in heatmap cells."""

    def __post_init__(self) -> None:
        if self.sigma <= 0:
            raise ValueError("sigma must be > 0")

    @property
    def size(self) -> int:
        return self.heatmap_size or self.crop_size // 4

    @classmethod
    def for_model(cls, meta: dict | None) -> "HeatmapCodec":
        """The codec a model was trained with (its weights' metadata; the thesis's defaults for
        weights that do not say)."""
        meta = meta or {}
        return cls(crop_size=int(meta.get("crop_size", 256)), sigma=float(meta.get("sigma", 1.0)))

    # ------------------------------------------------------------------------- encode
    def encode(self, keypoints: np.ndarray, occluded_weight: float = 1.0,
               joint_weights=None) -> tuple[np.ndarray, np.ndarray]:
        """(K, 3) crop-pixel keypoints with COCO visibility -> (K, H, H) float32 targets and
        (K,) loss weights: 1 for visible, `occluded_weight` for labelled-but-occluded, 0 for
        unlabelled joints or cells outside the grid; times `joint_weights` (the schema's)."""
        h = self.size
        cells = np.floor(keypoints[:, :2] * (h / self.crop_size))
        vis = keypoints[:, 2]
        inside = (cells >= 0).all(1) & (cells < h).all(1)
        weights = np.where(vis >= 2, 1.0, np.where(vis > 0, occluded_weight, 0.0)) * inside
        grid = np.arange(h, dtype=np.float64)
        gx = np.exp(-((grid[None, :] - cells[:, 0:1]) ** 2) / (2 * self.sigma ** 2))
        gy = np.exp(-((grid[None, :] - cells[:, 1:2]) ** 2) / (2 * self.sigma ** 2))
        maps = gy[:, :, None] * gx[:, None, :]
        maps[weights == 0] = 0.0
        if joint_weights is not None:
            weights = weights * np.asarray(joint_weights, dtype=np.float64)
        return maps.astype(np.float32), weights.astype(np.float32)

    def encode_batch(self, keypoints, occluded_weight: float = 1.0, joint_weights=None):
        """`encode` for a batch of (N, K, 3) float64 keypoint tensors on any device (the same
        arithmetic in float64, so the targets equal the loader path's)."""
        import torch

        h = self.size
        cells = torch.floor(keypoints[..., :2] * (h / self.crop_size))
        vis = keypoints[..., 2]
        inside = ((cells >= 0) & (cells < h)).all(-1)
        weights = torch.where(vis >= 2, 1.0, torch.where(vis > 0, occluded_weight, 0.0))
        weights = weights * inside
        grid = torch.arange(h, dtype=torch.float64, device=keypoints.device)
        gx = torch.exp(-((grid - cells[..., 0:1]) ** 2) / (2 * self.sigma ** 2))
        gy = torch.exp(-((grid - cells[..., 1:2]) ** 2) / (2 * self.sigma ** 2))
        maps = gy[..., :, None] * gx[..., None, :]
        maps = maps * (weights != 0)[..., None, None]
        if joint_weights is not None:
            weights = weights * torch.as_tensor(joint_weights, dtype=torch.float64,
                                                device=keypoints.device)
        return maps.float(), weights.float()

    # ------------------------------------------------------------------------- decode
    def decode(self, heatmaps, refine: str = "quarter"):
        """(N, K, H, W) heatmaps -> coordinates (N, K, 2) in crop pixels and confidences
        (N, K) (torch tensors). The crop side is the codec's."""
        if refine not in REFINES:
            raise ValueError(f"refine must be quarter, dark or none, not {refine!r}")
        if refine == "dark":
            return _decode_dark(heatmaps, self.crop_size, self.sigma)
        return _decode_argmax(heatmaps, self.crop_size, refine == "quarter")


def flip_back(heatmaps, flip_index):
    """Heatmaps predicted on a horizontally flipped image -> the original image's frame: mirror
    the x axis and swap left/right joints (the schema's flip_index). (N, K, H, W)."""
    return heatmaps.flip(-1)[:, list(flip_index)]


def _decode_argmax(heatmaps, crop_size: int, quarter: bool):
    import torch

    hm = heatmaps.detach().float()
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, -1)
    conf, idx = flat.max(-1)
    x = (idx % w).float()
    y = torch.div(idx, w, rounding_mode="floor").float()
    if quarter:
        xi, yi = x.long(), y.long()
        bidx = torch.arange(n)[:, None].expand(n, k)
        kidx = torch.arange(k)[None, :].expand(n, k)

        def at(yy, xx):
            return hm[bidx, kidx, yy.clamp(0, h - 1), xx.clamp(0, w - 1)]

        dx = at(yi, xi + 1) - at(yi, xi - 1)
        dy = at(yi + 1, xi) - at(yi - 1, xi)
        inner_x = (xi > 0) & (xi < w - 1)
        inner_y = (yi > 0) & (yi < h - 1)
        x = x + 0.25 * torch.sign(dx) * inner_x
        y = y + 0.25 * torch.sign(dy) * inner_y
    coords = torch.stack([(x + 0.5) * (crop_size / w), (y + 0.5) * (crop_size / h)], -1)
    return coords, conf


def _decode_dark(heatmaps, crop_size: int, sigma: float):
    import torch
    import torch.nn.functional as F

    hm = heatmaps.detach().float()
    n, k, h, w = hm.shape
    conf = hm.reshape(n, k, -1).max(-1).values
    # modulate: blur with the target's Gaussian, keep the original peak height
    radius = max(1, int(round(3 * sigma)))
    t = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-t ** 2 / (2 * sigma ** 2))
    g = g / g.sum()
    flat = hm.reshape(n * k, 1, h, w)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), g.view(1, 1, -1, 1))
    blurred = flat.reshape(n, k, h, w)
    peak = blurred.reshape(n, k, -1).max(-1).values.clamp_min(1e-10)
    blurred = blurred * (conf.clamp_min(1e-10) / peak)[..., None, None]
    logh = torch.log(blurred.clamp_min(1e-10))
    idx = blurred.reshape(n, k, -1).argmax(-1)
    x, y = (idx % w), torch.div(idx, w, rounding_mode="floor")
    coords = torch.stack([x, y], -1).float()
    pad = F.pad(logh, (1, 1, 1, 1), mode="replicate")
    bi = torch.arange(n)[:, None].expand(n, k)
    ki = torch.arange(k)[None, :].expand(n, k)

    def at(dy: int, dx: int):
        return pad[bi, ki, y + 1 + dy, x + 1 + dx]

    dx = 0.5 * (at(0, 1) - at(0, -1))
    dy = 0.5 * (at(1, 0) - at(-1, 0))
    dxx = at(0, 1) - 2 * at(0, 0) + at(0, -1)
    dyy = at(1, 0) - 2 * at(0, 0) + at(-1, 0)
    dxy = 0.25 * (at(1, 1) - at(1, -1) - at(-1, 1) + at(-1, -1))
    det = dxx * dyy - dxy ** 2
    ok = (det.abs() > 1e-6) & (dxx < 0) & (dyy < 0)  # a proper maximum
    ox = torch.where(ok, -(dyy * dx - dxy * dy) / torch.where(ok, det, 1.0), 0.0)
    oy = torch.where(ok, -(dxx * dy - dxy * dx) / torch.where(ok, det, 1.0), 0.0)
    coords[..., 0] += ox.clamp(-1, 1)
    coords[..., 1] += oy.clamp(-1, 1)
    scale = torch.tensor([crop_size / w, crop_size / h])
    return (coords + 0.5) * scale, conf
