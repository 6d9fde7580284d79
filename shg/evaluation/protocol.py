"""The COCO top-down post-processing that published keypoint numbers use (HRNet, mmpose):
instance rescoring, then OKS-NMS over each image's predicted poses.

Instance score = box score x the mean of the keypoint confidences above `keypoint_threshold`
(0 when none is). OKS-NMS keeps, image by image, the highest-scored pose and drops every other
pose whose object keypoint similarity with it exceeds `oks_nms`, using the keypoint schema's
per-joint sigmas (COCO's for COCO person) and each pose's crop square as its area, whatever the
data's OKS scale for COCO AP (mmpose's CocoMetric does the same for COCO, CrowdPose and AI
Challenger: its NMS areas are the crop boxes', `use_area` only changes COCOeval; the rescoring
has no OKS term). Both apply whichever boxes the poses came from (ground truth: box score 1),
so a detections file that holds just the ground-truth boxes gives the ground-truth-box numbers
exactly (tested).

The OKS scale of COCO AP (`oks_scale`, `shg eval --protocol`) follows the data's published
protocol: coco.py applies it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from shards.schema import OKS_PROTOCOLS


@dataclass
class Protocol:
    """How predicted poses become COCO results (each default is the published one, except
    `enlarge`: the model's own crops, the thesis's 1.1 by default)."""

    box_score_threshold: float = 0.0
    """Detected boxes scored below this are not evaluated (counted as dropped)."""
    oks_nms: float | None = 0.9
    """OKS-NMS threshold over each image's poses; None switches it off."""
    keypoint_threshold: float = 0.2
    """Rescoring: mean of the keypoint confidences above this, times the box score."""
    flip: bool = True
    """Flip test: average with the horizontally flipped crop's heatmaps."""
    flip_shift: bool = False
    """Shift the flipped heatmaps one cell right before averaging, as HRNet and mmpose do.
    Off by default: with this toolkit's cell convention (cell j covers crop pixels
    [4j, 4j + 4)) mirroring the heatmap is exact and the shift would move every joint."""
    enlarge: float | None = None
    """Crop square = longer box side x this (the thesis: 1.1; mmpose pads 1.25). None: the
    crops the model was trained on (its metadata; 1.1 when unknown). With ground-truth boxes
    it is fixed by the shards."""
    oks_scale: str | None = None
    """COCO AP's OKS scale (`--protocol`, OKS_PROTOCOLS): "area" (each annotation's: COCO's
    protocol), "bbox" (0.53 x box width x height: CrowdPose's, AI Challenger's) or "auto"
    (area where the annotation has one, else bbox). None: the keypoint schema's setting
    (a schema file's `protocol`), else auto."""

    def __post_init__(self) -> None:
        if self.oks_scale is not None and self.oks_scale not in OKS_PROTOCOLS:
            raise ValueError(f"protocol {self.oks_scale!r} is not one of "
                             f"{', '.join(OKS_PROTOCOLS)}")
        if self.oks_nms is not None and not 0 < self.oks_nms <= 1:
            raise ValueError(f"oks_nms must be in (0, 1] or none, not {self.oks_nms}")
        if not 0 <= self.keypoint_threshold < 1:
            raise ValueError(f"keypoint_threshold must be in [0, 1), not "
                             f"{self.keypoint_threshold}")
        if self.enlarge is not None and self.enlarge < 1:
            raise ValueError(f"enlarge must be >= 1 (the crop holds the box), not {self.enlarge}")

    def as_dict(self) -> dict:
        return asdict(self)


def rescore(box_score: float, confidences: np.ndarray, threshold: float) -> float:
    """box score x mean of the confidences above `threshold` (0 when none is)."""
    conf = np.asarray(confidences, dtype=np.float64)
    above = conf[conf > threshold]
    return float(box_score * above.mean()) if above.size else 0.0


def oks_matrix(points: np.ndarray, areas: np.ndarray, sigmas: np.ndarray) -> np.ndarray:
    """(N, N) object keypoint similarity between N poses (N, K, 2) of the same image, the
    area term being the mean of the two poses' areas (as mmpose's oks_iou)."""
    d2 = ((points[:, None] - points[None, :]) ** 2).sum(-1)  # (N, N, K)
    scale = (areas[:, None] + areas[None, :]) / 2 + np.spacing(1)
    e = d2 / ((2 * sigmas) ** 2)[None, None, :] / scale[..., None] / 2
    return np.exp(-e).mean(-1)


def oks_nms(points: np.ndarray, scores: np.ndarray, areas: np.ndarray, threshold: float,
            sigmas) -> list[int]:
    """Indices of the poses kept, best score first: greedily keep the best remaining pose and
    drop those with OKS > threshold to it (`sigmas`: the schema's, per joint)."""
    if len(scores) == 0:
        return []
    sigmas = np.asarray(sigmas, dtype=np.float64)
    oks = oks_matrix(np.asarray(points, np.float64), np.asarray(areas, np.float64), sigmas)
    order = list(np.argsort(-np.asarray(scores), kind="stable"))
    keep = []
    while order:
        best, order = order[0], order[1:]
        keep.append(int(best))
        order = [j for j in order if oks[best, j] <= threshold]
    return keep


def apply(rows: list[dict], protocol: Protocol, schema, with_box: bool = False
          ) -> tuple[list[dict], dict]:
    """COCO keypoint results of the rows (in their order) after rescoring and OKS-NMS with the
    keypoint schema's sigmas (no NMS when it has none: said in the counts), and the counts.
    `with_box` adds each result's person box as "bbox" (COCOeval recomputes it anyway)."""
    scores = [rescore(r.get("box_score", 1.0), r["conf"], protocol.keypoint_threshold)
              for r in rows]
    by_image: dict[int, list[int]] = {}
    for i, r in enumerate(rows):
        by_image.setdefault(int(r["image_id"]), []).append(i)
    kept = set(range(len(rows)))
    sigmas = schema.sigmas
    notes = {}
    if protocol.oks_nms is not None and sigmas is None:
        notes["oks_nms"] = "not applied: the keypoint schema has no OKS sigmas"
    elif protocol.oks_nms is not None:
        for group in by_image.values():
            if len(group) > 1:
                areas = np.array([(rows[i]["affine"][0][0] * rows[i]["crop_size"]) ** 2
                                  for i in group])
                points = np.stack([rows[i]["pred_image"] for i in group])
                keep = oks_nms(points, np.array([scores[i] for i in group]), areas,
                               protocol.oks_nms, sigmas)
                kept -= {group[j] for j in range(len(group)) if j not in keep}
    results = []
    for i, r in enumerate(rows):
        if i in kept:
            kps = np.concatenate([r["pred_image"], r["conf"][:, None]], 1)
            results.append({"image_id": int(r["image_id"]),
                            "category_id": int(r.get("category_id", 1)),
                            "keypoints": [round(float(v), 3) for v in kps.ravel()],
                            "score": round(scores[i], 6)})
            if with_box:
                results[-1]["bbox"] = [round(float(v), 2) for v in r["bbox"]]
    return results, {"poses": len(rows), "suppressed_by_oks_nms": len(rows) - len(kept),
                     "results": len(results), **notes}


def oks_scale_choice(protocol: Protocol | None, schema=None) -> tuple[str, str]:
    """(the OKS scale of COCO AP, who chose it): --protocol, else the keypoint schema's
    `protocol` (a schema file), else auto."""
    if protocol is not None and protocol.oks_scale is not None:
        return protocol.oks_scale, "--protocol"
    chosen = getattr(schema, "protocol", "auto")
    if chosen != "auto":
        return chosen, f"the keypoint schema ({schema.source})"
    return "auto", "default"


THESIS_ENLARGE = 1.10


def resolved_enlarge(protocol: Protocol, meta: dict | None) -> float:
    """The crop enlargement to cut boxes with: the option, else the model's training crops'."""
    if protocol.enlarge is not None:
        return protocol.enlarge
    return float((meta or {}).get("crop_enlarge", THESIS_ENLARGE))
