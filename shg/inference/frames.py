"""What goes through the predictor: `Persons` (where an image's person boxes come from) and
`Frame` (one image or video frame on its way: its pixels, its boxes once known, its crops once
cut, and in the end its persons).

A frame's `record()` is its line of the results stream (results.jsonl, see shg/inference/stream.py):

    {"image_id": 785, "file": "photos/000000000785.jpg", "width": 640, "height": 425,
     "persons": [{"image_id": 785, "category_id": 1, "keypoints": [x, y, score, ...],
                  "score": 0.87, "bbox": [x, y, w, h]}],
     "detections": [{"bbox": [x, y, w, h], "score": 0.99}]}          # when the detector ran
    {"frame": 12, "image_id": 12, "time": 0.48, "persons": [{..., "track_id": 3, "frame": 12}]}

Each person is a COCO keypoint result (the keypoints in image pixels, the score rescored by the
COCO protocol), so results.json is every line's persons in order. An image that could not be
read has "skipped": {"reason", "message"}; a video frame that could not be decoded has
"undecodable": true.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from shards.detections import Detection, Detections, parse_detections

from ..errors import UserError


def parse_bbox(text: str) -> tuple[float, float, float, float]:
    try:
        x, y, w, h = (float(v) for v in text.split(","))
    except ValueError:
        raise UserError(f"--bbox must be x,y,w,h (four numbers), not {text!r}") from None
    if not (w > 0 and h > 0):
        raise UserError(f"--bbox width and height must be > 0, got {text!r}")
    return x, y, w, h


@dataclass
class Persons:
    """Where the persons of an image come from, in this order of precedence: the boxes of a
    detection-results file (by image id), one box for every image, the whole image, or else
    (all unset) the person detector."""

    by_image: dict[int, list[Detection]] | None = None
    bbox: tuple[float, float, float, float] | None = None
    whole_image: bool = False
    category: int = 1
    """The category id of --bbox and whole-image boxes (the keypoint schema's first)."""
    boxes_file: Detections | None = None
    """What the boxes file held: its name, the boxes kept, those dropped by reason."""

    @classmethod
    def from_file(cls, path: str | Path, score_threshold: float = 0.0,
                  categories=(1,)) -> Persons:
        """The boxes of a COCO detection-results file, grouped by image id (checked against
        each image's size when it is read)."""
        from shards.manifest import read_json_file

        entries, _ = read_json_file(Path(path), "boxes file")
        found = parse_detections(entries, str(path), None, score_threshold, categories)
        by_image: dict[int, list[Detection]] = {}
        for det in found.boxes:
            by_image.setdefault(det.image_id, []).append(det)
        return cls(by_image=by_image, boxes_file=found)

    @property
    def source(self) -> str:
        """boxes | bbox | whole image | detector"""
        if self.by_image is not None:
            return "boxes"
        if self.bbox is not None:
            return "bbox"
        return "whole image" if self.whole_image else "detector"

    @property
    def detector(self) -> bool:
        return self.source == "detector"

    def boxes(self, image_id: int, width: int, height: int) -> list[Detection] | None:
        """The image's boxes, or None when the detector is to find them."""
        if self.by_image is not None:
            return list(self.by_image.get(image_id, []))
        if self.bbox is not None or self.whole_image:
            box = self.bbox or (0.0, 0.0, float(width), float(height))
            return [Detection(image_id, image_id, box, 1.0, self.category)]
        return None


@dataclass
class Frame:
    """One image or video frame through the predictor (pixels are dropped once drawn and
    written, so a run holds only the frames in flight)."""

    image_id: int
    source: str
    """The image file, or the video's (camera's) name."""
    width: int = 0
    height: int = 0
    pixels: object = None
    """(H, W, 3) uint8 RGB (a numpy array), when decoded and kept."""
    boxes: list[Detection] | None = None
    """The persons' boxes, once known (None: for the detector to find)."""
    samples: list[dict] | None = None
    """Their crops, once cut."""
    frame: int | None = None
    """The video frame index (None for images)."""
    time: float | None = None
    """Seconds from the video's start."""
    skipped: tuple[str, str] | None = None
    """(reason, message) when the image or frame could not be read."""
    lost_boxes: int = 0
    """Boxes of a skipped image that were not predicted."""
    dropped: dict = field(default_factory=dict)
    """Boxes of a boxes file not used for this image: reason -> (count, first message)."""
    detections: list[dict] | None = None
    """The detector's boxes ({"bbox", "score"}) when it ran on this frame."""
    persons: list[dict] | None = None
    """Every person found: COCO keypoint results (+ "track_id" and "frame" in videos)."""
    poses: int = 0
    """Poses predicted before OKS-NMS (persons + those it suppressed)."""

    def record(self) -> dict:
        """The frame's line of results.jsonl."""
        if self.frame is not None:
            line = {"frame": self.frame, "image_id": self.image_id,
                    "time": None if self.time is None else round(self.time, 4)}
            if self.skipped:
                line["undecodable"] = True
        else:
            line = {"image_id": self.image_id, "file": self.source, "width": self.width,
                    "height": self.height}
            if self.skipped:
                line["skipped"] = {"reason": self.skipped[0], "message": self.skipped[1]}
        line["persons"] = self.persons or []
        if self.detections is not None:
            line["detections"] = self.detections
        return line
