"""COCO keypoint AP (pycocotools' COCOeval, with the keypoint schema's OKS sigmas) of the results
the protocol made (protocol.py) or a results file holds (results_file.py), measured as the
data's published tables are.

OKS scale. COCOeval divides each squared keypoint distance by the ground-truth person's `area`.
COCO's files (and OCHuman's, AP-10K's) carry it: it is used as it is, so COCO AP is exactly
pycocotools' on the file. CrowdPose's and AI Challenger's files have none; their published
numbers come from xtcocotools with `use_area=False` (mmpose's CrowdPose and AI Challenger
metrics, CrowdPose's own crowdposetools), which scales by 0.53 x the box's width x height.
The choice (`--protocol`, a schema file's `protocol`; OKS_PROTOCOLS): "auto" (the default:
each annotation's area where it has one, else 0.53 x w x h), "area" (every annotation's area:
one without is an error) or "bbox" (0.53 x w x h for all). It is applied by writing the scale
into each ground-truth annotation's `area` before COCOeval runs, so pycocotools' OKS and its
area ranges (APm, APl) both use it, as xtcocotools' do with use_area=False.

Crowd index (CrowdPose). When the images carry `crowdIndex`, AP_easy / AP_medium / AP_hard are
the AP over the evaluated images of each class: easy < 0.2 <= medium < 0.8 <= hard, the
thresholds of CrowdPose's evaluation code (crowdposetools' and xtcocotools' `keypoints_crowd`
call get_type_result(first=0.2, second=0.8); the paper's text gives 0.1 for easy). Each is a
COCOeval over that class's images (-1: a class without images or ground truth).
"""

from __future__ import annotations

import contextlib
import io
import math
from pathlib import Path

import numpy as np

from shards import atomic
from shards.coco import load_coco
from shards.manifest import DataError

from .protocol import oks_scale_choice

AP_NAMES = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
CROWD_NAMES = {"AP_easy": "AP(E)", "AP_medium": "AP(M)", "AP_hard": "AP(H)"}
CROWD_THRESHOLDS = (0.2, 0.8)
BOX_SCALE = 0.53
"""xtcocotools' OKS scale without areas: 0.53 x box width x height."""
AREA_TEXT, BOX_TEXT = "the annotations' area", "0.53 x box width x height"


def coco_eval(ann_file: str, results: list, out: Path, about: dict,
              image_ids: list[int] | None = None, sigmas=None,
              oks_scale: tuple[str, str] | None = None, gt=None) -> dict:
    """COCOeval over `image_ids` (default: the images with results, which is right for ground-
    truth boxes; with detections every image of the annotation file counts, so a person the
    detector missed is a miss). `oks_scale`: (choice, who chose it), protocol.oks_scale_choice;
    `gt`: the annotation file already loaded (load_coco). `about` (boxes, protocol) is written
    into coco_eval.json with the OKS scale used and, when the images carry crowdIndex,
    AP_easy/AP_medium/AP_hard."""
    from pycocotools.cocoeval import COCOeval

    coco_gt = gt if gt is not None else load_coco(ann_file)[0]
    choice, chosen_by = oks_scale or oks_scale_choice(None)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev = COCOeval(coco_gt, coco_gt.loadRes(results) if results else _empty(coco_gt),
                      "keypoints")
        if sigmas is not None:  # the keypoint schema's (pycocotools' own are COCO person's)
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.params.imgIds = sorted(image_ids if image_ids is not None
                                  else {r["image_id"] for r in results})
        scaled = apply_oks_scale(coco_gt, ann_file, choice, ev.params.imgIds)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
        stats = {n: float(v) for n, v in zip(AP_NAMES, ev.stats)}  # -1: no ground truth
        crowd = crowd_index_ap(ev, coco_gt)
    stats["images"] = len(ev.params.imgIds)
    stats.update({k: crowd.pop(k) for k in CROWD_NAMES if k in crowd})
    stats["oks_scale"] = scale_used(scaled)
    stats["oks_protocol"] = {"choice": choice, "chosen_by": chosen_by, **scaled}
    if crowd:
        stats["crowd_index"] = crowd
    stats.update(about)
    text = buf.getvalue() + "".join(
        f" Average Precision  (AP) @[ IoU=0.50:0.95 | type={k[3:]:>6s} | maxDets= 20 ] = "
        f"{stats[k]:0.3f}\n" for k in CROWD_NAMES if k in stats)
    atomic.write_json(out / "coco_eval.json", stats, indent=1)
    atomic.write_text(out / "coco_eval.txt", text + f"OKS scale: {stats['oks_scale']}\n")
    return stats


