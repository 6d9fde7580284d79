"""`shg eval`: PCK family, COCO keypoint AP and a visual report for a trained run.

    shg eval --run RUN [--best | --step N] --shards DIR --split val2017 \
             [--coco-ann FILE] --out OUT [--no-flip] [--oracle]
    shg eval --nproc 2 ...   or   torchrun --standalone --nproc_per_node 2 -m shg.evaluate -- ...
             (distributed: each rank reads its part, results are gathered without duplicates
             or losses; the `--` keeps torchrun from taking --run for its own --run-path)

Predictions are decoded from the last stack's heatmaps (argmax + quarter-cell shift), averaged
with the horizontally flipped input's heatmaps (flip test, on by default), and mapped back to
original image pixels through each crop's stored affine. COCO AP uses the ground-truth person
boxes (this is a single-person pose estimator given the person), not a detector's.
`--oracle` decodes the ground-truth target heatmaps instead of the model's: the upper bound
of the whole encode -> decode -> back-projection pipeline.
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shards.keypoints import FLIP_INDEX, NAMES

THRESHOLDS = (0.05, 0.1, 0.2, 0.5)


@dataclass
class ModelOnSplit:
    """What the commands that run a model over a split share: the shards and split to read,
    the output directory, and the model as --run [--step] (best/ by default) or --model."""
    shards: str
    split: str
    out: str
    run: str | None = None
    step: int | None = None
    model_file: str | None = None


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


def load_model(run: str | None = None, step: int | None = None, model_file: str | None = None):
    """The model named by --run/--best/--step or --model, with its metadata and source."""
    from .autoencoder import AEPhase1, build_from_config
    from .checkpoint import check_compatible, load_weights, step_dir

    if model_file:
        source = Path(model_file)
    elif run is None:
        raise ValueError("give --run RUN (with --best or --step N) or --model FILE")
    elif step is None:
        source = Path(run) / "best" / "model.safetensors"
    else:
        source = step_dir(Path(run) / "checkpoints", step) / "model.safetensors"
    if not source.is_file():
        hint = ("no best/ model yet (written at the first validation)" if step is None
                else f"no complete checkpoint of step {step}")
        raise FileNotFoundError(f"{source}: {hint}")
    weights, meta = load_weights(source)
    if "model" not in meta:
        raise ValueError(f"{source}: no model config in its metadata (not written by shg?)")
    model = build_from_config(meta["model"])
    if isinstance(model, AEPhase1):
        raise ValueError(f"{source}: a phase-1 autoencoder run predicts no poses; evaluate "
                         "the fine-tuned (phase 2) run")
    check_compatible(model, weights, str(source))
    model.load_state_dict(weights)
    return model.eval(), meta, source


@torch.no_grad()
def predict_batch(model, images: torch.Tensor, flip: bool) -> torch.Tensor:
    """Last stack's heatmaps (N, K, H, W), averaged with the flipped input's when `flip`."""
    from .decode import flip_back

    heat = model(images)[:, -1].float()
    if flip:
        heat = 0.5 * (heat + flip_back(model(images.flip(-1))[:, -1].float(), FLIP_INDEX))
    return heat


def _gather(rows: list) -> list:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        parts = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(parts, rows)
        rows = [r for p in parts for r in p]
    return rows


def run_eval(opts: EvalOptions) -> dict:
    from shards.crop import to_image
    from shards.reader import EvalStream, dist_rank_world, eval_loader, split_entry

    from .decode import decode_heatmaps

    entry = split_entry(opts.shards, opts.split)  # clear error for a missing/empty split
    rank, world = dist_rank_world()
    model = meta = None
    if not opts.oracle:
        model, meta, source = load_model(opts.run, opts.step, opts.model_file)
    stream = EvalStream(opts.shards, opts.split, opts.batch_size, rank=rank, world=world,
                        mean_from="train2017", limit=opts.max_samples or None,
                        mean=(meta or {}).get("mean_rgb"))
    rows = []
    from tqdm import tqdm

    total = min(entry["num_samples"], opts.max_samples or entry["num_samples"])
    bar = tqdm(total=total // world, disable=rank != 0, unit="crop", desc="eval",
               mininterval=0.5 if sys.stderr.isatty() else 30.0)
    for batch in eval_loader(stream, num_workers=opts.num_workers):
        if opts.oracle:
            heat = batch["heatmaps"]
        else:
            heat = predict_batch(model, batch["image"], opts.flip)
        crop_size = batch["image"].shape[-1]
        coords, conf = decode_heatmaps(heat, crop_size, refine=opts.refine)
        for i, meta_i in enumerate(batch["meta"]):
            rows.append({
                "index": int(batch["index"][i]), "key": batch["key"][i],
                "image_id": meta_i["image_id"], "ann_id": meta_i["ann_id"],
                "pred_crop": coords[i].numpy(), "conf": conf[i].numpy(),
                "pred_image": to_image(coords[i].numpy(), meta_i["affine"]),
                "gt_crop": batch["keypoints"][i].numpy()[:, :2],
                "visible": batch["keypoints"][i].numpy()[:, 2] > 0,
                "bbox": meta_i["bbox"], "affine": meta_i["affine"], "area": meta_i["area"],
            })
        bar.update(len(batch["key"]))
    bar.close()
    rows = _gather(rows)
    if rank != 0:
        return {}
    rows.sort(key=lambda r: r["index"])
    if len({r["index"] for r in rows}) != len(rows):
        raise RuntimeError("a sample was evaluated twice: ranks disagree on the split")
    if not rows:
        raise ValueError(f"{opts.shards}: split '{opts.split}' gave no samples to evaluate")
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = write_pck(rows, out)
    results = coco_results(rows)
    (out / "coco_results.json").write_text(json.dumps(results))
    if opts.coco_ann:
        summary["coco"] = coco_eval(opts.coco_ann, results, out)
    summary.update({"samples": len(rows), "split": opts.split, "flip_test": opts.flip,
                    "decode": opts.refine,
                    "oracle": opts.oracle,
                    "model": None if opts.oracle else str(source)})
    from .report import write_report

    write_report(rows, summary, out, opts.shards, opts.split)
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    return summary


def write_pck(rows: list, out: Path) -> dict:
    from .metrics import bbox_norm, constant_norm, epe, pck, pck_curve, torso_norm

    pred_c = np.stack([r["pred_crop"] for r in rows])
    gt_c = np.stack([r["gt_crop"] for r in rows])
    vis = np.stack([r["visible"] for r in rows])
    # Image-pixel ground truth = the crop keypoints mapped back (exact: same affine).
    from shards.crop import to_image

    pred_i = np.stack([r["pred_image"] for r in rows])
    gt_i = np.stack([to_image(r["gt_crop"], r["affine"]) for r in rows])
    norms = {
        "constant": (pred_c, gt_c, constant_norm(len(rows))),
        "bbox": (pred_i, gt_i, bbox_norm([r["bbox"][2:] for r in rows])),
        "torso": (pred_i, gt_i, torso_norm(gt_i, vis)),
    }
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
    import contextlib
    import io

    from pycocotools.cocoeval import COCOeval

    from shards.coco import load_coco

    coco_gt, _ = load_coco(ann_file)
    names = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(results)
        ev = COCOeval(coco_gt, coco_dt, "keypoints")
        ev.params.imgIds = sorted({r["image_id"] for r in results})
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    stats = {n: float(v) for n, v in zip(names, ev.stats)}
    stats["note"] = ("ground-truth person boxes were used (no detector); images: "
                     f"{len(ev.params.imgIds)}")
    (out / "coco_eval.json").write_text(json.dumps(stats, indent=1))
    (out / "coco_eval.txt").write_text(buf.getvalue())
    return stats


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


def main(argv: list[str] | None = None) -> int:
    from .cli import build_parser

    parser = build_parser()
    args = parser.parse_args(["eval", *(sys.argv[1:] if argv is None else argv)])
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized():
        torch.distributed.init_process_group("gloo")
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
