"""`shg eval`: PCK family, COCO keypoint AP and a visual report for a trained model.

Predictions are decoded from the last stack's heatmaps (argmax + quarter-cell shift, or DARK),
averaged with the horizontally flipped input's heatmaps (flip test, on by default), and mapped
back to original image pixels through each crop's stored affine. Persons come from the shards'
ground-truth boxes, or with `boxes` from a detector's boxes file, cut from the original images
on the fly (shards/detections.py); either way the poses become COCO results through the same
protocol (rescoring, OKS-NMS: protocol.py). PCK needs a ground-truth person per crop, so it is
computed with ground-truth boxes only. `oracle` decodes the ground-truth target heatmaps
instead of a model's: the upper bound of the whole encode -> decode -> back-projection
pipeline (with boxes: of the annotated person each box overlaps best). Under torch.distributed
every rank reads its part and rank 0 writes the gathered results.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shards import atomic
from shards.manifest import DataError, split_entry
from shards.schema import KeypointSchema, stored
from shards.reader import dist_rank_world, eval_loader

from ..errors import UserError
from . import protocol as post
from .coco import ap_text, coco_eval
from .core import ModelOnSplit, gather_list, gather_rows, normalisations, noting_problems, \
    placement, predict_rows, progress_bar, split_batches, visible
from .pck import epe, pck, pck_curve
from .report import boxes_line

THRESHOLDS = (0.05, 0.1, 0.2, 0.5)
ORACLE_IOU = 0.5
"""With boxes, the oracle decodes the annotated person a box overlaps with IoU >= this."""


@dataclass
class EvalOptions(ModelOnSplit):
    coco_ann: str | None = None
    oracle: bool = False
    batch_size: int = 32
    max_samples: int = 0
    num_workers: int = 1
    refine: str = "quarter"
    """Heatmap decoding: "quarter" (Newell), "dark" (Zhang et al. 2020) or "none"."""
    protocol: post.Protocol = field(default_factory=post.Protocol)
    boxes: str | None = None
    """A detection-results JSON: evaluate on its person boxes instead of the shards' GT boxes."""
    coco_root: str | None = None
    """With `boxes`: the COCO root (images in ROOT/SPLIT/, annotations in
    ROOT/annotations/person_keypoints_SPLIT.json unless coco_ann names them)."""

    def __post_init__(self) -> None:
        if self.boxes:
            if not self.coco_root:
                raise UserError("--boxes needs --coco ROOT (the images to cut the boxes from)")
            if self.max_samples:
                raise UserError("--max-samples works on shards; with --boxes make a smaller "
                                "boxes file instead")
            self.coco_ann = self.coco_ann or str(
                Path(self.coco_root) / "annotations" / f"person_keypoints_{self.split}.json")
        elif not self.shards:
            raise UserError("give --shards DIR (ground-truth boxes) or --boxes DETS.json with "
                            "--coco ROOT (a detector's boxes)")


def run_eval(opts: EvalOptions) -> dict:
    """Evaluate; returns the summary on rank 0 ({} on the other ranks)."""
    rank, world = dist_rank_world()
    model = meta = source = None
    place = placement(opts.device, "fp32" if opts.oracle else opts.precision)
    device = place.device
    if not opts.oracle:
        model, meta, source = opts.load_model()
        model.to(device)
    mean = (meta or {}).get("mean_rgb")
    schema = data_schema(opts, meta)
    if opts.boxes:
        batches, total, boxes_info = _detection_batches(opts, meta, mean, rank, world, schema)
    else:
        total, boxes_info = None, _shard_boxes(opts)
        batches = split_batches(opts.shards, opts.split, opts.batch_size, rank=rank,
                                world=world, mean=mean, limit=opts.max_samples,
                                num_workers=opts.num_workers, targets=opts.oracle)
    bar = progress_bar(opts.shards, opts.split, opts.max_samples, world, rank == 0, "eval",
                       total=total)
    problems: list = []
    rows = list(predict_rows(model, noting_problems(batches, problems), schema=schema,
                             sigma=float((meta or {}).get("sigma", 1.0)),
                             flip=opts.protocol.flip, flip_shift=opts.protocol.flip_shift,
                             refine=opts.refine, device=device, autocast=place.autocast,
                             bar=bar))
    bar.close()
    rows, problems = gather_rows(rows), gather_list(problems)
    if rank != 0:
        return {}
    image_ids = boxes_info.pop("annotated_images", None)
    if opts.boxes:
        boxes_info["images_unreadable"] = _count_problems(problems)
    elif not rows:
        raise UserError(f"{opts.shards}: split '{opts.split}' gave no samples to evaluate")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    results, counts = post.apply(rows, opts.protocol, schema)
    atomic.write_text(out / "coco_results.json", json.dumps(results))
    about = {"boxes": boxes_info, "protocol": opts.protocol.as_dict(), "poses": counts}
    summary = {} if opts.boxes else write_pck(rows, out, schema)
    summary.update({"samples": len(rows), "split": opts.split, "flip_test": opts.protocol.flip,
                    "decode": opts.refine, "oracle": opts.oracle,
                    "precision": None if opts.oracle else place.precision,
                    "model": None if opts.oracle else str(source),
                    "keypoints": schema.describe(), **about})
    if opts.coco_ann and schema.sigmas is None:
        summary["coco"] = {"unavailable": f"the keypoint schema ({schema.describe()}) has no "
                                          "OKS sigmas: give them in a schema file (sigmas)"}
    elif opts.coco_ann:
        summary["coco"] = coco_eval(opts.coco_ann, results, out, about, image_ids,
                                    schema.sigmas, post.oks_scale_choice(opts.protocol, schema))
    from .report import write_boxes_report, write_report

    if opts.boxes:
        write_boxes_report(summary, out)
    else:
        write_report(rows, summary, out, opts.shards, opts.split, schema)
    # last, and whole or not at all: a study reads it as "this evaluation finished"
    atomic.write_json(out / "summary.json", summary, indent=1)
    return summary


