"""Shared pieces of the analyses: streaming inference, nearest samples and montages."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np

from ..evaluation.core import progress_bar, split_batches


def batches(shards: str, split: str, batch_size: int, meta: dict | None,
            limit: int | None = None, desc: str = "samples") -> Iterator[dict]:
    """Un-augmented batches of a split in manifest order (one process), with a progress bar."""
    with progress_bar(shards, split, limit, 1, True, desc) as bar:
        for batch in split_batches(shards, split, batch_size, rank=0, world=1,
                                   mean=(meta or {}).get("mean_rgb"), limit=limit):
            yield batch
            bar.update(len(batch["key"]))


def nearest(points: np.ndarray, data: np.ndarray, chunk: int = 4096) -> np.ndarray:
    """Index of the row of `data` (N, D; may be a memmap) nearest to each of `points` (M, D),
    scanning `data` in chunks so memory stays bounded."""
    points = np.asarray(points, dtype=np.float64)
    best = np.full(len(points), np.inf)
    index = np.zeros(len(points), dtype=np.int64)
    pp = (points ** 2).sum(1)
    for start in range(0, len(data), chunk):
        block = np.asarray(data[start:start + chunk], dtype=np.float64)
        d = pp[:, None] - 2 * points @ block.T + (block ** 2).sum(1)[None]
        j = d.argmin(1)
        better = d[np.arange(len(points)), j] < best
        best[better] = d[np.arange(len(points)), j][better]
        index[better] = start + j[better]
    return index


def draw_tiles(tiles: list, path: Path, cols: int, labels: list[str] | None = None,
               row_labels: list[str] | None = None, tile: int = 160) -> None:
    """A montage of RGB arrays (or None for an empty cell)."""
    from PIL import Image, ImageDraw

    rows = -(-len(tiles) // cols)
    left = 70 if row_labels else 0
    canvas = Image.new("RGB", (left + cols * tile, rows * tile), (25, 25, 25))
    d = ImageDraw.Draw(canvas)
    for i, t in enumerate(tiles):
        x, y = left + (i % cols) * tile, (i // cols) * tile
        if t is not None:
            canvas.paste(Image.fromarray(t).resize((tile, tile)), (x, y))
        if labels and labels[i]:
            d.text((x + 3, y + 3), labels[i], fill=(255, 255, 0))
    if row_labels:
        for r, text in enumerate(row_labels):
            d.text((4, r * tile + tile // 2), text, fill=(255, 255, 255))
    canvas.save(path)


def crop_with_skeleton(crop: np.ndarray, keypoints: np.ndarray, skeleton, visible=None,
                       colour=(255, 40, 40)) -> np.ndarray:
    """The crop with its keypoints and the schema's `skeleton` drawn."""
    from PIL import Image, ImageDraw

    from ..evaluation.report import draw_skeleton

    im = Image.fromarray(crop)
    vis = np.ones(len(keypoints), bool) if visible is None else np.asarray(visible, bool)
    draw_skeleton(ImageDraw.Draw(im), np.asarray(keypoints), vis, colour, skeleton)
    return np.asarray(im)

