"""`shg predict`: every person of one image or of a folder of images -> keypoints, drawn, and one
COCO results JSON.

    shg predict --model model.safetensors photo.jpg [--bbox x,y,w,h] --out pose.png
    shg predict --model model.safetensors FOLDER --boxes DETS.json --out OUT/

Persons are the boxes of a detection-results file (COCO format: image_id, category_id, bbox,
score; images named by their COCO id, e.g. 000000000785.jpg), or one --bbox, or the whole
image. They are cut exactly as in training and evaluation (shards/detections.py: the same
crops, batched, in loader workers), and scored and de-duplicated by the COCO protocol
(evaluation/protocol.py: box score x mean keypoint confidence, OKS-NMS).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shards.schema import stored

from .errors import UserError
from .evaluation.protocol import Protocol

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
DRAWN_SUFFIXES = (".png", ".jpg", ".jpeg")


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--bbox must be x,y,w,h (four numbers), not {text!r}") from None
    if not (w > 0 and h > 0):
        raise UserError(f"--bbox width and height must be > 0, got {text!r}")
    return x, y, w, h


@dataclass
class PredictOptions:
    model: str
    inputs: str
    """An image file or a folder of images."""
    out: str | None = None
    """A folder (drawn images + results.json), or with one image a drawn-image file name
    (results.json beside it, named after it)."""
    boxes: str | None = None
    bbox: str | None = None
    protocol: Protocol = field(default_factory=Protocol)
    batch_size: int = 16
    num_workers: int = 0
    min_score: float = 0.05
    """Joints drawn when their confidence is at least this."""
    progress: bool = True


def image_files(inputs: str) -> list[Path]:
    path = Path(inputs)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    if not path.is_file():
        raise UserError(f"{path}: image or folder not found")
    return [path]


def _image_id(path: Path, position: int, need_coco_id: bool) -> int:
    if path.stem.isdigit():
        return int(path.stem)
    if need_coco_id:
        raise UserError(f"{path}: --boxes needs images named by their COCO image id (like "
                        "000000000785.jpg) to find their boxes")
    return position


def plan(opts: PredictOptions, files: list[Path], categories=(1,)):
    """(Detections, {image_id: ImageInfo}, {image_id: path}) for the images and boxes asked
    (`categories`: the model's keypoint schema's, the boxes' category ids used)."""
    from PIL import Image

    from shards.detections import Detection, Detections, ImageInfo, load_detections

    images, paths = {}, {}
    for position, path in enumerate(files):
        image_id = _image_id(path, position, bool(opts.boxes))
        if image_id in paths:
            raise UserError(f"{path} and {paths[image_id]}: the same image id {image_id}")
        try:
            with Image.open(path) as im:  # header only
                width, height = im.size
        except Exception as exc:  # PIL raises many kinds for unreadable files
            raise UserError(f"{path}: cannot read the image ({exc})") from None
        images[image_id] = ImageInfo(str(path.resolve()), width, height)
        paths[image_id] = path
    if opts.boxes:
        dets = load_detections(opts.boxes, {i: (v.width, v.height) for i, v in images.items()},
                               opts.protocol.box_score_threshold, categories)
        # boxes of images not given are not this run's concern: not counted as dropped
        dets.dropped.pop("unknown_image", None)
        dets.examples.pop("unknown_image", None)
        return dets, images, paths
    box = parse_bbox(opts.bbox) if opts.bbox else None
    boxes = [Detection(i, image_id, box or (0.0, 0.0, float(info.width), float(info.height)),
                       1.0, categories[0]) for i, (image_id, info) in enumerate(images.items())]
    return Detections("--bbox" if box else "whole image", boxes, len(boxes), {}, {}), images, \
        paths


def predict_images(opts: PredictOptions) -> dict:
    """Predict; write drawn images and results.json under opts.out. Returns {"results": COCO
    results, "images": {file: [persons]}, "skipped": {reason: {...}}, ...}."""
    from collections import Counter

    from shards.crop import CropParams
    from shards.detections import BoxCrops
    from shards.reader import eval_loader

    from .evaluation.core import noting_problems, predict_rows, progress_bar
    from .evaluation import protocol as post
    from .weights import load_model

    model, meta, _ = load_model(opts.model)
    schema = stored(meta)
    files = image_files(opts.inputs)
    dets, images, paths = plan(opts, files, schema.categories or (1,))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    params = CropParams(size=int(meta.get("crop_size", 256)),
                        enlarge=post.resolved_enlarge(opts.protocol, meta))
    crops = BoxCrops(dets, images, "", params, opts.batch_size,
                     meta.get("mean_rgb", [0.0, 0.0, 0.0]), schema.num_joints)
    problems: list = []
    bar = progress_bar(None, "", None, 1, opts.progress and len(files) > 1, "predict",
                       total=len(crops))
    rows = list(predict_rows(model, noting_problems(eval_loader(crops, opts.num_workers),
                                                     problems),
                             schema=schema, sigma=float(meta.get("sigma", 1.0)),
                             flip=opts.protocol.flip, flip_shift=opts.protocol.flip_shift,
                             device=device, bar=bar))
    bar.close()
    results, counts = post.apply(rows, opts.protocol, schema)
    skipped = Counter(dets.dropped)
    for reason, boxes, message in problems:
        skipped[reason] += boxes
        dets.examples.setdefault(reason, message)
    per_image = {}
    for r in results:
        kps = np.asarray(r["keypoints"]).reshape(-1, 3)
        per_image.setdefault(r["image_id"], []).append({
            "score": r["score"],
            "keypoints": [{"name": n, "x": round(float(p[0]), 2), "y": round(float(p[1]), 2),
                           "score": round(float(p[2]), 4)}
                          for n, p in zip(schema.names, kps)]})
    summary = {"images": {str(paths[i]): per_image.get(i, []) for i in images},
               "boxes": dets.source, "poses": counts, "skipped": dict(skipped),
               "skip_examples": {k: v for k, v in dets.examples.items() if k in skipped}}
    if opts.out:
        summary.update(_write(opts, results, images, paths, rows, schema.skeleton))
    return summary


def _write(opts: PredictOptions, results: list, images: dict, paths: dict, rows: list,
           skeleton) -> dict:
    """Drawn images and results.json; returns where they went."""
    from PIL import Image, ImageDraw

    from .evaluation.report import draw_skeleton

    out = Path(opts.out)
    single = len(images) == 1 and out.suffix.lower() in DRAWN_SUFFIXES
    folder = out.parent if single else out
    folder.mkdir(parents=True, exist_ok=True)
    results_file = out.with_suffix(".json") if single else out / "results.json"
    results_file.write_text(json.dumps(results))
    boxes, poses = {}, {}
    for r in rows:
        boxes.setdefault(int(r["image_id"]), []).append(r["bbox"])
    for res in results:
        poses.setdefault(res["image_id"], []).append(np.asarray(res["keypoints"]).reshape(-1, 3))
    drawn = {}
    for image_id, path in paths.items():
        target = out if single else folder / f"{path.stem}.png"
        try:
            image = Image.open(path).convert("RGB")
        except Exception:  # counted as unreadable by the crops already
            continue
        d = ImageDraw.Draw(image)
        w, h = image.size
        r = max(2.0, min(w, h) / 150)
        for x, y, bw, bh in boxes.get(image_id, []) if opts.boxes or opts.bbox else []:
            d.rectangle([x, y, x + bw, y + bh], outline=(255, 255, 0))
        for kps in poses.get(image_id, []):
            draw_skeleton(d, kps[:, :2], kps[:, 2] >= opts.min_score, (255, 40, 40), skeleton,
                          radius=r, width=max(2, int(r)))
        image.save(target)
        drawn[str(path)] = str(target)
    return {"results_file": str(results_file), "drawn": drawn}


def predict(model_file: str, image_path: str, bbox: str | None = None, out: str | None = None,
            flip: bool = True) -> dict:
    """One image, one box (or the whole image): the first person's keypoints (the library's
    short form of `predict_images`)."""
    summary = predict_images(PredictOptions(model_file, image_path, out=out, bbox=bbox,
                                            protocol=Protocol(flip=flip), progress=False))
    persons = next(iter(summary["images"].values()))
    return {"image": image_path, "bbox": list(parse_bbox(bbox)) if bbox else None,
            "keypoints": persons[0]["keypoints"] if persons else [], **{
                k: summary[k] for k in ("results_file", "drawn") if k in summary}}


def print_skips(summary: dict) -> None:
    for reason, n in sorted(summary["skipped"].items()):
        print(f"skipped {n} boxes: {reason} (first: {summary['skip_examples'].get(reason)})",
              file=sys.stderr)