def data_schema(opts: EvalOptions, meta: dict | None) -> KeypointSchema:
    """The keypoint schema of the evaluation: the model's, which must be the data's (the
    shards' or the annotation file's); the data's alone for the oracle."""
    if opts.boxes:
        from shards.coco import load_coco, plan_schema

        where = opts.coco_ann
        data = plan_schema(load_coco(opts.coco_ann)[0].dataset, Path(opts.coco_ann))
    else:
        where = f"{opts.shards} ({opts.split})"
        data = stored(split_entry(opts.shards, opts.split))
    if meta is None:
        return data
    model = stored(meta)
    model.check_same(data, "the model", where)
    return model


def _shard_boxes(opts: EvalOptions) -> dict:
    """The ground-truth boxes of the shards; their crops were cut with the shards' enlargement,
    so a different `protocol.enlarge` is an error rather than a silently ignored option."""
    entry = split_entry(opts.shards, opts.split)  # clear error for a missing/empty split
    enlarge = entry.get("crop", {}).get("enlarge", post.THESIS_ENLARGE)
    if opts.protocol.enlarge is not None and abs(enlarge - opts.protocol.enlarge) > 1e-9:
        raise UserError(f"{opts.shards}: the shards were cut with enlarge {enlarge}, not "
                        f"{opts.protocol.enlarge}: build shards with that enlargement, or "
                        "evaluate on boxes (--boxes)")
    opts.protocol.enlarge = enlarge
    return {"source": "ground truth (shards)", "shards": str(opts.shards),
            "kept": min(entry["num_samples"], opts.max_samples or entry["num_samples"])}


def _detection_batches(opts: EvalOptions, meta: dict | None, mean, rank: int, world: int,
                       schema: KeypointSchema):
    """(loader over this rank's crops of the boxes file, their number, what the file gave)."""
    from shards.coco import load_coco
    from shards.crop import CropParams
    from shards.detections import BoxCrops, ImageInfo, load_detections

    coco, _ = load_coco(opts.coco_ann)
    images = {}
    for image_id, im in coco.imgs.items():
        persons = None
        if opts.oracle:
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id], iscrowd=False,
                                                catIds=list(schema.categories)))
            persons = [(a["bbox"], np.asarray(a["keypoints"], float).reshape(-1, 3))
                       for a in anns if a["num_keypoints"] > 0]
        images[image_id] = ImageInfo(im["file_name"], im["width"], im["height"], persons)
    try:
        dets = load_detections(opts.boxes, {i: (v.width, v.height) for i, v in images.items()},
                               opts.protocol.box_score_threshold, schema.categories or (1,))
    except DataError as exc:
        raise UserError(str(exc)) from None
    opts.protocol.enlarge = post.resolved_enlarge(opts.protocol, meta)
    params = CropParams(size=int((meta or {}).get("crop_size", 256)),
                        enlarge=opts.protocol.enlarge)
    crops = BoxCrops(dets, images, Path(opts.coco_root) / opts.split, params, opts.batch_size,
                     mean if mean is not None else (0.0, 0.0, 0.0), schema.num_joints,
                     rank=rank, world=world, oracle_iou=ORACLE_IOU if opts.oracle else None)
    info = dets.summary()
    info["images"] = len({d.image_id for d in dets.boxes})
    info["annotated_images"] = sorted(images)  # COCO AP counts them all (not saved)
    return eval_loader(crops, opts.num_workers), len(crops), info


