"""`shg predict`: every person of images, a folder, a video file or a camera -> keypoints, drawn,
and one COCO results JSON.

    shg predict --model model.safetensors photo.jpg --out pose.png          # persons detected
    shg predict --model model.safetensors FOLDER --boxes DETS.json --out OUT/
    shg predict --model model.safetensors clip.mp4 --out OUT/ [--smooth]    # shg/video.py,
    shg predict --model model.safetensors --camera 0 --max-frames 300 --out cam.mp4

Persons are, in this order of precedence, the boxes of a detection-results file (COCO format:
image_id, category_id, bbox, score; images named by their COCO id, e.g. 000000000785.jpg), one
--bbox, the whole image (--whole-image), or else a person detector's (shg/detector.py; its
boxes are written as OUT/detections.json, which `shg eval --boxes` reads). They are cut exactly
as in training and evaluation (shards/detections.py: the same crops, batched, in loader
workers), and scored and de-duplicated by the COCO protocol (evaluation/protocol.py: box score
x mean keypoint confidence, OKS-NMS).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from shards.schema import stored

from .detector import DetectorOptions
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
    inputs: str | None
    """An image file, a folder of images or a video file (None with `camera`)."""
    out: str | None = None
    """A folder (drawn images or video + results.json), or with one image or video a drawn
    file name (.png/.jpg, or .mp4/.avi/...; results.json beside it, named after it)."""
    boxes: str | None = None
    bbox: str | None = None
    whole_image: bool = False
    """Each image (frame) is one person: no detector."""
    detector: DetectorOptions = field(default_factory=DetectorOptions)
    protocol: Protocol = field(default_factory=Protocol)
    batch_size: int = 16
    num_workers: int = 0
    min_score: float = 0.05
    """Joints drawn when their confidence is at least this."""
    progress: bool = True
    camera: str | None = None
    """A camera index (0, 1, ...) or a stream URL, read like a video."""
    max_frames: int | None = None
    frames_per_batch: int = 8
    """Video frames detected and their persons predicted together."""
    track: bool = True
    """Video: a track_id per person, by IoU of boxes across frames."""
    smooth: bool = False
    """Video: One-Euro filtering of every track's keypoints."""
    smooth_min_cutoff: float = 1.0
    smooth_beta: float = 0.01

    def __post_init__(self):
        if sum(map(bool, (self.boxes, self.bbox, self.whole_image))) > 1:
            raise UserError("--boxes, --bbox and --whole-image exclude each other")
        if (self.inputs is None) == (self.camera is None):
            raise UserError("give an image, folder or video, or --camera, not both")
        if self.max_frames is not None and self.max_frames < 1:
            raise UserError(f"--max-frames must be >= 1, got {self.max_frames}")
        if self.smooth_min_cutoff <= 0 or self.smooth_beta < 0:
            raise UserError("--smooth-min-cutoff must be > 0 and --smooth-beta >= 0")

    @property
    def persons_from(self) -> str:
        """Where the person boxes come from: boxes | bbox | whole image | detector."""
        if self.boxes:
            return "boxes"
        if self.bbox:
            return "bbox"
        return "whole image" if self.whole_image else "detector"


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


def check_detector_category(categories) -> None:
    from shards.detections import PERSON

    if PERSON not in categories:
        raise UserError(f"the detector finds persons (COCO category 1); this model's keypoints "
                        f"are for category {', '.join(map(str, categories))}: pass --boxes, "
                        f"--bbox or --whole-image")


def plan(opts: PredictOptions, files: list[Path], categories=(1,), device="cpu"):
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
    if opts.persons_from == "detector":
        return detect_files(opts, images, categories, device), images, paths
    box = parse_bbox(opts.bbox) if opts.bbox else None
    boxes = [Detection(i, image_id, box or (0.0, 0.0, float(info.width), float(info.height)),
                       1.0, categories[0]) for i, (image_id, info) in enumerate(images.items())]
    return Detections("--bbox" if box else "whole image", boxes, len(boxes), {}, {}), images, \
        paths


def detect_files(opts: PredictOptions, images: dict, categories, device):
    """Detections of the person detector on the images (unreadable ones counted), written as a
    COCO detection-results file in the output folder when there is one."""
    from collections import Counter

    from PIL import Image
    from tqdm import tqdm

    from shards import atomic
    from shards.detections import parse_detections

    from .detector import PersonDetector, detection_results

    check_detector_category(categories)
    detector = PersonDetector(opts.detector, device)
    entries, unreadable, first = [], Counter(), {}
    ids = list(images)
    step = opts.detector.batch_size
    with tqdm(total=len(ids), unit="image", desc="detect",
              disable=not (opts.progress and len(ids) > 1)) as bar:
        for start in range(0, len(ids), step):
            arrays, ok = [], []
            for image_id in ids[start:start + step]:
                try:
                    with Image.open(images[image_id].file) as im:
                        arrays.append(np.asarray(im.convert("RGB")))
                    ok.append(image_id)
                except Exception as exc:  # counted, as the crops count them
                    unreadable["corrupt_image"] += 1
                    first.setdefault("corrupt_image", f"{images[image_id].file}: {exc}")
            entries += detection_results(ok, detector(arrays) if arrays else [])
            bar.update(len(ids[start:start + step]))
    source = f"detector {opts.detector.name} (score >= {opts.detector.score})"
    dets = parse_detections(entries, source,
                            {i: (v.width, v.height) for i, v in images.items()}, 0.0, (1,))
    dets.dropped.update(unreadable)
    for reason, message in first.items():
        dets.examples.setdefault(reason, message)
    if opts.out:
        folder = _out_folder(opts, len(images))
        folder.mkdir(parents=True, exist_ok=True)
        dets.source = str(folder / "detections.json")
        atomic.write_text(folder / "detections.json", json.dumps(entries))
    return dets


def _out_folder(opts: PredictOptions, count: int) -> Path:
    out = Path(opts.out)
    return out.parent if count == 1 and out.suffix.lower() in DRAWN_SUFFIXES else out


def predict_images(opts: PredictOptions) -> dict:
    """Predict; write drawn images and results.json under opts.out. Returns {"results": COCO
    results, "images": {file: [persons]}, "skipped": {reason: {...}}, ...}."""
    from collections import Counter

    from shards.detections import BoxCrops
    from shards.reader import eval_loader

    from .evaluation.core import noting_problems, predict_rows, progress_bar
    from .evaluation import protocol as post

    model, meta, schema, params, device = load_predictor(opts)
    files = image_files(opts.inputs)
    dets, images, paths = plan(opts, files, schema.categories or (1,), device)
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
    results, counts = post.apply(rows, opts.protocol, schema, with_box=True)
    skipped = Counter(dets.dropped)
    for reason, boxes, message in problems:
        skipped[reason] += boxes
        dets.examples.setdefault(reason, message)
    per_image = {}
    for r in results:
        per_image.setdefault(r["image_id"], []).append(person_entry(r, schema))
    summary = {"images": {str(paths[i]): per_image.get(i, []) for i in images},
               "boxes": dets.source, "persons_from": opts.persons_from, "poses": counts,
               "skipped": dict(skipped),
               "skip_examples": {k: v for k, v in dets.examples.items() if k in skipped}}
    if opts.out:
        summary.update(_write(opts, results, images, paths, schema.skeleton))
    return summary


def load_predictor(opts: PredictOptions):
    """(model on its device, weights metadata, keypoint schema, crop parameters, device)."""
    from shards.crop import CropParams

    from .evaluation import protocol as post
    from .weights import load_model

    model, meta, _ = load_model(opts.model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    params = CropParams(size=int(meta.get("crop_size", 256)),
                        enlarge=post.resolved_enlarge(opts.protocol, meta))
    return model, meta, stored(meta), params, device


def person_entry(result: dict, schema) -> dict:
    """One person of the summary: score, box, named keypoints (and track_id in videos)."""
    kps = np.asarray(result["keypoints"]).reshape(-1, 3)
    entry = {"score": result["score"], "bbox": result.get("bbox"),
             "keypoints": [{"name": n, "x": round(float(p[0]), 2), "y": round(float(p[1]), 2),
                            "score": round(float(p[2]), 4)} for n, p in zip(schema.names, kps)]}
    if "track_id" in result:
        entry["track_id"] = result["track_id"]
    return entry


def draw_persons(image, results: list, skeleton, min_score: float, boxes: bool) -> None:
    """Skeletons (and boxes) of COCO keypoint results on a PIL image, in place."""
    from PIL import ImageDraw

    from .evaluation.report import draw_skeleton

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


def _write(opts: PredictOptions, results: list, images: dict, paths: dict, skeleton) -> dict:
    """Drawn images and results.json; returns where they went."""
    from PIL import Image

    from shards import atomic

    out = Path(opts.out)
    single = len(images) == 1 and out.suffix.lower() in DRAWN_SUFFIXES
    folder = _out_folder(opts, len(images))
    folder.mkdir(parents=True, exist_ok=True)
    results_file = out.with_suffix(".json") if single else out / "results.json"
    atomic.write_text(results_file, json.dumps(results))
    poses: dict[int, list] = {}
    for res in results:
        poses.setdefault(res["image_id"], []).append(res)
    drawn = {}
    for image_id, path in paths.items():
        target = out if single else folder / f"{path.stem}.png"
        try:
            image = Image.open(path).convert("RGB")
        except Exception:  # counted as unreadable by the crops already
            continue
        draw_persons(image, poses.get(image_id, []), skeleton, opts.min_score,
                     boxes=opts.persons_from != "whole image")
        image.save(target)
        drawn[str(path)] = str(target)
    return {"results_file": str(results_file), "drawn": drawn}


def predict(model_file: str, image_path: str, bbox: str | None = None, out: str | None = None,
            flip: bool = True) -> dict:
    """One image, one box (or the whole image): the first person's keypoints (the library's
    short form of `predict_images`)."""
    summary = predict_images(PredictOptions(model_file, image_path, out=out, bbox=bbox,
                                            whole_image=bbox is None,
                                            protocol=Protocol(flip=flip), progress=False))
    persons = next(iter(summary["images"].values()))
    return {"image": image_path, "bbox": list(parse_bbox(bbox)) if bbox else None,
            "keypoints": persons[0]["keypoints"] if persons else [], **{
                k: summary[k] for k in ("results_file", "drawn") if k in summary}}


def print_skips(summary: dict) -> None:
    """The boxes (or images) left out, by reason: warnings, as the crops count them."""
    import logging

    for reason, n in sorted(summary["skipped"].items()):
        logging.getLogger(__name__).warning("skipped %d: %s (first: %s)", n, reason,
                                            summary["skip_examples"].get(reason))
