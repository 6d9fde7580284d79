"""Predicted persons drawn on their image: the schema's skeleton over the joints confident
enough, each person's box, and in videos its track id, one colour per track; `ImageSaver`
writes drawn images in the background."""

from __future__ import annotations

import numpy as np


def drawn(pixels: np.ndarray, persons: list, skeleton, min_score: float = 0.05,
          boxes: bool = True):
    """A PIL image of `pixels` ((H, W, 3) uint8 RGB) with `persons` (COCO keypoint results)
    drawn on it."""
    from PIL import Image

    image = Image.fromarray(np.asarray(pixels))
    draw_persons(image, persons, skeleton, min_score, boxes)
    return image


def draw_persons(image, results: list, skeleton, min_score: float, boxes: bool) -> None:
    """Skeletons (and boxes) of COCO keypoint results on a PIL image, in place."""
    from PIL import ImageDraw

    from ..visualize import draw_skeleton

    d = ImageDraw.Draw(image)
    w, h = image.size
    r = max(2.0, min(w, h) / 150)
    for res in results:
        if boxes and res.get("bbox"):
            x, y, bw, bh = res["bbox"]
            d.rectangle([x, y, x + bw, y + bh], outline=(255, 255, 0))
        kps = np.asarray(res["keypoints"]).reshape(-1, 3)
        draw_skeleton(d, kps[:, :2], kps[:, 2] >= min_score, track_colour(res.get("track_id")),
                      skeleton, radius=r, width=max(2, int(r)))
        if "track_id" in res and res.get("bbox"):
            d.text((res["bbox"][0] + 2, res["bbox"][1] + 2), str(res["track_id"]),
                   fill=track_colour(res["track_id"]))


def track_colour(track_id) -> tuple[int, int, int]:
    if track_id is None:
        return (255, 40, 40)
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((track_id * 0.618034) % 1.0, 0.85, 1.0)
    return int(r * 255), int(g * 255), int(b * 255)


class ImageSaver:
    """Drawn images saved as PNG by a few threads (Pillow compresses without holding the GIL),
    at most `2 x threads` waiting, so drawing a folder neither stalls the model nor piles up
    images in memory. PNG compression level 1: about five times faster than Pillow's default
    6, for files about a tenth larger."""

    def __init__(self, threads: int = 4):
        from concurrent.futures import ThreadPoolExecutor

        self.pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="png")
        self.limit, self.pending = 2 * threads, []

    def save(self, image, path) -> None:
        self.pending.append(self.pool.submit(image.save, path, compress_level=1))
        while len(self.pending) > self.limit:
            self.pending.pop(0).result()  # an error saving is raised here

    def close(self) -> None:
        try:
            for future in self.pending:
                future.result()
        finally:
            self.pool.shutdown(wait=True)

    def __enter__(self) -> ImageSaver:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