def _count_problems(problems: list) -> dict:
    """{reason: {"images": n, "boxes": n, "example": message}} of the unreadable images."""
    out: dict = {}
    for reason, boxes, message in problems:
        entry = out.setdefault(reason, {"images": 0, "boxes": 0, "example": message})
        entry["images"] += 1
        entry["boxes"] += boxes
    return out


UNAVAILABLE = {
    "torso": "not computed: the keypoint schema names no left/right shoulders and hips",
    "head": "not computed: the data has no head boxes (MPII's head_box; COCO has none)"}


def write_pck(rows: list, out: Path, schema: KeypointSchema) -> dict:
    vis = visible(rows)
    norms = normalisations(rows, schema)
    pred_c, gt_c, _ = norms["constant"]
    pred_i, gt_i, _ = norms["bbox"]
    names = list(schema.names)
    report = {"thresholds": list(THRESHOLDS), "joints": names,
              "epe_image_px": epe(pred_i, gt_i, vis), "epe_crop_px": epe(pred_c, gt_c, vis),
              "normalisations": {},
              "unavailable": {k: v for k, v in UNAVAILABLE.items() if k not in norms}}
    for name, (p, g, n) in norms.items():
        res = pck(p, g, vis, n, THRESHOLDS)
        thr, curve, auc = pck_curve(p, g, vis, n)
        report["normalisations"][name] = {
            "mean": dict(zip(map(str, THRESHOLDS), _clean(res.mean))),
            "micro": dict(zip(map(str, THRESHOLDS), _clean(res.micro))),
            "per_joint": {str(t): dict(zip(names, _clean(row)))
                          for t, row in zip(THRESHOLDS, res.per_joint)},
            "count": dict(zip(names, res.count.tolist())),
            "curve": {"thresholds": thr.round(4).tolist(), "pck": _clean(curve)},
            "auc": auc,
            "instances_left_out": int((~(np.nan_to_num(n) > 0)).sum()),
        }
    report["normalisations"]["constant"]["note"] = (
        "thesis PCK: norm = 0.1 x crop side = 25.6 px of a 256 crop (6.4 heatmap cells)")
    notes = {"torso": "norm = longer shoulder-hip diagonal, else a torso side; instances "
                      "without one left out",
             "head": "PCKh: norm = 0.6 x the head box's diagonal (MPII); instances without a "
                     "head box left out"}
    for name, note in notes.items():
        if name in report["normalisations"]:
            report["normalisations"][name]["note"] = note
    atomic.write_json(out / "pck.json", report, indent=1)
    return {"pck": {k: v["mean"] for k, v in report["normalisations"].items()},
            "auc": {k: v["auc"] for k, v in report["normalisations"].items()},
            "epe_image_px": report["epe_image_px"]}


def _clean(values) -> list:
    return [None if not np.isfinite(v) else round(float(v), 5) for v in values]


def print_summary(summary: dict) -> None:
    boxes = summary.get("boxes", {})
    print(f"\n{summary['samples']} person crops of {summary['split']}"
          f"{' (oracle: ground-truth heatmaps)' if summary['oracle'] else ''}"
          f"{', flip test' if summary['flip_test'] and not summary['oracle'] else ''}; "
          f"boxes: {boxes_line(boxes)}")
    if "pck" in summary:
        print(f"{'PCK':<10}" + "".join(f"{'@' + str(t):>9}" for t in THRESHOLDS)
              + f"{'AUC':>9}")
        for name, values in summary["pck"].items():
            cells = "".join(f"{(values[str(t)] or 0):>9.3f}" for t in THRESHOLDS)
            print(f"{name:<10}{cells}{summary['auc'][name]:>9.3f}")
        print(f"EPE: {summary['epe_image_px']:.2f} image px")
    if "coco" in summary and "unavailable" in summary["coco"]:
        print(f"COCO keypoint AP: unavailable ({summary['coco']['unavailable']})")
    elif "coco" in summary:
        c = summary["coco"]
        print(f"COCO keypoints ({'detected' if boxes.get('boxes_in_file') is not None else 'GT'}"
              f" boxes): {ap_text(c)}; OKS scale: {c.get('oks_scale', '?')}")