def apply_oks_scale(coco_gt, ann_file, choice: str, image_ids: list[int]) -> dict:
    """Write the OKS scale of `choice` into the `area` of the ground-truth annotations of
    `image_ids`; returns how many kept their own area and how many were scaled by the box."""
    by_area = by_box = 0
    for ann in coco_gt.loadAnns(coco_gt.getAnnIds(imgIds=image_ids)) if image_ids else []:
        own = "area" in ann and not ann.get("area_from_box")  # shards.coco fills in w x h
        if own and choice != "bbox":
            by_area += 1
            continue
        if choice == "area":
            raise DataError(f"{ann_file}: annotation {ann.get('id')} has no 'area', which the "
                            "'area' protocol (COCO's) scales OKS by; use --protocol bbox (0.53 x "
                            "box width x height: CrowdPose's, AI Challenger's) or auto")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(
                isinstance(v, (int, float)) and math.isfinite(v) for v in box)):
            raise DataError(f"{ann_file}: annotation {ann.get('id')} has no 'area' and no "
                            "usable 'bbox' [x, y, w, h] to scale OKS by: give it one of them")
        ann["area"] = box[3] * box[2] * BOX_SCALE  # xtcocotools' expression, bit for bit
        by_box += 1
    return {"annotations_by_area": by_area, "annotations_by_box": by_box}


def scale_used(scaled: dict) -> str:
    """The OKS scale in words, from apply_oks_scale's counts."""
    area, box = scaled["annotations_by_area"], scaled["annotations_by_box"]
    if area and box:
        return f"{AREA_TEXT} where given ({area} annotations), else {BOX_TEXT} ({box})"
    return BOX_TEXT if box else AREA_TEXT


def crowd_index_ap(ev, coco_gt) -> dict:
    """{AP_easy, AP_medium, AP_hard, thresholds, images per class} over the evaluated images
    that carry a crowdIndex ({} when none does); `ev` has been evaluated (its stats are kept:
    this re-evaluates per class)."""
    every = list(ev.params.imgIds)
    classes: dict[str, list] = {"easy": [], "medium": [], "hard": []}
    missing = 0
    for image_id in every:
        index = coco_gt.imgs.get(image_id, {}).get("crowdIndex")
        if not isinstance(index, (int, float)) or not math.isfinite(index):
            missing += 1
        else:
            low, high = CROWD_THRESHOLDS
            classes["easy" if index < low else "medium" if index < high else "hard"].append(
                image_id)
    if missing == len(every):
        return {}
    out = {f"AP_{name}": _ap_over(ev, ids) for name, ids in classes.items()}
    ev.params.imgIds = every
    return {**out, "thresholds": list(CROWD_THRESHOLDS),
            "images": {name: len(ids) for name, ids in classes.items()},
            "images_without_crowd_index": missing}


def _ap_over(ev, image_ids: list[int]) -> float:
    """AP (OKS 0.50:0.95, all areas) of `ev` re-run over `image_ids` only."""
    if not image_ids:
        return -1.0
    ev.params.imgIds = sorted(image_ids)
    ev.evaluate()
    ev.accumulate()
    precision = ev.eval["precision"][:, :, :, 0, :]  # (T, R, K, area "all", maxDets)
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else -1.0


def ap_text(c: dict) -> str:
    """"AP 0.712, AP50 ..., AR ...[, AP(E) ...]" of coco_eval's stats."""
    keys = [k for k in ("AP", "AP50", "AP75", "APm", "APl", "AR") if k in c]
    return ", ".join([f"{k} {c[k]:.3f}" for k in keys]
                     + [f"{name} {c[k]:.3f}" for k, name in CROWD_NAMES.items() if k in c])


def scale_text(c: dict) -> str:
    """How OKS was scaled, in one sentence (the report's)."""
    p = c.get("oks_protocol", {})
    who = p.get("chosen_by", "default")
    line = f"OKS scale: {c.get('oks_scale', AREA_TEXT)} (protocol {p.get('choice', 'auto')}" \
           + (", the default)." if who == "default" else f", chosen by {who}).")
    if "crowd_index" in c:
        n = c["crowd_index"]["images"]
        line += (f" Crowd index classes (easy < {CROWD_THRESHOLDS[0]} <= medium < "
                 f"{CROWD_THRESHOLDS[1]} <= hard): {n['easy']}, {n['medium']} and {n['hard']} "
                 "images")
        skipped = c["crowd_index"]["images_without_crowd_index"]
        line += f", {skipped} without crowdIndex." if skipped else "."
    return line


def _empty(coco_gt):
    """No result survived: an empty result set scores 0 (pycocotools' loadRes refuses [])."""
    from pycocotools.coco import COCO

    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                     "categories": coco_gt.dataset.get("categories", [])}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty

