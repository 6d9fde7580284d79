"""`shg synth`: a COCO-format dataset of procedurally drawn people (the project's bundled data).

Each person (1-3 per image, side by side) is a 17-joint COCO skeleton with sampled proportions and joint angles, drawn facing
the camera with thick limbs, a torso and a head with eyes, nose and ears, on a noisy textured
background with clutter. Left limbs are drawn in a light tone and right limbs in a dark tone of
the person's colour, so left and right are learnable from pixels (as they are from real bodies).
Visibility is COCO's: a joint hidden by an occluder or by a person drawn later is labelled v=1;
a joint outside the frame is v=0 with (0, 0). bbox and area come from the person's silhouette.
"""

from __future__ import annotations

import colorsys
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from shards.schema import COCO_PERSON

from .errors import UserError

NAMES, SKELETON = COCO_PERSON.names, COCO_PERSON.skeleton
NUM_KEYPOINTS = COCO_PERSON.num_joints

# (name, parent joint, length in body heights, default angle from "down" in degrees, range)
_LIMBS_LEFT = {"elbow": (0.16, (-20, 160)), "wrist": (0.14, (-10, 140)),
               "knee": (0.23, (-15, 45)), "ankle": (0.23, (-5, 110))}


@dataclass
class SynthOptions:
    out: str
    train: int = 600
    val: int = 120
    seed: int = 0
    min_size: int = 256
    max_size: int = 512
    max_people: int = 3

    def __post_init__(self) -> None:
        if self.train < 0 or self.val < 0:
            raise UserError("--train and --val must be >= 0")
        if not 64 <= self.min_size <= self.max_size:
            raise UserError("need 64 <= min_size <= max_size")
        if self.max_people < 1:
            raise UserError("max_people must be >= 1")


def _rot(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s], [s, c]])


def sample_skeleton(rng: np.random.Generator, height: float, pelvis: np.ndarray) -> np.ndarray:
    """(17, 2) joint positions in image pixels for a person facing the camera.

    Body frame: y points down, the person's left is +x (they face us)."""
    j = np.zeros((NUM_KEYPOINTS, 2))
    scale = height * rng.uniform(0.92, 1.08, size=8)
    tilt = rng.normal(0.0, math.radians(10))
    if rng.random() < 0.15:
        tilt += rng.uniform(-1, 1) * math.radians(35)
    body = _rot(tilt)
    up = body @ np.array([0.0, -1.0])
    side = body @ np.array([1.0, 0.0])
    neck = pelvis + up * 0.30 * scale[0]
    head = neck + up * 0.11 * scale[1]
    yaw = rng.uniform(-0.015, 0.015) * height  # small sideways turn of the face
    j[0] = head + side * yaw + body @ np.array([0.0, 0.018]) * height       # nose
    for k, sgn in ((1, 1), (2, -1)):                                          # eyes
        j[k] = head + side * (yaw + sgn * 0.028 * height) + up * 0.012 * height
    for k, sgn in ((3, 1), (4, -1)):                                          # ears
        j[k] = head + side * sgn * 0.062 * height
    for k, sgn in ((5, 1), (6, -1)):                                          # shoulders
        j[k] = neck + side * sgn * 0.105 * scale[2]
    for k, sgn in ((11, 1), (12, -1)):                                        # hips
        j[k] = pelvis + side * sgn * 0.068 * scale[3]
    for (root, mid, end, upper, lower), sgn in (
            ((5, 7, 9, "elbow", "wrist"), 1), ((6, 8, 10, "elbow", "wrist"), -1),
            ((11, 13, 15, "knee", "ankle"), 1), ((12, 14, 16, "knee", "ankle"), -1)):
        len1, rng1 = _LIMBS_LEFT[upper]
        len2, rng2 = _LIMBS_LEFT[lower]
        a1 = math.radians(rng.uniform(*rng1)) * sgn
        a2 = a1 + math.radians(rng.uniform(*rng2)) * sgn * (1 if upper == "elbow" else -1)
        down = body @ np.array([0.0, 1.0])
        j[mid] = j[root] + (_rot(-a1) @ down) * len1 * height * rng.uniform(0.9, 1.1)
        j[end] = j[mid] + (_rot(-a2) @ down) * len2 * height * rng.uniform(0.9, 1.1)
    return j


