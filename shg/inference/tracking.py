"""Person identity across video frames and temporal smoothing of their keypoints.

`IoUTracker` gives each pose a `track_id`: the poses of a frame are matched to the tracks alive
(seen within `max_age` frames) by the IoU of their boxes, one to one at the largest total IoU
(Hungarian assignment, scipy), a pair below `min_iou` never matched; an unmatched pose starts a
new track. `OneEuro` is the One-Euro filter (Casiez, Roussel & Vogel, CHI 2012): a low-pass
filter whose cutoff rises with the speed, so a still joint stops jittering and a moving one
does not lag; one per track, over all its joints' x and y at once. `PoseTracks` applies both
to a video's poses, frame by frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box of `a` (N, 4) with every box of `b` (M, 4), boxes as x, y, w, h."""
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    ax0, ay0, ax1, ay1 = a[:, 0:1], a[:, 1:2], a[:, 0:1] + a[:, 2:3], a[:, 1:2] + a[:, 3:4]
    bx0, by0, bx1, by1 = b[:, 0], b[:, 1], b[:, 0] + b[:, 2], b[:, 1] + b[:, 3]
    iw = np.clip(np.minimum(ax1, bx1) - np.maximum(ax0, bx0), 0, None)
    ih = np.clip(np.minimum(ay1, by1) - np.maximum(ay0, by0), 0, None)
    inter = iw * ih
    union = a[:, 2:3] * a[:, 3:4] + (b[:, 2] * b[:, 3])[None] - inter
    return np.where(union > 0, inter / np.maximum(union, 1e-12), 0.0)


@dataclass
class _Track:
    track_id: int
    box: np.ndarray
    last_frame: int
    smoother: OneEuro | None = None


@dataclass
class IoUTracker:
    min_iou: float = 0.3
    max_age: int = 30
    """Frames a track may go unseen and still be matched."""
    tracks: list = field(default_factory=list)
    next_id: int = 1

    def update(self, frame: int, boxes: list) -> list[int]:
        """Track ids for the boxes (x, y, w, h) of `frame`, in their order."""
        from scipy.optimize import linear_sum_assignment

        self.tracks = [t for t in self.tracks if frame - t.last_frame <= self.max_age]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        ids = [0] * len(boxes)
        iou = iou_matrix(boxes, np.stack([t.box for t in self.tracks])
                         if self.tracks else np.zeros((0, 4)))
        matched = set()
        if iou.size:
            for i, j in zip(*linear_sum_assignment(-iou)):
                if iou[i, j] >= self.min_iou:
                    track = self.tracks[j]
                    track.box, track.last_frame = boxes[i], frame
                    ids[i] = track.track_id
                    matched.add(i)
        for i in range(len(boxes)):
            if i not in matched:
                self.tracks.append(_Track(self.next_id, boxes[i], frame))
                ids[i] = self.next_id
                self.next_id += 1
        return ids

    def track(self, track_id: int) -> _Track:
        return next(t for t in self.tracks if t.track_id == track_id)


class OneEuro:
    """x_hat = a x + (1 - a) x_hat_prev with the cutoff min_cutoff + beta |dx/dt| (Hz)."""

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.01, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.x = self.dx = self.t = None

    @staticmethod
    def _alpha(cutoff, dt: float):
        tau = 1.0 / (2 * math.pi * cutoff)
        return 1.0 / (1.0 + tau / dt)

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if self.x is None or t <= self.t:
            self.x, self.dx, self.t = x.copy(), np.zeros_like(x), t
            return x.copy()
        dt = t - self.t
        dx = (x - self.x) / dt
        a_d = self._alpha(self.d_cutoff, dt)
        self.dx = a_d * dx + (1 - a_d) * self.dx
        a = self._alpha(self.min_cutoff + self.beta * np.abs(self.dx), dt)
        self.x = a * x + (1 - a) * self.x
        self.t = t
        return self.x.copy()


class PoseTracks:
    """A video's poses given track ids, frame by frame, and with `smooth` = (min_cutoff, beta)
    their keypoints One-Euro filtered per track (the filter lives with its track, so it goes
    when the tracker drops the track: memory stays bounded on endless streams)."""

    def __init__(self, fps: float, smooth: tuple[float, float] | None = None,
                 tracker: IoUTracker | None = None):
        self.fps, self.smooth = fps, smooth
        self.tracker = tracker or IoUTracker()

    @property
    def started(self) -> int:
        """Tracks started so far."""
        return self.tracker.next_id - 1

    def update(self, frame: int, persons: list[dict]) -> None:
        """Set each person's "track_id" (COCO results of `frame`, with "bbox") and, smoothing,
        replace its keypoints' x and y by the filtered ones (scores are kept)."""
        ids = self.tracker.update(frame, [p["bbox"] for p in persons])
        for person, track_id in zip(persons, ids):
            person["track_id"] = track_id
            if self.smooth is None:
                continue
            track = self.tracker.track(track_id)
            if track.smoother is None:
                track.smoother = OneEuro(*self.smooth)
            kps = np.asarray(person["keypoints"], dtype=np.float64).reshape(-1, 3)
            kps[:, :2] = track.smoother(kps[:, :2], frame / self.fps)
            person["keypoints"] = [round(float(v), 3) for v in kps.ravel()]
