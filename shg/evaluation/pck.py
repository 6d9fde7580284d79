"""PCK and friends.

`pck(pred, gt, visible, norm, thresholds)`: a joint counts as correct when its distance is
strictly below threshold x norm of its instance. Invisible joints and instances with norm <= 0
are left out. Normalisations (each returns the per-instance `norm`):

- constant: the thesis's fixed length, one tenth of the crop side: 25.6 px in a 256 crop
  (= 6.4 cells of the 64x64 heatmap). A fixed length suits the thesis's crops, which all show the
  person at the same scale (the bbox fills ~91 % of the crop side), so a constant in crop pixels
  is a constant fraction of the person; PCK@0.5 then means "within 12.8 crop px (3.2 cells)".
- bbox: max(w, h) of the person box (in the same pixels as the predictions).
- torso: shoulder-hip distance (the longer of the two diagonals; falls back to one side, then to
  NaN -> left out, when the joints are missing); only for schemas that name shoulders and hips.
- head (PCKh, MPII's convention): 0.6 x the diagonal of the person's head box.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

CONSTANT_FRACTION = 0.1


@dataclass
class PCKResult:
    thresholds: np.ndarray   # (T,)
    per_joint: np.ndarray    # (T, K), NaN where a joint has no valid instance
    mean: np.ndarray         # (T,) macro: mean over joints with any valid instance
    micro: np.ndarray        # (T,) over all valid joint instances
    count: np.ndarray        # (K,) valid instances per joint

    def at(self, threshold: float) -> float:
        i = int(np.argmin(np.abs(self.thresholds - threshold)))
        return float(self.mean[i])


def pck(pred, gt, visible, norm, thresholds) -> PCKResult:
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    visible = np.asarray(visible, dtype=bool)
    norm = np.asarray(norm, dtype=np.float64)
    thr = np.atleast_1d(np.asarray(thresholds, dtype=np.float64))
    valid = visible & (np.nan_to_num(norm, nan=0.0) > 0)[:, None]           # (N, K)
    dist = np.linalg.norm(pred - gt, axis=-1)                                # (N, K)
    safe_norm = np.where(norm > 0, norm, 1.0)[:, None]
    correct = dist[None] < thr[:, None, None] * safe_norm[None]              # (T, N, K)
    correct &= valid[None]
    count = valid.sum(0)                                                     # (K,)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_joint = correct.sum(1) / np.where(count > 0, count, np.nan)      # (T, K)
        total = valid.sum()
        micro = correct.sum((1, 2)) / total if total else np.full(len(thr), np.nan)
    has = count > 0
    mean = per_joint[:, has].mean(1) if has.any() else np.full(len(thr), np.nan)
    return PCKResult(thr, per_joint, mean, micro, count)


def constant_norm(n: int, crop_size=256.0) -> np.ndarray:
    """CONSTANT_FRACTION x the crop side, per instance (`crop_size`: one side or one per
    instance)."""
    return np.broadcast_to(CONSTANT_FRACTION * np.asarray(crop_size, dtype=np.float64),
                           (n,)).copy()


def bbox_norm(boxes_wh) -> np.ndarray:
    boxes_wh = np.asarray(boxes_wh, dtype=np.float64)
    return boxes_wh.max(-1)


def torso_norm(gt, visible, joints: tuple[int, int, int, int]) -> np.ndarray:
    """`joints`: the schema's (left shoulder, right shoulder, left hip, right hip)."""
    gt = np.asarray(gt, dtype=np.float64)
    visible = np.asarray(visible, dtype=bool)
    out = np.full(len(gt), np.nan)
    ls, rs, lh, rh = joints
    pairs = ((ls, rh), (rs, lh), (ls, lh), (rs, rh))
    for i in range(len(gt)):
        lengths = [np.linalg.norm(gt[i, a] - gt[i, b]) for a, b in pairs[:2]
                   if visible[i, a] and visible[i, b]]
        if not lengths:  # fall back to a side of the torso
            lengths = [np.linalg.norm(gt[i, a] - gt[i, b]) for a, b in pairs[2:]
                       if visible[i, a] and visible[i, b]]
        if lengths:
            out[i] = max(lengths)
    return out


HEAD_FRACTION = 0.6
"""MPII's head size: 0.6 x the diagonal of the head box."""


def head_norm(head_boxes) -> np.ndarray:
    """PCKh's per-instance norm from [x1, y1, x2, y2] head boxes (None: no head box, left
    out). COCO has none, so `shg eval` reports PCKh unavailable for COCO."""
    out = np.full(len(head_boxes), np.nan)
    for i, box in enumerate(head_boxes):
        if box:
            x1, y1, x2, y2 = (float(v) for v in box)
            out[i] = HEAD_FRACTION * np.hypot(x2 - x1, y2 - y1)
    return out


def pck_curve(pred, gt, visible, norm, upto: float = 0.5, points: int = 51
              ) -> tuple[np.ndarray, np.ndarray, float]:
    """PCK (macro mean) at evenly spaced thresholds in [0, upto] and its normalised area
    (AUC in [0, 1]: 1 means every joint exact)."""
    thresholds = np.linspace(0.0, upto, points)
    curve = pck(pred, gt, visible, norm, thresholds).mean
    auc = float(np.trapezoid(curve, thresholds) / upto) if np.isfinite(curve).all() else float("nan")
    return thresholds, curve, auc


def epe(pred, gt, visible) -> float:
    """End-point error: mean distance over visible joints (in the inputs' pixels)."""
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    visible = np.asarray(visible, dtype=bool)
    if not visible.any():
        return float("nan")
    return float(np.linalg.norm(pred - gt, axis=-1)[visible].mean())
