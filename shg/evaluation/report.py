"""Evaluation report: report.md with PNG plots (PCK per joint, PCK curves, worst cases)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from shards.reader import crops_by_key

from ..visualize import crop_with_skeleton, draw_tiles, pyplot, save_figure
from .coco import ap_text, scale_text


def worst_grid(rows: list, shards: str, split: str, path: Path, skeleton,
               count: int = 16) -> None:
    """The `count` crops predicted worst (mean error over the visible joints), 4 a row, with
    the ground truth in green and the prediction in red."""

    def error(r):
        v = r["visible"]
        return float(np.linalg.norm(r["pred_crop"] - r["gt_crop"], axis=1)[v].mean()) \
            if v.any() else -1.0

    worst = sorted(rows, key=error, reverse=True)[:count]
    crops = crops_by_key(shards, split, {r["key"] for r in worst})
    tiles = [crop_with_skeleton(crop_with_skeleton(crops[r["key"]], r["gt_crop"], skeleton,
                                                   r["visible"], (0, 220, 0)),
                                r["pred_crop"], skeleton, colour=(255, 40, 40))
             if r["key"] in crops else None for r in worst]
    labels = [f"{r['key']}  err {error(r):.1f}px" if r["key"] in crops else "" for r in worst]
    draw_tiles(tiles, path, cols=4, labels=labels,
               tile=max([r["crop_size"] for r in worst] or [256]), background=(30, 30, 30),
               label_at=4)


def write_report(rows: list, summary: dict, out: Path, shards: str, split: str,
                 schema) -> None:
    plt = pyplot()
    pck = json.loads((out / "pck.json").read_text())
    norms = pck["normalisations"]
    names = list(schema.names)

    fig, ax = plt.subplots(figsize=(max(10, 0.5 * len(names)), 4))
    x = np.arange(len(names))
    bars = [(n, t) for n, t in (("constant", "0.5"), ("bbox", "0.1"), ("torso", "0.2"),
                                ("head", "0.5")) if n in norms]
    width = 0.8 / len(bars)
    for j, (name, thr) in enumerate(bars):
        values = [norms[name]["per_joint"][thr][n] or 0 for n in names]
        ax.bar(x + (j - (len(bars) - 1) / 2) * width, values, width=width,
               label=f"{name}@{thr}")
    ax.set_xticks(x, names, rotation=60, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("PCK")
    ax.legend()
    ax.set_title("PCK per joint")
    fig.tight_layout()
    save_figure(fig, out / "pck_per_joint.png")

    fig, ax = plt.subplots(figsize=(5, 4))
    for name, data in norms.items():
        ax.plot(data["curve"]["thresholds"], [v or 0 for v in data["curve"]["pck"]],
                label=f"{name} (AUC {data['auc']:.3f})")
    ax.set_xlabel("threshold (fraction of the normalisation)")
    ax.set_ylabel("PCK")
    ax.set_ylim(0, 1)
    ax.legend()
    ax.set_title("PCK curves")
    fig.tight_layout()
    save_figure(fig, out / "pck_curve.png")

    worst_grid(rows, shards, split, out / "worst_cases.png", schema.skeleton)

    lines = [f"# Evaluation of {summary.get('model') or 'ground-truth heatmaps (oracle)'}", "",
             f"Split `{split}` of `{shards}`: {len(rows)} person crops"
             f"{', flip test' if summary.get('flip_test') and not summary.get('oracle') else ''}.",
             "", "| normalisation | " + " | ".join(f"@{t}" for t in pck["thresholds"])
             + " | AUC |", "|---|" + "---|" * (len(pck["thresholds"]) + 1)]
    for name, data in norms.items():
        cells = " | ".join(f"{(data['mean'][str(t)] or 0):.3f}" for t in pck["thresholds"])
        lines.append(f"| {name} | {cells} | {data['auc']:.3f} |")
    lines += [f"| {name} | unavailable: {why.split(': ', 1)[-1]} | |"
              for name, why in pck.get("unavailable", {}).items()]
    lines += ["", f"Keypoints: {summary.get('keypoints', schema.describe())}.", "",
              f"EPE: {pck['epe_image_px']:.2f} px in the original images.", ""]
    lines += coco_lines(summary)
    lines += ["![PCK per joint](pck_per_joint.png)", "", "![PCK curves](pck_curve.png)", "",
              "Worst cases first (green: ground truth, red: prediction):", "",
              "![worst cases](worst_cases.png)", ""]
    (out / "report.md").write_text("\n".join(lines))


def coco_lines(summary: dict) -> list[str]:
    """The report's COCO section: which boxes, the protocol, AP (when computed)."""
    p = summary["protocol"]
    lines = [f"Boxes: {boxes_line(summary['boxes'])}.", "",
             "| protocol | value |", "|---|---|",
             f"| box score threshold | {p['box_score_threshold']} |",
             f"| OKS-NMS | {p['oks_nms'] if p['oks_nms'] is not None else 'none'} |",
             f"| instance score | box score x mean keypoint confidence above "
             f"{p['keypoint_threshold']} |",
             f"| flip test | {'yes' if p['flip'] else 'no'}"
             f"{', one-cell shift' if p['flip'] and p['flip_shift'] else ''} |",
             f"| crop enlargement | {p['enlarge']} |", "",
             f"Poses: {summary['poses']['poses']}, suppressed by OKS-NMS: "
             f"{summary['poses']['suppressed_by_oks_nms']}, results: "
             f"{summary['poses']['results']}.", ""]
    if "coco" in summary and "unavailable" in summary["coco"]:
        lines += [f"COCO keypoint AP: unavailable ({summary['coco']['unavailable']}).", ""]
    elif "coco" in summary:
        c = summary["coco"]
        lines += [f"COCO keypoint AP over {c['images']} images: {ap_text(c)}.", "",
                  scale_text(c), ""]
    return lines


