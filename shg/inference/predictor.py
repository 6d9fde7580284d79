"""`Predictor`: the one way to predict poses. Built once from a weights file (model, keypoint
schema, crop parameters, device, batch size, flip test, the COCO protocol, and a person
detector loaded when first needed), it takes images, folders, videos and cameras through the
same steps:

    read (images.py, video.py) -> find persons (boxes given, or the detector) -> cut crops
    (shards/detections.py, the training crop code) -> pose (the evaluation core's decoding, in
    full batches) -> the COCO protocol per image (rescoring, OKS-NMS) -> [track, smooth]

and yields each image or frame (`Frame`, frames.py) with its persons as soon as it is done, in
input order. Nothing is kept after a frame is yielded: memory stays flat however many images or
frames go through. Drawing and writing are the caller's (draw.py, stream.py, command.py).
"""

from __future__ import annotations

from collections import deque
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from shards.schema import stored

from .detector import DetectorOptions
from .frames import Frame, Persons, parse_bbox


class Predictor:
    """A pose model ready to predict (see the module docstring).

        predictor = Predictor.from_weights("model.safetensors")
        frame = predictor.predict_image("photo.jpg")      # frame.persons: COCO results
    """

    def __init__(self, model, meta: dict, *, device: str | torch.device | None = None,
                 batch_size: int = 16, flip: bool = True, protocol=None,
                 detector: DetectorOptions | None = None, workers: int = 2,
                 frames_per_batch: int = 8):
        from shards.crop import CropParams

        from ..evaluation import protocol as post

        self.protocol = protocol or post.Protocol(flip=flip)
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.meta, self.schema = meta, stored(meta)
        self.params = CropParams(size=int(meta.get("crop_size", 256)),
                                 enlarge=post.resolved_enlarge(self.protocol, meta))
        self.mean = meta.get("mean_rgb", [0.0, 0.0, 0.0])
        self.sigma = float(meta.get("sigma", 1.0))
        self.batch_size, self.workers = batch_size, workers
        self.frames_per_batch = frames_per_batch
        """Frames the detector sees at once (and, in videos, predicted together)."""
        self.detector_options = detector or DetectorOptions()
        self._detector = None
        self._box_index = 0
        if batch_size < 1 or frames_per_batch < 1 or workers < 0:
            from ..errors import UserError

            raise UserError("the batch size and frames per batch must be >= 1, workers >= 0")

    @classmethod
    def from_weights(cls, weights: str | Path, **options) -> Predictor:
        """A predictor of a weights file (`shg export`'s .safetensors) or a run directory;
        `options` as the constructor's (device, batch_size, flip, protocol, detector,
        workers, frames_per_batch)."""
        from ..weights import load_model

        model, meta, _ = load_model(weights)
        return cls(model, meta, **options)

    @property
    def category(self) -> int:
        return (self.schema.categories or (1,))[0]

    # ------------------------------------------------------------------ inputs
    def persons(self, boxes: str | Path | None = None, bbox=None,
                whole_image: bool = False) -> Persons:
        """Where persons come from: a boxes file, one box (x, y, w, h or "x,y,w,h"), the whole
        image, or else the person detector."""
        from ..errors import UserError

        if sum(map(bool, (boxes, bbox, whole_image))) > 1:
            raise UserError("--boxes, --bbox and --whole-image exclude each other")
        if boxes:
            return Persons.from_file(boxes, self.protocol.box_score_threshold,
                                     self.schema.categories or (1,))
        if bbox:
            box = parse_bbox(bbox) if isinstance(bbox, str) else tuple(map(float, bbox))
            return Persons(bbox=box, category=self.category)
        return Persons(whole_image=whole_image, category=self.category)

    def predict_image(self, image, *, bbox=None, whole_image: bool = False,
                      keep_pixels: bool = False) -> Frame:
        """One image (a file, or an (H, W, 3) uint8 RGB array) -> its Frame (.persons)."""
        from ..errors import UserError

        persons = self.persons(bbox=bbox, whole_image=whole_image)
        if isinstance(image, (str, Path)):
            (frame,) = self.predict_folder([str(image)], persons, keep_pixels=keep_pixels,
                                           workers=0)
            if frame.skipped:
                raise UserError(frame.skipped[1])
            return frame
        pixels = np.asarray(image)
        if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8:
            raise UserError(f"an image array must be (H, W, 3) uint8 RGB, not {pixels.shape} "
                            f"{pixels.dtype}")
        self._check_detector(persons)
        frame = Frame(0, "array", pixels.shape[1], pixels.shape[0], pixels=pixels,
                      boxes=persons.boxes(0, pixels.shape[1], pixels.shape[0]))
        return next(iter(self.predict_frames([frame], keep_pixels=keep_pixels)))

    def predict_folder(self, inputs, persons: Persons | None = None, *, boxes=None, bbox=None,
                       whole_image: bool = False, keep_pixels: bool = False,
                       workers: int | None = None) -> Iterator[Frame]:
        """The images of a folder (or an image file, or a list of files) -> their Frames, in
        file order, each decoded once in `workers` loader processes (the predictor's by
        default). Persons from `persons`, else from boxes/bbox/whole_image (`persons()`).
        `keep_pixels`: each frame keeps its decoded image (to draw on)."""
        from .images import ImageFiles, image_files, image_ids, load

        files = image_files(inputs) if isinstance(inputs, (str, Path)) else list(map(str, inputs))
        persons = persons or self.persons(boxes, bbox, whole_image)
        ids = image_ids(files, coco_ids=persons.by_image is not None)
        self._check_detector(persons)
        dataset = ImageFiles(files, ids, persons, self.params, self.schema.num_joints,
                             keep_pixels)
        return self.predict_frames(load(dataset, self.workers if workers is None else workers),
                                   keep_pixels=keep_pixels)

    def predict_video(self, video, *, bbox=None, whole_image: bool = False,
                      max_frames: int | None = None, track: bool = True,
                      smooth: tuple[float, float] | None = None,
                      keep_pixels: bool = True) -> Iterator[Frame]:
        """Every frame of a video file (a path) or of a `VideoSource` (a camera: VideoSource(0,
        camera=True)) -> its Frame, in order, each person with "frame" and, with `track`, a
        "track_id"; `smooth` = (min_cutoff Hz, beta) One-Euro filters each track's keypoints.
        `keep_pixels`: the frames keep their pixels (to draw on)."""
        from .tracking import PoseTracks
        from .video import VideoSource

        if not isinstance(video, VideoSource):
            video = VideoSource(str(video), max_frames=max_frames)
        persons = self.persons(bbox=bbox, whole_image=whole_image)
        self._check_detector(persons)
        tracks = PoseTracks(video.fps, smooth) if track else None
        # a video's persons are finished chunk by chunk: a camera's show up without waiting
        # for a full batch
        return self._tracked(self.predict_frames(video.frames(persons), flush_chunks=True,
                                                 keep_pixels=keep_pixels), tracks)

    @staticmethod
    def _tracked(frames: Iterator[Frame], tracks) -> Iterator[Frame]:
        for frame in frames:
            for person in frame.persons:
                person["frame"] = frame.frame
            if tracks is not None:
                tracks.update(frame.frame, frame.persons)
            yield frame

    # ------------------------------------------------------------------ the steps
    def predict_frames(self, frames: Iterable[Frame], flush_chunks: bool = False,
                       keep_pixels: bool = True) -> Iterator[Frame]:
        """Frames (pixels or crops, boxes or none) -> the same frames with their persons, in
        order. A chunk of `frames_per_batch` frames goes to the detector at once; crops go to
        the model in full batches across frames (`flush_chunks`: the chunk's last batch
        too). Without `keep_pixels` a frame's pixels go once its crops are cut."""
        poses = _PoseQueue(self._pose_rows, self.batch_size)
        for chunk in _chunks(frames, self.frames_per_batch):
            self._find_persons(chunk)
            for frame in chunk:
                self._cut(frame)
                if not keep_pixels:
                    frame.pixels = None
                yield from map(self._finish, poses.add(frame))
            if flush_chunks:
                yield from map(self._finish, poses.flush())
        yield from map(self._finish, poses.flush())

    def _check_detector(self, persons: Persons) -> None:
        """The detector, loaded now when `persons` need it (its errors before any work)."""
        if persons.detector:
            self.detector  # noqa: B018

    @property
    def detector(self):
        """The person detector (loaded on first use, on the predictor's device)."""
        if self._detector is None:
            from .detector import PersonDetector, check_detector_category

            check_detector_category(self.schema.categories or (1,))
            self._detector = PersonDetector(self.detector_options, self.device)
        return self._detector

    def _find_persons(self, chunk: list[Frame]) -> None:
        """The detector's boxes for the frames that need them, rounded as detections.json
        holds them (so `shg eval --boxes detections.json` evaluates the same boxes)."""
        from shards.detections import Detection

        from .detector import detection_results

        todo = [f for f in chunk if f.boxes is None and f.pixels is not None]
        if not todo:
            return
        found = self.detector([f.pixels for f in todo])
        for frame, entries in zip(todo, found):
            frame.detections = [{"bbox": e["bbox"], "score": e["score"]}
                                for e in detection_results([frame.image_id], [entries])]
            frame.boxes = []
            for det in frame.detections:
                if det["bbox"][2] > 0 and det["bbox"][3] > 0:  # not rounded away
                    frame.boxes.append(Detection(self._box_index, frame.image_id,
                                                 tuple(det["bbox"]), det["score"], 1))
                    self._box_index += 1

    def _cut(self, frame: Frame) -> None:
        from PIL import Image

        from shards.detections import crops_of_image

        if frame.samples is None:
            frame.samples = crops_of_image(Image.fromarray(frame.pixels), frame.boxes,
                                           self.params, self.schema.num_joints) \
                if frame.boxes and frame.pixels is not None else []

    def _pose_rows(self, samples: list[dict]) -> list[dict]:
        from shards.detections import crop_batch

        from ..evaluation.core import predict_rows

        return list(predict_rows(self.model, [crop_batch(samples, self.mean)],
                                 schema=self.schema, sigma=self.sigma,
                                 flip=self.protocol.flip, flip_shift=self.protocol.flip_shift,
                                 device=self.device))

    def _finish(self, done: tuple[Frame, list[dict]]) -> Frame:
        """A frame whose crops are all predicted: its persons by the COCO protocol."""
        from ..evaluation import protocol as post

        frame, rows = done
        frame.persons, counts = post.apply(rows, self.protocol, self.schema, with_box=True)
        frame.poses = counts["poses"]
        frame.samples = None
        return frame


