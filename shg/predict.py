"""`shg predict`: one image (and optionally one person box) -> keypoints, drawn and printed.

    shg predict --model model.safetensors photo.jpg [--bbox x,y,w,h] --out pose.png

The person is cropped exactly as in training (the whole image when no box is given).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from shards.crop import CropParams, crop_box, cut, to_image
from shards.keypoints import NAMES
from shards.sample import model_input

from .errors import UserError


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--bbox must be x,y,w,h (four numbers), not {text!r}") from None
    if w <= 0 or h <= 0:
        raise UserError(f"--bbox width and height must be > 0, got {text!r}")
    return x, y, w, h


def predict(model_file: str, image_path: str, bbox: str | None = None, out: str | None = None,
            flip: bool = True, min_score: float = 0.05) -> dict:
    from .evaluation.decode import decode_heatmaps
    from .evaluation.core import forward_heatmaps
    from .evaluation.report import draw_skeleton
    from .weights import load_model

    model, meta, _ = load_model(model_file)
    path = Path(image_path)
    if not path.is_file():
        raise UserError(f"{path}: image not found")
    try:
        image = Image.open(path).convert("RGB")
    except Exception as exc:  # PIL raises several kinds for unreadable files
        raise UserError(f"{path}: cannot read the image ({exc})") from None
    w, h = image.size
    box = parse_bbox(bbox) if bbox else (0.0, 0.0, float(w), float(h))
    params = CropParams(size=int(meta.get("crop_size", 256)))
    cbox = crop_box(box, w, h, params)
    crop = np.asarray(cut(image, cbox, params), dtype=np.uint8)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    batch = {"image": torch.from_numpy(np.ascontiguousarray(crop.transpose(2, 0, 1)))[None],
             "mean_rgb": torch.tensor(meta.get("mean_rgb", [0.0, 0.0, 0.0]))}
    heat = forward_heatmaps(model, model_input(batch, device), flip)[1].float().cpu()
    coords, conf = decode_heatmaps(heat, params.size)
    points = to_image(coords[0].numpy(), cbox.affine(params.size))
    scores = conf[0].numpy()
    result = {"image": str(path), "bbox": list(box),
              "keypoints": [{"name": n, "x": round(float(p[0]), 2), "y": round(float(p[1]), 2),
                             "score": round(float(s), 4)}
                            for n, p, s in zip(NAMES, points, scores)]}
    if out:
        drawn = image.copy()
        d = ImageDraw.Draw(drawn)
        if bbox:
            d.rectangle([box[0], box[1], box[0] + box[2], box[1] + box[3]], outline=(255, 255, 0))
        r = max(2.0, min(w, h) / 150)
        draw_skeleton(d, points, scores >= min_score, (255, 40, 40), radius=r,
                      width=max(2, int(r)))
        drawn.save(out)
        result["drawn"] = str(out)
    return result