def write_boxes_report(summary: dict, out: Path) -> None:
    """report.md of an evaluation on a detector's boxes (no PCK: no ground-truth person per
    box); the boxes dropped, with one example each."""
    boxes = summary["boxes"]
    lines = [f"# Evaluation of {summary.get('model') or 'ground-truth heatmaps (oracle)'} on "
             f"detected boxes", "", f"Split `{summary['split']}`, boxes from "
             f"`{boxes['source']}`: {summary['samples']} person crops evaluated.", ""]
    lines += coco_lines(summary)
    if boxes.get("dropped") or boxes.get("images_unreadable"):
        lines += ["| not evaluated | boxes | first case |", "|---|---|---|"]
        for reason, n in sorted(boxes.get("dropped", {}).items()):
            lines.append(f"| {reason} | {n} | {boxes['examples'].get(reason, '')} |")
        for reason, e in sorted(boxes.get("images_unreadable", {}).items()):
            lines.append(f"| {reason} ({e['images']} images) | {e['boxes']} | {e['example']} |")
        lines.append("")
    (out / "report.md").write_text("\n".join(lines))


def boxes_line(boxes: dict) -> str:
    """Which boxes were evaluated, in one line (kept and dropped, with reasons)."""
    if boxes.get("boxes_in_file") is None:
        return f"{boxes.get('source', 'ground truth')}, {boxes.get('kept', 0)} persons"
    dropped = Counter(boxes.get("dropped", {}))
    for reason, entry in boxes.get("images_unreadable", {}).items():
        dropped[reason] += entry["boxes"]
    why = ", ".join(f"{n} {reason}" for reason, n in sorted(dropped.items()))
    unreadable = sum(e["boxes"] for e in boxes.get("images_unreadable", {}).values())
    return (f"{Path(boxes['source']).name}: {boxes['kept'] - unreadable} of "
            f"{boxes['boxes_in_file']} evaluated"
            + (f", {sum(dropped.values())} not ({why})" if dropped else ""))
