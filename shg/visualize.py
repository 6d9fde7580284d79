"""Drawing, in one place: matplotlib without a display (`pyplot`), figures saved atomically
(`save_figure`), keypoints and the schema's skeleton on an image (`draw_skeleton`,
`crop_with_skeleton`) and montages of crops (`draw_tiles`). The evaluation report, the
analyses, predict's drawn images and the studies' plots use these; what they plot is theirs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from shards import atomic


def pyplot():
    """matplotlib.pyplot on the Agg backend (no display needed: jobs, servers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path, dpi: int = 100) -> None:
    """Save a figure as the image its suffix names (complete or not at all) and close it."""
    path = Path(path)
    try:
        with atomic.atomic_path(path) as tmp:
            fig.savefig(tmp, format=path.suffix[1:], dpi=dpi)
    finally:
        pyplot().close(fig)


def draw_skeleton(draw, kps: np.ndarray, visible: np.ndarray, colour, skeleton,
                  radius: float = 2.5, width: int = 2) -> None:
    """Draw keypoints and the schema's `skeleton` (joint index pairs) on a PIL ImageDraw (a
    limb only where both ends are `visible`)."""
    for a, b in skeleton:
        if visible[a] and visible[b]:
            draw.line([tuple(kps[a]), tuple(kps[b])], fill=colour, width=width)
    for k in range(len(kps)):
        if visible[k]:
            x, y = kps[k]
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)


def crop_with_skeleton(crop: np.ndarray, keypoints: np.ndarray, skeleton, visible=None,
                       colour=(255, 40, 40)) -> np.ndarray:
    """The crop with its keypoints and the schema's `skeleton` drawn."""
    from PIL import Image, ImageDraw

    im = Image.fromarray(crop)
    vis = np.ones(len(keypoints), bool) if visible is None else np.asarray(visible, bool)
    draw_skeleton(ImageDraw.Draw(im), np.asarray(keypoints), vis, colour, skeleton)
    return np.asarray(im)


def draw_tiles(tiles: list, path: Path, cols: int, labels: list[str] | None = None,
               row_labels: list[str] | None = None, tile: int = 160,
               background=(25, 25, 25), label_at: int = 3) -> None:
    """A montage of RGB arrays (or None for an empty cell), `cols` a row, each scaled to
    `tile` pixels (a tile of that size stays as it is), with its label (if any) `label_at`
    pixels from its corner and the row labels in a margin on the left."""
    from PIL import Image, ImageDraw

    rows = -(-len(tiles) // cols)
    left = 70 if row_labels else 0
    canvas = Image.new("RGB", (left + cols * tile, rows * tile), background)
    d = ImageDraw.Draw(canvas)
    for i, t in enumerate(tiles):
        x, y = left + (i % cols) * tile, (i // cols) * tile
        if t is not None:
            canvas.paste(Image.fromarray(t).resize((tile, tile)), (x, y))
        if labels and labels[i]:
            d.text((x + label_at, y + label_at), labels[i], fill=(255, 255, 0))
    if row_labels:
        for r, text in enumerate(row_labels):
            d.text((4, r * tile + tile // 2), text, fill=(255, 255, 255))
    canvas.save(path)
