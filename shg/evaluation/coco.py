"""COCO keypoint AP (pycocotools' COCOeval, with the keypoint schema's OKS sigmas) of results made
by the protocol (protocol.py)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import numpy as np

from shards import atomic
from shards.coco import load_coco

AP_NAMES = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]


def coco_eval(ann_file: str, results: list, out: Path, about: dict,
              image_ids: list[int] | None = None, sigmas=None) -> dict:
    """COCOeval over `image_ids` (default: the images with results, which is right for ground-
    truth boxes; with detections every image of the annotation file counts, so a person the
    detector missed is a miss). `about` (boxes, protocol) is written into coco_eval.json."""
    from pycocotools.cocoeval import COCOeval

    coco_gt, _ = load_coco(ann_file)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        ev = COCOeval(coco_gt, coco_gt.loadRes(results) if results else _empty(coco_gt),
                      "keypoints")
        if sigmas is not None:  # the keypoint schema's (pycocotools' own are COCO person's)
            ev.params.kpt_oks_sigmas = np.asarray(sigmas, dtype=np.float64)
        ev.params.imgIds = sorted(image_ids if image_ids is not None
                                  else {r["image_id"] for r in results})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {n: float(v) for n, v in zip(AP_NAMES, ev.stats)}  # -1: no ground truth to score
    stats["images"] = len(ev.params.imgIds)
    stats.update(about)
    atomic.write_json(out / "coco_eval.json", stats, indent=1)
    atomic.write_text(out / "coco_eval.txt", buf.getvalue())
    return stats


def _empty(coco_gt):
    """No result survived: an empty result set scores 0 (pycocotools' loadRes refuses [])."""
    from pycocotools.coco import COCO

    empty = COCO()
    empty.dataset = {"images": list(coco_gt.dataset["images"]), "annotations": [],
                     "categories": coco_gt.dataset.get("categories", [])}
    with contextlib.redirect_stdout(io.StringIO()):
        empty.createIndex()
    return empty
