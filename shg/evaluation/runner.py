"""`shg eval`: PCK family, COCO keypoint AP and a visual report for a trained model.

Predictions are decoded from the last stack's heatmaps (argmax + quarter-cell shift, or DARK),
averaged with the horizontally flipped input's heatmaps (flip test, on by default), and mapped
back to original image pixels through each crop's stored affine. COCO AP uses the ground-truth
person boxes (this is a single-person pose estimator given the person), not a detector's.
`oracle` decodes the ground-truth target heatmaps instead of a model's: the upper bound of the
whole encode -> decode -> back-projection pipeline. Under torch.distributed every rank reads
its part and rank 0 writes the gathered results.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shards.keypoints import NAMES
from shards.manifest import split_entry
from shards.reader import dist_rank_world

from ..errors import UserError
from .coco import coco_eval, coco_results
from .core import ModelOnSplit, gather_rows, normalisations, predict_rows, progress_bar, \
    split_batches, visible
from .pck import epe, pck, pck_curve

THRESHOLDS = (0.05, 0.1, 0.2, 0.5)


@dataclass
class EvalOptions(ModelOnSplit):
    coco_ann: str | None = None
    flip: bool = True
    oracle: bool = False
    batch_size: int = 32
    max_samples: int = 0
    num_workers: int = 1
    refine: str = "quarter"
    """Heatmap decoding: "quarter" (Newell), "dark" (Zhang et al. 2020) or "none"."""


def _device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def run_eval(opts: EvalOptions) -> dict:
    """Evaluate; returns the summary on rank 0 ({} on the other ranks)."""
    split_entry(opts.shards, opts.split)  # clear error for a missing/empty split
    rank, world = dist_rank_world()
    model = meta = source = None
    device = _device()
    if not opts.oracle:
        model, meta, source = opts.load_model()
        model.to(device)
    batches = split_batches(opts.shards, opts.split, opts.batch_size, rank=rank, world=world,
                            mean=(meta or {}).get("mean_rgb"), limit=opts.max_samples,
                            num_workers=opts.num_workers)
    bar = progress_bar(opts.shards, opts.split, opts.max_samples, world, rank == 0, "eval")
    rows = list(predict_rows(model, batches, flip=opts.flip, refine=opts.refine, device=device,
                             bar=bar))
    bar.close()
    rows = gather_rows(rows)
    if rank != 0:
        return {}
    if not rows:
        raise UserError(f"{opts.shards}: split '{opts.split}' gave no samples to evaluate")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = write_pck(rows, out)
    results = coco_results(rows)
    (out / "coco_results.json").write_text(json.dumps(results))
    if opts.coco_ann:
        summary["coco"] = coco_eval(opts.coco_ann, results, out)
    summary.update({"samples": len(rows), "split": opts.split, "flip_test": opts.flip,
                    "decode": opts.refine, "oracle": opts.oracle,
                    "model": None if opts.oracle else str(source)})
    from .report import write_report

    write_report(rows, summary, out, opts.shards, opts.split)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def write_pck(rows: list, out: Path) -> dict:
    vis = visible(rows)
    norms = normalisations(rows)
    pred_c, gt_c, _ = norms["constant"]
    pred_i, gt_i, _ = norms["bbox"]
    report = {"thresholds": list(THRESHOLDS), "joints": list(NAMES),
              "epe_image_px": epe(pred_i, gt_i, vis), "epe_crop_px": epe(pred_c, gt_c, vis),
              "normalisations": {}}
    for name, (p, g, n) in norms.items():
        res = pck(p, g, vis, n, THRESHOLDS)
        thr, curve, auc = pck_curve(p, g, vis, n)
        report["normalisations"][name] = {
            "mean": dict(zip(map(str, THRESHOLDS), _clean(res.mean))),
            "micro": dict(zip(map(str, THRESHOLDS), _clean(res.micro))),
            "per_joint": {str(t): dict(zip(NAMES, _clean(row)))
                          for t, row in zip(THRESHOLDS, res.per_joint)},
            "count": dict(zip(NAMES, res.count.tolist())),
            "curve": {"thresholds": thr.round(4).tolist(), "pck": _clean(curve)},
            "auc": auc,
            "instances_left_out": int((~(np.nan_to_num(n) > 0)).sum()),
        }
    report["normalisations"]["constant"]["note"] = (
        "thesis PCK: norm = 0.1 x crop side = 25.6 px of a 256 crop (6.4 heatmap cells)")
    report["normalisations"]["torso"]["note"] = (
        "norm = longer shoulder-hip diagonal, else a torso side; instances without one left out")
    report["pckh"] = "not computed: COCO has no head-size annotation"
    (out / "pck.json").write_text(json.dumps(report, indent=1))
    return {"pck": {k: v["mean"] for k, v in report["normalisations"].items()},
            "auc": {k: v["auc"] for k, v in report["normalisations"].items()},
            "epe_image_px": report["epe_image_px"]}


def _clean(values) -> list:
    return [None if not np.isfinite(v) else round(float(v), 5) for v in values]


def print_summary(summary: dict) -> None:
    print(f"\n{summary['samples']} samples of {summary['split']}"
          f"{' (oracle: ground-truth heatmaps)' if summary['oracle'] else ''}"
          f"{', flip test' if summary['flip_test'] and not summary['oracle'] else ''}")
    print(f"{'PCK':<10}" + "".join(f"{'@' + str(t):>9}" for t in THRESHOLDS) + f"{'AUC':>9}")
    for name, values in summary["pck"].items():
        cells = "".join(f"{(values[str(t)] or 0):>9.3f}" for t in THRESHOLDS)
        print(f"{name:<10}{cells}{summary['auc'][name]:>9.3f}")
    print(f"EPE: {summary['epe_image_px']:.2f} image px")
    if "coco" in summary:
        c = summary["coco"]
        print("COCO keypoints (GT boxes): " + "  ".join(
            f"{k} {c[k]:.3f}" for k in ("AP", "AP50", "AP75", "APm", "APl", "AR")))
