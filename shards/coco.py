"""Reading COCO person-keypoint annotations and deciding which persons become samples.

Everything decided here needs only the json (no pixels), so every task of a Slurm array
computes the same plan and can pick its own disjoint part of it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .keypoints import NUM_KEYPOINTS
from .manifest import DataError

# Reasons a person annotation is not eligible by choice (not an error in the data).
FILTER_REASONS = ("iscrowd", "too_few_keypoints")
# Reasons that mean the input is bad; `--strict` turns any of these into a failure.
SKIP_REASONS = ("malformed_annotation", "bad_bbox", "bbox_outside_image", "missing_image",
                "corrupt_image", "size_mismatch", "unknown_image")


@dataclass
class Person:
    ann_id: int
    bbox: tuple[float, float, float, float]
    keypoints: np.ndarray  # (K, 3) image pixels + COCO visibility, unlabelled rows are 0
    area: float


@dataclass
class ImageJob:
    image_id: int
    file_name: str
    width: int
    height: int
    persons: list[Person] = field(default_factory=list)
    image_bboxes: list | None = None
    """Every planned person's bbox in this image, when `persons` is only the part of them one
    shard holds: the image is then decoded as for all of them (the same pixels, whichever
    shard a person lands in; see crop.open_for_crops)."""

    def all_bboxes(self) -> list:
        return self.image_bboxes or [p.bbox for p in self.persons]


@dataclass
class Plan:
    split: str
    images: list[ImageJob]
    annotation_file: str
    annotation_sha256: str
    filtered: Counter
    skipped: Counter
    dropped_keypoints: Counter
    first_offender: str | None

    @property
    def num_persons(self) -> int:
        return sum(len(im.persons) for im in self.images)


def annotation_path(root: str | Path, split: str) -> Path:
    return Path(root) / "annotations" / f"person_keypoints_{split}.json"


def load_coco(path: str | Path):
    """Load a COCO json with pycocotools, turning unreadable files into a clear DataError."""
    from pycocotools.coco import COCO

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: annotation file not found")
    raw = path.read_bytes()
    try:
        dataset = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
    for key in ("images", "annotations"):
        if not isinstance(dataset, dict) or not isinstance(dataset.get(key), list):
            raise DataError(f"{path}: not a COCO annotation file (no '{key}' list)")
    dataset.setdefault("categories", [{"id": 1, "name": "person"}])
    # pycocotools' index needs these fields; set such annotations aside (counted as malformed)
    # rather than losing the whole file to one bad entry.
    good, bad = [], []
    for ann in dataset["annotations"]:
        ok = isinstance(ann, dict) and all(k in ann for k in ("id", "image_id", "category_id"))
        (good if ok else bad).append(ann)
    dataset["annotations"] = good
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress chatter
        try:
            coco.createIndex()
        except (KeyError, TypeError) as exc:
            raise DataError(f"{path}: malformed COCO structure (missing field {exc})") from None
    coco.malformed = bad
    return coco, hashlib.sha256(raw).hexdigest()


def _parse_person(ann: dict) -> tuple[tuple[float, ...], np.ndarray]:
    bbox = tuple(float(v) for v in ann["bbox"])
    kps = np.asarray(ann["keypoints"], dtype=np.float64)
    if len(bbox) != 4 or kps.shape != (NUM_KEYPOINTS * 3,):
        raise ValueError("bbox must have 4 numbers and keypoints 51")
    return bbox, kps.reshape(NUM_KEYPOINTS, 3)


def make_plan(root: str | Path, split: str, min_keypoints: int = 1, seed: int = 0) -> Plan:
    """Eligible persons grouped by image, images in a seeded random order.

    The order is shuffled so each shard mixes the whole split (good for streaming training);
    it is still a pure function of the json and the seed.
    """
    path = annotation_path(root, split)
    coco, sha = load_coco(path)
    filtered, skipped, dropped = Counter(), Counter(), Counter()
    first: list[str] = []

    def skip(reason: str, what: str) -> None:
        skipped[reason] += 1
        if not first:
            first.append(f"{path}: {what}: {reason}")

    for ann in coco.malformed:
        ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
        skip("malformed_annotation", f"annotation {ann_id} (lacks id/image_id/category_id)")
    persons = {c["id"] for c in coco.dataset["categories"]
               if isinstance(c, dict) and c.get("name") == "person"}
    jobs: dict[int, ImageJob] = {}
    for ann in coco.dataset["annotations"]:
        if persons and ann["category_id"] not in persons:
            continue
        ann_id = ann.get("id", "?") if isinstance(ann, dict) else "?"
        try:
            if ann.get("iscrowd", 0):
                filtered["iscrowd"] += 1
                continue
            image = coco.imgs.get(ann["image_id"])
            if image is None:
                skip("unknown_image", f"annotation {ann_id}")
                continue
            width, height = int(image["width"]), int(image["height"])
            bbox, kps = _parse_person(ann)
        except (KeyError, TypeError, ValueError, AttributeError):
            skip("malformed_annotation", f"annotation {ann_id}")
            continue
        x, y, w, h = bbox
        if not all(math.isfinite(v) for v in bbox) or w <= 0 or h <= 0:
            skip("bad_bbox", f"annotation {ann_id} bbox {list(bbox)}")
            continue
        if x >= width or y >= height or x + w <= 0 or y + h <= 0:
            skip("bbox_outside_image", f"annotation {ann_id} bbox {list(bbox)}")
            continue
        labelled = kps[:, 2] > 0
        outside = labelled & ((kps[:, 0] < 0) | (kps[:, 0] >= width) |
                              (kps[:, 1] < 0) | (kps[:, 1] >= height))
        if outside.any():
            dropped["outside_image"] += int(outside.sum())
            kps[outside] = 0.0
        if int((kps[:, 2] > 0).sum()) < min_keypoints:
            filtered["too_few_keypoints"] += 1
            continue
        job = jobs.get(image["id"])
        if job is None:
            job = jobs[image["id"]] = ImageJob(int(image["id"]), str(image["file_name"]),
                                               width, height)
        job.persons.append(Person(int(ann["id"]), bbox, kps, float(ann.get("area", w * h))))

    images = [jobs[k] for k in sorted(jobs)]
    for job in images:
        job.persons.sort(key=lambda p: p.ann_id)
    random.Random(seed).shuffle(images)
    return Plan(split, images, str(path.absolute()), sha, filtered, skipped, dropped,
                first[0] if first else None)