class _PoseQueue:
    """Crops of frames in arrival order, run through the model in full batches; a frame leaves
    with its rows once all its crops are predicted, frames in arrival order."""

    def __init__(self, run, batch_size: int):
        self.run, self.batch_size = run, batch_size
        self.frames: deque = deque()  # [frame, crops still to predict, rows]
        self.samples: list[dict] = []

    def add(self, frame: Frame) -> Iterator[tuple[Frame, list[dict]]]:
        self.frames.append([frame, len(frame.samples), []])
        self.samples.extend(frame.samples)
        frame.samples = []
        while len(self.samples) >= self.batch_size:
            self._predict(self.batch_size)
        yield from self._done()

    def flush(self) -> Iterator[tuple[Frame, list[dict]]]:
        while self.samples:
            self._predict(self.batch_size)
        yield from self._done()

    def _predict(self, n: int) -> None:
        batch, self.samples = self.samples[:n], self.samples[n:]
        rows = iter(self.run(batch))
        left = len(batch)
        for entry in self.frames:
            take = min(entry[1], left)
            entry[2].extend(next(rows) for _ in range(take))
            entry[1] -= take
            left -= take
            if not left:
                break

    def _done(self) -> Iterator[tuple[Frame, list[dict]]]:
        while self.frames and self.frames[0][1] == 0:
            frame, _, rows = self.frames.popleft()
            yield frame, rows


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    chunk = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk
