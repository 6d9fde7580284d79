"""Person boxes from a detector (COCO detection-results JSON) and the crops cut from them.

The published COCO keypoint numbers (mmpose, HRNet) are measured on a person detector's boxes,
e.g. `COCO_val2017_detections_AP_H_56_person.json`: a list of {"image_id", "category_id",
"bbox": [x, y, w, h], "score"}. `load_detections` reads such a file against the annotation
file's images; every box it cannot use is counted under a reason (never silently dropped) and
a file that is not in that format is a one-line error naming the entry. `BoxCrops` cuts the
kept boxes out of the original images with the shard builder's own crop code, in loader
workers, split over ranks, every box once. Prediction (shg/inference) cuts its crops with the
same code, one image at a time: `crops_of_file` (an image file, decoded once for all its
boxes) and `crops_of_image` (an image already decoded: a video frame, an image the person
detector saw).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from PIL import Image
from torch.utils.data import IterableDataset, get_worker_info

from .crop import CropBox, CropParams, ImageSkip, crop_box, cut, open_for_crops, to_crop
from .manifest import DataError, read_json_file
from .reader import collate
from .sample import SampleConfig, codec

PERSON = 1
REQUIRED = ("image_id", "category_id", "bbox", "score")


@dataclass(frozen=True)
class Detection:
    index: int
    """Position of the box in the file (its identity in the results)."""
    image_id: int
    bbox: tuple[float, float, float, float]
    score: float
    category_id: int = PERSON


@dataclass
class Detections:
    source: str
    boxes: list[Detection]
    total: int
    dropped: Counter
    examples: dict
    """One message per drop reason: the first box dropped for it."""

    def summary(self) -> dict:
        return {"source": self.source, "boxes_in_file": self.total, "kept": len(self.boxes),
                "dropped": dict(self.dropped), "examples": self.examples}


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_detections(path: str | Path, image_sizes: dict[int, tuple[int, int]],
                    score_threshold: float = 0.0, categories=(PERSON,)) -> Detections:
    """The usable boxes of a detection-results file; `image_sizes` maps the annotation file's
    image ids to (width, height), `categories` are the keypoint schema's (person: 1). A box not
    used is counted under one reason (decided from the JSON alone): other_category, bad_score,
    bad_box, below_threshold, unknown_image, outside_image. (Unreadable images are counted by
    BoxCrops: open_for_crops's reasons.)"""
    path = Path(path)
    entries, _ = read_json_file(path, "boxes file")
    return parse_detections(entries, str(path), image_sizes, score_threshold, categories)


def parse_detections(entries, source: str, image_sizes: dict[int, tuple[int, int]] | None,
                     score_threshold: float = 0.0, categories=(PERSON,)) -> Detections:
    """`load_detections` of entries already read (`source` names them in messages).
    `image_sizes=None`: the images are not known yet (prediction reads each one once, later),
    so unknown_image and outside_image are left to the caller (`outside_image`)."""
    if not isinstance(entries, list):
        raise DataError(f"{source}: expected a list of detections (COCO results format: "
                        f"image_id, category_id, bbox, score), got a {type(entries).__name__}")
    boxes, dropped, examples = [], Counter(), {}

    def drop(reason: str, i: int, why: str) -> None:
        dropped[reason] += 1
        examples.setdefault(reason, f"entry {i}: {why}")

    for i, entry in enumerate(entries):
        if not isinstance(entry, dict):
            raise DataError(f"{source}: entry {i} is a {type(entry).__name__}, not an object")
        missing = [k for k in REQUIRED if k not in entry]
        if missing:
            raise DataError(f"{source}: entry {i} lacks {', '.join(missing)} (every detection "
                            f"needs {', '.join(REQUIRED)})")
        box, score = entry["bbox"], entry["score"]
        if not (isinstance(box, list) and len(box) == 4 and all(map(_number, box))) \
                or not _number(score) or not _number(entry["image_id"]):
            raise DataError(f"{source}: entry {i}: bbox must be 4 numbers [x, y, w, h], score "
                            f"and image_id numbers; got bbox={box!r}, score={score!r}, "
                            f"image_id={entry['image_id']!r}")
        image_id = int(entry["image_id"])
        x, y, w, h = (float(v) for v in box)
        if entry["category_id"] not in categories:
            drop("other_category", i, f"category_id {entry['category_id']!r} (the keypoint "
                                      f"schema's: {', '.join(map(str, categories))})")
        elif not math.isfinite(score):
            drop("bad_score", i, f"score {score}")
        elif not all(map(math.isfinite, (x, y, w, h))) or w <= 0 or h <= 0:
            drop("bad_box", i, f"bbox {box}")
        elif score < score_threshold:
            drop("below_threshold", i, f"score {score} < {score_threshold}")
        elif image_sizes is not None and image_id not in image_sizes:
            drop("unknown_image", i, f"image_id {image_id} is not in the annotation file")
        elif image_sizes is not None and outside_image((x, y, w, h), *image_sizes[image_id]):
            width, height = image_sizes[image_id]
            drop("outside_image", i, f"bbox {box} outside the {width}x{height} image")
        else:
            boxes.append(Detection(i, image_id, (x, y, w, h), float(score),
                                   int(entry["category_id"])))
    return Detections(source, boxes, len(entries), dropped, examples)


def outside_image(bbox, width: int, height: int) -> bool:
    """A box (x, y, w, h) with no pixel in the width x height image."""
    x, y, w, h = bbox
    return x >= width or y >= height or x + w <= 0 or y + h <= 0


def box_iou(a, b) -> float:
    ax, ay, aw, ah = a
    bx, by, bw, bh = b
    iw = max(0.0, min(ax + aw, bx + bw) - max(ax, bx))
    ih = max(0.0, min(ay + ah, by + bh) - max(ay, by))
    inter = iw * ih
    union = aw * ah + bw * bh - inter
    return inter / union if union > 0 else 0.0


@dataclass
class ImageInfo:
    file: str
    width: int
    height: int
    persons: list = None
    """Annotated (bbox, (K, 3) keypoints) pairs: only for the oracle."""


class BoxCrops(IterableDataset):
    """Batches of crops of the detections, each image read once; images split over ranks and
    loader workers (round robin in image-id order), so every box is evaluated exactly once.

    A batch is what the shard readers give (uint8 crops, keypoints, meta with the crop's
    affine) plus "problems": the images this worker could not read since its last batch, as
    (reason, boxes lost, message). A worker whose last images failed yields one empty batch to
    report them. With `oracle_iou` set, each box also carries the target heatmaps of the
    annotated person it overlaps best (IoU >= oracle_iou; none: zero heatmaps)."""

    def __init__(self, detections: Detections, images: dict[int, ImageInfo], image_root,
                 params: CropParams, batch_size: int, mean, joints: int, *, rank: int = 0,
                 world: int = 1, oracle_iou: float | None = None,
                 cfg: SampleConfig | None = None):
        by_image: dict[int, list[Detection]] = {}
        for det in detections.boxes:
            by_image.setdefault(det.image_id, []).append(det)
        order = sorted(by_image)
        self.work = [(i, by_image[i]) for i in order[rank::world]]
        self.images, self.root, self.params = images, Path(image_root), params
        self.batch_size, self.mean = batch_size, np.asarray(mean, dtype=np.float32)
        self.oracle_iou, self.cfg = oracle_iou, cfg or SampleConfig(augment=False)
        self.joints = joints

    def __len__(self) -> int:
        return sum(len(dets) for _, dets in self.work)

    def _sample(self, det: Detection, info: ImageInfo, box: CropBox, pixels: np.ndarray) -> dict:
        size = self.params.size
        sample = box_sample(det, box, pixels, size, self.joints)
        kps = sample["keypoints"]
        if self.oracle_iou is not None:
            best = max(info.persons or [], key=lambda p: box_iou(det.bbox, p[0]), default=None)
            if best is not None and box_iou(det.bbox, best[0]) >= self.oracle_iou:
                kps = best[1].astype(np.float64).copy()
                labelled = kps[:, 2] > 0
                # rounded as the shard builder stores them, so GT boxes give the same oracle
                kps[labelled, :2] = to_crop(kps[labelled, :2], box, size).round(4)
            sample["heatmaps"], sample["weights"] = codec(self.cfg, size).encode(
                kps, self.cfg.occluded_weight)
            sample["keypoints"] = kps.astype(np.float32)
        return sample

    def _image_samples(self, image_id: int, dets: list[Detection]) -> Iterator[dict]:
        info = self.images[image_id]
        boxes = [crop_box(d.bbox, info.width, info.height, self.params) for d in dets]
        image, scale = open_for_crops(self.root / info.file, info.width, info.height, boxes,
                                      self.params)
        for det, box in zip(dets, boxes):
            pixels = np.asarray(cut(image, box, self.params, scale), dtype=np.uint8)
            yield self._sample(det, info, box, pixels)

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        work = self.work[info.id::info.num_workers] if info else self.work
        pending, problems = [], []
        for image_id, dets in work:
            try:
                pending.extend(self._image_samples(image_id, dets))
            except ImageSkip as skip:
                problems.append((skip.reason, len(dets), str(skip)))
            while len(pending) >= self.batch_size:
                yield self._batch(pending[:self.batch_size], problems)
                pending, problems = pending[self.batch_size:], []
        if pending or problems:
            yield self._batch(pending, problems)

    def _batch(self, samples: list[dict], problems: list) -> dict:
        if samples:
            batch = collate(samples, self.mean)
        else:
            size = self.params.size
            batch = {"image": torch.zeros((0, 3, size, size), dtype=torch.uint8),
                     "keypoints": torch.zeros((0, self.joints, 3)), "key": [], "meta": [],
                     "index": torch.zeros(0, dtype=torch.long),
                     "mean_rgb": torch.as_tensor(self.mean)}
        batch["problems"] = list(problems)
        return batch


def box_sample(det: Detection, box: CropBox, pixels: np.ndarray, size: int, joints: int) -> dict:
    """One crop of a box as the readers give samples (no keypoints: zeros)."""
    meta = {"image_id": det.image_id, "ann_id": None, "box_index": det.index,
            "category_id": det.category_id,
            "bbox": list(det.bbox), "score": det.score, "area": det.bbox[2] * det.bbox[3],
            "affine": box.affine(size).tolist()}
    return {"key": f"{det.image_id:012d}-box{det.index}", "index": det.index,
            "image": np.ascontiguousarray(pixels.transpose(2, 0, 1)), "flip": False,
            "meta": meta, "keypoints": np.zeros((joints, 3), dtype=np.float32)}


def crops_of_file(path, width: int, height: int, dets: list[Detection], params: CropParams,
                  joints: int) -> tuple[list[dict], Image.Image, float]:
    """(samples, decoded image, its scale) of one image file's boxes: the file decoded once for
    all of them, with the reader of shard building and BoxCrops (open_for_crops: JPEG draft
    decoding when every crop is smaller than its box), so the crops are theirs. Raises
    ImageSkip for a missing or undecodable file."""
    boxes = [crop_box(d.bbox, width, height, params) for d in dets]
    image, scale = open_for_crops(path, width, height, boxes, params)
    return [box_sample(det, box, np.asarray(cut(image, box, params, scale), dtype=np.uint8),
                       params.size, joints) for det, box in zip(dets, boxes)], image, scale


def crops_of_image(image: Image.Image, dets: list[Detection], params: CropParams,
                   joints: int) -> list[dict]:
    """The samples of `dets` cut from a decoded RGB image (a video frame, an image the detector
    saw) with the same crop code as image files."""
    width, height = image.size
    samples = []
    for det in dets:
        box = crop_box(det.bbox, width, height, params)
        pixels = np.asarray(cut(image, box, params), dtype=np.uint8)
        samples.append(box_sample(det, box, pixels, params.size, joints))
    return samples


def crop_batch(samples: list[dict], mean) -> dict:
    """One batch of samples (as the shard readers batch them)."""
    return collate(samples, np.asarray(mean, dtype=np.float32))
