"""Heatmaps -> keypoint coordinates.

Heatmap cell j covers crop pixels [s*j, s*(j+1)) with s = crop / heatmap (4 for 256/64), the
convention the targets are built with; a peak at cell j therefore decodes to s*(j + 0.5).
The default refinement moves the argmax a quarter cell towards the higher neighbour
(Newell's), which halves the expected quantisation error.
"""

from __future__ import annotations

import torch


def decode_heatmaps(heatmaps: torch.Tensor, crop_size: int = 256, quarter_offset: bool = True
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) -> coordinates (N, K, 2) in crop pixels and confidences (N, K)."""
    hm = heatmaps.detach().float()
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, -1)
    conf, idx = flat.max(-1)
    x = (idx % w).float()
    y = torch.div(idx, w, rounding_mode="floor").float()
    if quarter_offset:
        xi, yi = x.long(), y.long()
        bidx = torch.arange(n)[:, None].expand(n, k)
        kidx = torch.arange(k)[None, :].expand(n, k)

        def at(yy: torch.Tensor, xx: torch.Tensor) -> torch.Tensor:
            return hm[bidx, kidx, yy.clamp(0, h - 1), xx.clamp(0, w - 1)]

        dx = at(yi, xi + 1) - at(yi, xi - 1)
        dy = at(yi + 1, xi) - at(yi - 1, xi)
        inner_x = (xi > 0) & (xi < w - 1)
        inner_y = (yi > 0) & (yi < h - 1)
        x = x + 0.25 * torch.sign(dx) * inner_x
        y = y + 0.25 * torch.sign(dy) * inner_y
    scale = crop_size / w
    coords = torch.stack([(x + 0.5) * scale, (y + 0.5) * (crop_size / h)], -1)
    return coords, conf


def flip_back(heatmaps: torch.Tensor, flip_index) -> torch.Tensor:
    """Heatmaps predicted on a horizontally flipped image -> the original image's frame:
    mirror the x axis and swap left/right joints. (N, K, H, W)."""
    return heatmaps.flip(-1)[:, list(flip_index)]
