"""COCO keypoint results and COCO AP (pycocotools' COCOeval)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np

from shards.coco import load_coco

AP_NAMES = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]


def coco_results(rows: list) -> list[dict]:
    """COCO keypoint results format: one entry per evaluated person, image coordinates."""
    results = []
    for r in rows:
        kps = np.concatenate([r["pred_image"], r["conf"][:, None]], 1)
        results.append({"image_id": int(r["image_id"]), "category_id": 1,
                        "keypoints": [round(float(v), 3) for v in kps.ravel()],
                        "score": float(np.clip(r["conf"], 0, None).mean())})
    return results


def coco_eval(ann_file: str, results: list, out: Path) -> dict:
    from pycocotools.cocoeval import COCOeval

    coco_gt, _ = load_coco(ann_file)
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.params.imgIds = sorted({r["image_id"] for r in results})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {n: float(v) for n, v in zip(AP_NAMES, ev.stats)}
    stats["note"] = ("ground-truth person boxes were used (no detector); images: "
                     f"{len(ev.params.imgIds)}")
    (out / "coco_eval.json").write_text(json.dumps(stats, indent=1))
    (out / "coco_eval.txt").write_text(buf.getvalue())
    return stats