def _background(rng: np.random.Generator, w: int, h: int) -> Image.Image:
    coarse = rng.integers(0, 256, size=(rng.integers(2, 7), rng.integers(2, 7), 3), dtype=np.uint8)
    img = Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC)
    draw = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(3, 12))):  # clutter
        x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
        x1, y1 = x0 + rng.uniform(10, w / 3), y0 + rng.uniform(10, h / 3)
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        kind = rng.integers(3)
        if kind == 0:
            draw.rectangle([x0, y0, x1, y1], fill=colour)
        elif kind == 1:
            draw.ellipse([x0, y0, x1, y1], fill=colour)
        else:
            draw.line([x0, y0, x1, y1], fill=colour, width=int(rng.integers(2, 8)))
    arr = np.asarray(img, dtype=np.float32) + rng.normal(0, 12, size=(h, w, 3))
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _tone(hue: float, light: float, sat: float) -> tuple[int, int, int]:
    return tuple(int(255 * c) for c in colorsys.hls_to_rgb(hue, light, sat))


def _draw_person(draws: list[ImageDraw.ImageDraw], fills: list, joints: np.ndarray,
                 height: float, rng: np.random.Generator) -> None:
    """Draw on every (draw, fill-set) pair: the photo and the masks share the geometry."""
    limb_w = max(3, int(0.055 * height))
    leg_w = max(3, int(0.07 * height))
    head_r = 0.07 * height
    head = (joints[3] + joints[4]) / 2
    torso = [tuple(joints[k]) for k in (5, 6, 12, 11)]
    segments = [((5, 7), "L", limb_w), ((7, 9), "L", limb_w), ((6, 8), "R", limb_w),
                ((8, 10), "R", limb_w), ((11, 13), "L", leg_w), ((13, 15), "L", leg_w),
                ((12, 14), "R", leg_w), ((14, 16), "R", leg_w)]
    for draw, fill in zip(draws, fills):
        # Back to front: far-side limbs first is meaningless in 2-D; legs, torso, arms, head.
        for (a, b), side, width in segments[4:]:
            draw.line([tuple(joints[a]), tuple(joints[b])], fill=fill[side], width=width,
                      joint="curve")
            for k in (a, b):
                r = width / 2
                draw.ellipse([joints[k][0] - r, joints[k][1] - r, joints[k][0] + r,
                              joints[k][1] + r], fill=fill[side])
        draw.polygon(torso, fill=fill["torso"])
        neck = (joints[5] + joints[6]) / 2
        draw.line([tuple(neck), tuple(head)], fill=fill["skin"], width=limb_w)
        for (a, b), side, width in segments[:4]:
            draw.line([tuple(joints[a]), tuple(joints[b])], fill=fill[side], width=width)
            for k in (a, b):
                r = width / 2
                draw.ellipse([joints[k][0] - r, joints[k][1] - r, joints[k][0] + r,
                              joints[k][1] + r], fill=fill[side])
        draw.ellipse([head[0] - head_r, head[1] - head_r * 1.15, head[0] + head_r,
                      head[1] + head_r * 1.15], fill=fill["skin"])
        ear_r = max(1.5, 0.022 * height)
        for k in (3, 4):
            draw.ellipse([joints[k][0] - ear_r, joints[k][1] - ear_r * 1.4,
                          joints[k][0] + ear_r, joints[k][1] + ear_r * 1.4], fill=fill["ear"])
        eye_r = max(1.2, 0.012 * height)
        for k in (1, 2):
            draw.ellipse([joints[k][0] - eye_r, joints[k][1] - eye_r, joints[k][0] + eye_r,
                          joints[k][1] + eye_r], fill=fill["eye"])
        nose_r = max(1.2, 0.013 * height)
        draw.ellipse([joints[0][0] - nose_r, joints[0][1] - nose_r, joints[0][0] + nose_r,
                      joints[0][1] + nose_r], fill=fill["nose"])


