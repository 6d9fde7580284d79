"""MPII annotations as mmpose and princeton-vl distribute them: a JSON list of persons

    {"image": "015601864.jpg", "center": [x, y], "scale": s, "joints": [[x, y] x 16],
     "joints_vis": [0|1 x 16], "head_box": [x1, y1, x2, y2]  (optional)}

`scale` x 200 px is the person's height. Each person becomes a sample of the MPII schema: its
box is the square of side 200 x scale centred on `center` (the thesis crop then makes it 10 %
larger); a joint with joints_vis 0 is unlabelled. The file has no image sizes: they are read
from the image headers (a missing or unreadable image is a counted skip, as for COCO). With
head boxes, `shg eval` reports PCKh (MPII's head size: 0.6 x the head box's diagonal).
"""

from __future__ import annotations

import hashlib
import random
import re
from collections import Counter
from pathlib import Path

import numpy as np

from .coco import ImageJob, Person, Plan, drop_outside_image
from .manifest import DataError, read_json_file
from .schema import MPII, apply_schema_file

PERSON_HEIGHT_PX = 200.0
"""MPII's `scale` unit."""


def _image_id(name: str, position: dict) -> int:
    digits = re.sub(r"\D", "", Path(name).stem)
    if digits:
        return int(digits)
    return position.setdefault(name, len(position) + 1)


def make_mpii_plan(path: str | Path, images: str | Path, split: str, min_keypoints: int = 1,
                   seed: int = 0, schema_file: str | None = None) -> Plan:
    from PIL import Image

    path = Path(path)
    people, raw = read_json_file(path)
    if not isinstance(people, list):
        raise DataError(f"{path}: an MPII file is a list of persons (image, center, scale, "
                        "joints, joints_vis)")
    schema = apply_schema_file(MPII, schema_file) if schema_file else MPII
    k = schema.num_joints
    filtered, skipped, dropped = Counter(), Counter(), Counter()
    first: list[str] = []
    sizes: dict[str, tuple[int, int] | None] = {}
    jobs: dict[int, ImageJob] = {}
    ids: dict = {}

    def skip(reason: str, what: str) -> None:
        skipped[reason] += 1
        if not first:
            first.append(f"{path}: {what}: {reason}")

    for n, person in enumerate(people):
        try:
            name = str(person["image"])
            cx, cy = (float(v) for v in person["center"])
            side = float(person["scale"]) * PERSON_HEIGHT_PX
            joints = np.asarray(person["joints"], dtype=np.float64)
            vis = np.asarray(person["joints_vis"], dtype=np.float64)
            head = person.get("head_box")
            if joints.shape != (k, 2) or vis.shape != (k,):
                raise DataError(f"{path}: person {n} has {len(joints)} joints and "
                                f"{len(vis)} joints_vis; the MPII schema has {k}")
            if head is not None and not (isinstance(head, list) and len(head) == 4):
                raise ValueError("head_box must be [x1, y1, x2, y2]")
        except DataError:
            raise
        except (KeyError, TypeError, ValueError):
            skip("malformed_annotation", f"person {n}")
            continue
        if name not in sizes:
            try:
                with Image.open(Path(images) / name) as im:
                    sizes[name] = im.size
            except FileNotFoundError:
                sizes[name] = None
                skip("missing_image", f"person {n} ({name})")
                continue
            except Exception:  # PIL raises many kinds for unreadable files
                sizes[name] = None
                skip("corrupt_image", f"person {n} ({name})")
                continue
        if sizes[name] is None:
            skip("missing_image", f"person {n} ({name})")
            continue
        width, height = sizes[name]
        if not side > 0:
            skip("bad_bbox", f"person {n} scale {person['scale']}")
            continue
        bbox = (cx - side / 2, cy - side / 2, side, side)
        if bbox[0] >= width or bbox[1] >= height or bbox[0] + side <= 0 or bbox[1] + side <= 0:
            skip("bbox_outside_image", f"person {n} box {list(bbox)}")
            continue
        kps = np.zeros((k, 3))
        labelled = vis > 0
        kps[labelled, :2] = joints[labelled]
        kps[labelled, 2] = 2.0
        if drop_outside_image(kps, width, height, dropped) < min_keypoints:
            filtered["too_few_keypoints"] += 1
            continue
        image_id = _image_id(name, ids)
        job = jobs.get(image_id)
        if job is None:
            job = jobs[image_id] = ImageJob(image_id, name, width, height)
        extra = {"head_box": [float(v) for v in head]} if head is not None else {}
        job.persons.append(Person(n, bbox, kps, side * side, 1, extra))
    images_ = [jobs[i] for i in sorted(jobs)]
    random.Random(seed).shuffle(images_)
    return Plan(split, images_, str(path.absolute()), hashlib.sha256(raw).hexdigest(), filtered,
                skipped, dropped, first[0] if first else None, schema)
