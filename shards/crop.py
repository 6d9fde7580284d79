"""The thesis crop: COCO bbox -> square, +10 %, shifted into the image -> 256x256.

Coordinates are continuous pixel coordinates (COCO's convention: the top-left corner of the
image is (0, 0), pixel (i, j) covers [i, i+1) x [j, j+1)). A crop is the square
[x0, x0 + side) x [y0, y0 + side) of the image mapped linearly onto [0, size) x [0, size), so
the crop -> image map is the affine  x_img = x0 + u * side / size  (and likewise for y).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image


@dataclass(frozen=True)
class CropParams:
    """How persons are cut out of COCO images (stored in every manifest)."""

    size: int = 256
    """Side of the square crop in pixels."""
    enlarge: float = 1.10
    """The square around the bbox is enlarged by this factor (the thesis: 10 %)."""
    pad_value: int = 0
    """Grey level used only when the square is larger than the image."""


@dataclass(frozen=True)
class CropBox:
    x0: float
    y0: float
    side: float

    def affine(self, size: int) -> np.ndarray:
        """2x3 matrix mapping crop pixels (u, v, 1) to image pixels (x, y)."""
        s = self.side / size
        return np.array([[s, 0.0, self.x0], [0.0, s, self.y0]], dtype=np.float64)


def _place(start: float, side: float, limit: float) -> float:
    """Shift a 1-D window [start, start+side) so it stays inside [0, limit).

    When the window is larger than the image it must overhang: we keep it covering the whole
    image and as close to its person-centred position as possible (padding on both sides).
    """
    if side <= limit:
        return min(max(start, 0.0), limit - side)
    return min(max(start, limit - side), 0.0)


def crop_box(bbox: tuple[float, float, float, float], width: int, height: int,
             params: CropParams = CropParams()) -> CropBox:
    """The square crop of a COCO bbox (x, y, w, h) in an image of the given size."""
    x, y, w, h = (float(v) for v in bbox)
    cx, cy = x + w / 2.0, y + h / 2.0
    side = max(w, h) * params.enlarge
    x0 = _place(cx - side / 2.0, side, float(width))
    y0 = _place(cy - side / 2.0, side, float(height))
    return CropBox(x0, y0, side)


def cut(image: Image.Image, box: CropBox, params: CropParams = CropParams(),
        scale: float = 1.0) -> Image.Image:
    """Cut and resize the crop. `scale` is the ratio of `image`'s size to the annotated size
    (JPEG draft decoding may hand us a 1/2, 1/4 or 1/8 image)."""
    x0, y0, side = box.x0 * scale, box.y0 * scale, box.side * scale
    x1, y1 = x0 + side, y0 + side
    w, h = image.size
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        # Only when the square is larger than the image: paste onto a padded canvas.
        ox, oy = int(np.ceil(max(0.0, -x0))), int(np.ceil(max(0.0, -y0)))
        cw = int(np.ceil(max(x1, w))) + ox
        ch = int(np.ceil(max(y1, h))) + oy
        canvas = Image.new("RGB", (cw, ch), (params.pad_value,) * 3)
        canvas.paste(image, (ox, oy))
        image, x0, y0, x1, y1 = canvas, x0 + ox, y0 + oy, x1 + ox, y1 + oy
    return image.resize((params.size, params.size), Image.Resampling.BILINEAR,
                        box=(x0, y0, x1, y1))


class ImageSkip(Exception):
    """An image that cannot give crops: `reason` is one of missing_image, size_mismatch,
    corrupt_image (counted by the callers, never silently lost)."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


def open_for_crops(path, width: int, height: int, boxes: list[CropBox],
                   params: CropParams = CropParams()) -> tuple[Image.Image, float]:
    """Decode an image for cutting `boxes` out of it: (RGB image, its scale to the annotated
    size). Shard building and evaluation on detected boxes both read images through here, so
    their crops are the same pixels."""
    from pathlib import Path

    path = Path(path)
    if not path.is_file():
        raise ImageSkip("missing_image", f"{path}: file not found")
    try:
        image = Image.open(path)
        if image.size != (width, height):
            raise ImageSkip("size_mismatch", f"{path}: is {image.size[0]}x{image.size[1]}, "
                            f"annotations say {width}x{height}")
        # JPEG draft decoding (DCT scaling) is much faster for big images; ask only for as many
        # pixels as the smallest crop needs so no crop is ever upsampled because of it.
        need = params.size / min(b.side for b in boxes)
        if image.format == "JPEG" and need < 1:
            image.draft(None, (int(np.ceil(width * need)), int(np.ceil(height * need))))
        image = image.convert("RGB")  # also forces the decode (truncation shows up here)
    except ImageSkip:
        raise
    except Exception as exc:  # PIL raises many types for corrupt files
        raise ImageSkip("corrupt_image", f"{path}: cannot decode ({exc})") from None
    return image, image.size[0] / width


def to_crop(points_xy: np.ndarray, box: CropBox, size: int) -> np.ndarray:
    """Image pixels (..., 2) -> crop pixels."""
    return (np.asarray(points_xy, dtype=np.float64) - (box.x0, box.y0)) * (size / box.side)


def to_image(points_uv: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Crop pixels (..., 2) -> image pixels through a stored 2x3 affine."""
    a = np.asarray(affine, dtype=np.float64)
    return np.asarray(points_uv, dtype=np.float64) @ a[:, :2].T + a[:, 2]
