"""Heatmaps -> keypoint coordinates.

Heatmap cell j covers crop pixels [s*j, s*(j+1)) with s = crop / heatmap (4 for 256/64), the
convention the targets are built with; a peak at cell j therefore decodes to s*(j + 0.5).
The default refinement moves the argmax a quarter cell towards the higher neighbour
(Newell's), which halves the expected quantisation error.
"""

from __future__ import annotations

import torch


def decode_heatmaps(heatmaps: torch.Tensor, crop_size: int = 256, refine: str = "quarter",
                    sigma: float = 1.0
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K, H, W) -> coordinates (N, K, 2) in crop pixels and confidences (N, K).

    refine: "quarter" (default; Newell), "dark" (Zhang et al. 2020: Gaussian-smoothed log
    heatmap, second-order Taylor step from the argmax), or "none"."""
    if refine not in ("quarter", "dark", "none"):
        raise ValueError(f"refine must be quarter, dark or none, not {refine!r}")
    if refine == "dark":
        return _decode_dark(heatmaps, crop_size, sigma)
    hm = heatmaps.detach().float()
    n, k, h, w = hm.shape
    flat = hm.reshape(n, k, -1)
    conf, idx = flat.max(-1)
    x = (idx % w).float()
    y = torch.div(idx, w, rounding_mode="floor").float()
    if refine == "quarter":
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


def _decode_dark(heatmaps: torch.Tensor, crop_size: int, sigma: float
                 ) -> tuple[torch.Tensor, torch.Tensor]:
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

    def at(dy: int, dx: int) -> torch.Tensor:
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