def render_image(rng: np.random.Generator, width: int, height: int, max_people: int
                 ) -> tuple[Image.Image, list[dict]]:
    """One synthetic photo and its persons ({keypoints (17,3), bbox, area})."""
    image = _background(rng, width, height)
    ids = Image.new("L", (width, height), 0)   # which person (1..n) or occluder (255) is on top
    draw_img, draw_ids = ImageDraw.Draw(image), ImageDraw.Draw(ids)
    persons = []
    n = int(rng.integers(1, max_people + 1))
    # Each person gets a vertical band of the image: people may touch and overlap a little
    # (occlusion) but a crop centred on one person is rarely dominated by another, which would
    # make the target ambiguous rather than hard.
    for pid in range(1, n + 1):
        h = rng.uniform(0.35, 0.95) * height
        h = min(h, 1.6 * width / n)
        band = rng.uniform(0.3, 0.7) if n == 1 else rng.uniform(0.25, 0.75)
        pelvis = np.array([(pid - 1 + band) / n * width, rng.uniform(0.35, 0.75) * height])
        if rng.random() < 0.15:  # partly out of frame
            pelvis[rng.integers(2)] += rng.choice([-1, 1]) * 0.3 * h
        joints = sample_skeleton(rng, h, pelvis)
        hue, sat = rng.random(), rng.uniform(0.5, 0.9)
        skin = _tone(rng.uniform(0.02, 0.1), rng.uniform(0.3, 0.8), rng.uniform(0.3, 0.6))
        colours = {"L": _tone(hue, 0.78, sat), "R": _tone(hue, 0.28, sat),
                   "torso": _tone(rng.random(), rng.uniform(0.3, 0.7), rng.uniform(0.2, 0.8)),
                   "skin": skin, "ear": tuple(int(c * 0.8) for c in skin),
                   "eye": (20, 20, 30), "nose": (200, 40, 40)}
        own = Image.new("1", (width, height), 0)
        _draw_person([draw_img, draw_ids, ImageDraw.Draw(own)],
                     [colours, dict.fromkeys(colours, pid), dict.fromkeys(colours, 1)], joints, h,
                     rng)
        persons.append({"pid": pid, "joints": joints, "silhouette": own})
        if rng.random() < 0.3:  # an occluder over part of this person
            centre = joints[int(rng.integers(NUM_KEYPOINTS))]
            half = rng.uniform(0.08, 0.2) * h
            box = [centre[0] - half, centre[1] - half * rng.uniform(0.5, 1.5),
                   centre[0] + half, centre[1] + half * rng.uniform(0.5, 1.5)]
            draw_img.rectangle(box, fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
            draw_ids.rectangle(box, fill=255)
    image = image.filter(ImageFilter.GaussianBlur(0.6))
    top = np.asarray(ids)
    out = []
    for p in persons:
        kps = np.zeros((NUM_KEYPOINTS, 3))
        for k, (x, y) in enumerate(p["joints"]):
            if 0 <= x < width and 0 <= y < height:
                kps[k] = (x, y, 2 if top[int(y), int(x)] == p["pid"] else 1)
        sil = np.asarray(p["silhouette"])
        ys, xs = np.nonzero(sil)
        if len(xs) == 0 or not (kps[:, 2] > 0).any():
            continue
        x0, y0 = float(xs.min()), float(ys.min())
        bbox = [x0, y0, float(xs.max()) + 1 - x0, float(ys.max()) + 1 - y0]
        out.append({"keypoints": kps, "bbox": bbox, "area": float(len(xs))})
    return image, out


def write_split(root: Path, split: str, count: int, rng: np.random.Generator,
                opts: SynthOptions, first_id: int) -> dict:
    (root / split).mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for i in range(count):
        image_id = first_id + i
        w = int(rng.integers(opts.min_size, opts.max_size + 1))
        h = int(rng.integers(opts.min_size, opts.max_size + 1))
        image, persons = render_image(rng, w, h, opts.max_people)
        name = f"{image_id:012d}.jpg"
        image.save(root / split / name, quality=92)
        images.append({"id": image_id, "file_name": name, "width": w, "height": h,
                       "license": 0})
        for p in persons:
            kps = p["keypoints"]
            annotations.append({
                "id": (first_id - 1) * 10 + len(annotations) + 1,
                "image_id": image_id, "category_id": 1, "iscrowd": 0,
                "bbox": [round(v, 2) for v in p["bbox"]], "area": p["area"],
                "keypoints": [round(float(v), 2) if c < 2 else int(v)
                              for row in kps for c, v in enumerate(row)],
                "num_keypoints": int((kps[:, 2] > 0).sum()), "segmentation": []})
    dataset = {
        "info": {"description": "shg synthetic people", "version": "1"},
        "licenses": [{"id": 0, "name": "CC0 (generated)", "url": ""}],
        "images": images, "annotations": annotations,
        "categories": [{"id": 1, "name": "person", "supercategory": "person",
                        "keypoints": list(NAMES),
                        "skeleton": [[a + 1, b + 1] for a, b in SKELETON]}],
    }
    (root / "annotations").mkdir(parents=True, exist_ok=True)
    (root / "annotations" / f"person_keypoints_{split}.json").write_text(json.dumps(dataset))
    return {"images": len(images), "persons": len(annotations)}


def synthesize(opts: SynthOptions) -> dict:
    root = Path(opts.out)
    seq = np.random.SeedSequence(opts.seed)
    train_seed, val_seed = seq.spawn(2)
    return {
        "train2017": write_split(root, "train2017", opts.train,
                                 np.random.default_rng(train_seed), opts, 1),
        "val2017": write_split(root, "val2017", opts.val, np.random.default_rng(val_seed), opts,
                               10_000_001),
    }
