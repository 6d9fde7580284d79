"""`shg predict`: every person of an image, a folder of images, a video file or a camera ->
keypoints, streamed to a results file as they come, drawn, and one COCO results JSON at the end.

    shg predict --model model.safetensors photo.jpg --out pose.png          # persons detected
    shg predict --model model.safetensors FOLDER --boxes DETS.json --out OUT/ [--no-draw]
    shg predict --model model.safetensors clip.mp4 --out OUT/ [--smooth]
    shg predict --model model.safetensors --camera 0 --max-frames 300 --out cam.mp4

Everything goes through one `Predictor` (predictor.py). With --out, each image or frame is
written as soon as it is predicted: its line of OUT/results.jsonl (flushed: a killed run keeps
every line written), its drawing (OUT/<name>.png, or a frame of the drawn video; --no-draw
leaves them out). At the end results.json (COCO keypoint results) and, with the detector,
detections.json (its boxes, for `shg eval --boxes`) are assembled from the stream
(stream.py). One image with --out pose.png writes pose.png, pose.jsonl and pose.json; one video
with --out clip.mp4 writes clip.mp4, clip.jsonl and clip.json. A run's memory does not grow
with the number of images or frames: the summary holds counts, not results.

Persons are, in this order of precedence, the boxes of a detection-results file (COCO format;
images named by their COCO id, e.g. 000000000785.jpg), one --bbox, the whole image
(--whole-image), or else a person detector's (detector.py). They are cut exactly as in training
and evaluation and scored and de-duplicated by the COCO protocol (evaluation/protocol.py: box
score x mean keypoint confidence, OKS-NMS), image by image.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from ..evaluation.protocol import Protocol
from .detector import DetectorOptions

log = logging.getLogger(__name__)

DRAWN_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclass
class PredictOptions:
    model: str
    inputs: str | None
    """An image file, a folder of images or a video file (None with `camera`)."""
    out: str | None = None
    """A folder (drawn images or video, results.jsonl, results.json), or with one image or
    video a drawn file name (.png/.jpg, or .mp4/.avi/...; the results beside it, named after
    it)."""
    boxes: str | None = None
    bbox: str | None = None
    whole_image: bool = False
    """Each image (frame) is one person: no detector."""
    detector: DetectorOptions = field(default_factory=DetectorOptions)
    protocol: Protocol = field(default_factory=Protocol)
    batch_size: int = 16
    num_workers: int = 2
    """Processes decoding images (and cutting their crops); 0: the main process."""
    min_score: float = 0.05
    """Joints drawn when their confidence is at least this."""
    progress: bool = True
    camera: str | None = None
    """A camera index (0, 1, ...) or a stream URL, read like a video."""
    max_frames: int | None = None
    frames_per_batch: int = 8
    """Images or video frames the detector sees at once."""
    track: bool = True
    """Video: a track_id per person, by IoU of boxes across frames."""
    smooth: bool = False
    """Video: One-Euro filtering of every track's keypoints."""
    smooth_min_cutoff: float = 1.0
    smooth_beta: float = 0.01
    draw: bool = True
    """With --out: the drawn images or video too (False: the results alone)."""

    def __post_init__(self):
        if sum(map(bool, (self.boxes, self.bbox, self.whole_image))) > 1:
            raise UserError("--boxes, --bbox and --whole-image exclude each other")
        if (self.inputs is None) == (self.camera is None):
            raise UserError("give an image, folder or video, or --camera, not both")
        if self.max_frames is not None and self.max_frames < 1:
            raise UserError(f"--max-frames must be >= 1, got {self.max_frames}")
        if self.smooth_min_cutoff <= 0 or self.smooth_beta < 0:
            raise UserError("--smooth-min-cutoff must be > 0 and --smooth-beta >= 0")
        if self.num_workers < 0:
            raise UserError(f"--workers must be >= 0, got {self.num_workers}")

    @property
    def persons_from(self) -> str:
        """Where the person boxes come from: boxes | bbox | whole image | detector."""
        if self.boxes:
            return "boxes"
        if self.bbox:
            return "bbox"
        return "whole image" if self.whole_image else "detector"


@dataclass
class Outputs:
    """Where a run writes (with --out)."""
    folder: Path
    stream: Path
    """results.jsonl: one line per image or frame, as they are done."""
    results: Path
    """results.json: COCO keypoint results, assembled from the stream at the end."""
    detections: Path
    drawn: Path | None = None
    """One image's drawing, or the drawn video (None: OUT/<image name>.png for each image)."""

    @classmethod
    def of_images(cls, out: str, count: int) -> Outputs:
        out = Path(out)
        if count == 1 and out.suffix.lower() in DRAWN_SUFFIXES:
            return cls(out.parent, out.with_suffix(".jsonl"), out.with_suffix(".json"),
                       out.parent / "detections.json", out)
        return cls(out, out / "results.jsonl", out / "results.json", out / "detections.json")

    @classmethod
    def of_video(cls, out: str, video, camera: str | None) -> Outputs:
        from .video import VIDEO_SUFFIXES

        out = Path(out)
        if out.suffix.lower() in VIDEO_SUFFIXES:
            return cls(out.parent, out.with_suffix(".jsonl"), out.with_suffix(".json"),
                       out.parent / "detections.json", out)
        stem = Path(video.name).stem if camera is None else f"camera-{Path(str(camera)).stem}"
        return cls(out, out / "results.jsonl", out / "results.json", out / "detections.json",
                   out / f"{stem}.mp4")

    def drawing(self, source: str) -> Path:
        return self.drawn or self.folder / f"{Path(source).stem}.png"


class Tally:
    """A run's counts, frame by frame (nothing per frame is kept)."""

    def __init__(self):
        self.frames = self.persons = self.poses = self.tracks = 0
        self.skipped: Counter = Counter()
        self.examples: dict[str, str] = {}

    def add(self, frame) -> None:
        self.frames += 1
        self.persons += len(frame.persons)
        self.poses += frame.poses
        self.tracks = max([self.tracks, *(p.get("track_id", 0) for p in frame.persons)])
        if frame.skipped and frame.frame is None:  # video frames: VideoSource counts them
            reason, message = frame.skipped
            self.skipped[reason] += frame.lost_boxes or 1
            self.examples.setdefault(reason, message)
        for reason, (count, first) in frame.dropped.items():
            self.skipped[reason] += count
            self.examples.setdefault(reason, first)


def run_predict(opts: PredictOptions) -> dict:
    """Predict the images, the video or the camera of `opts`; write under opts.out. Returns a
    summary of counts and files (see predict_images and predict_video)."""
    from .predictor import Predictor
    from .video import is_video

    predictor = Predictor.from_weights(
        opts.model, batch_size=opts.batch_size, protocol=opts.protocol,
        detector=opts.detector, workers=opts.num_workers,
        frames_per_batch=opts.frames_per_batch)
    if opts.camera is not None or is_video(opts.inputs):
        return predict_video(opts, predictor)
    return predict_images(opts, predictor)


@contextlib.contextmanager
def _stream(outputs: Outputs | None):
    from .stream import JsonLines

    if outputs is None:
        yield None
        return
    with JsonLines(outputs.stream) as stream:
        yield stream


def _bar(total, unit: str, enabled: bool):
    import sys

    from tqdm import tqdm

    # in a log file (Slurm) a bar that redraws often is megabytes of noise: redraw rarely
    return tqdm(total=total, unit=unit, desc="predict", disable=not enabled,
                mininterval=0.5 if sys.stderr.isatty() else 30.0)


def predict_images(opts: PredictOptions, predictor) -> dict:
    """An image or a folder: results.jsonl and drawn images as they come, then results.json
    (and detections.json). Returns counts: images, persons, poses, skipped (by reason), files;
    for one image also its persons."""
    from .images import image_files
    from .stream import assemble_detections, assemble_results

    files = image_files(opts.inputs)
    persons = predictor.persons(opts.boxes, opts.bbox, opts.whole_image)
    outputs = Outputs.of_images(opts.out, len(files)) if opts.out else None
    draw = outputs is not None and opts.draw
    frames = predictor.predict_folder(files, persons, keep_pixels=draw)
    tally, single = _write_images(frames, len(files), outputs, draw, opts, predictor, persons)
    if persons.boxes_file is not None:
        tally.skipped.update(persons.boxes_file.dropped)
        for reason, example in persons.boxes_file.examples.items():
            tally.examples.setdefault(reason, example)
    summary = {"images": tally.frames, "persons": tally.persons,
               "persons_from": persons.source, "poses": _poses(tally, predictor),
               "boxes": _boxes_source(opts, persons, outputs),
               "skipped": dict(tally.skipped),
               "skip_examples": {k: v for k, v in tally.examples.items() if k in tally.skipped}}
    if single is not None:
        summary["single"] = single
    if outputs is not None:
        assemble_results(outputs.stream, outputs.results)
        summary.update(stream_file=str(outputs.stream), results_file=str(outputs.results),
                       drawn=str(outputs.drawn or outputs.folder) if draw else None)
        if persons.detector:
            assemble_detections(outputs.stream, outputs.detections)
            summary["detections_file"] = str(outputs.detections)
    return summary


def _write_images(frames, count: int, outputs: Outputs | None, draw: bool,
                  opts: PredictOptions, predictor, persons) -> tuple[Tally, dict | None]:
    """Each image's line and drawing as it comes; (the counts, one image's named persons)."""
    from .draw import ImageSaver, drawn
    from .stream import person_entry

    tally, single = Tally(), None
    with _stream(outputs) as stream, ImageSaver() as saver, \
            _bar(count, "image", opts.progress and count > 1) as bar:
        for frame in frames:
            if frame.skipped and count == 1:
                raise UserError(frame.skipped[1])
            tally.add(frame)
            if draw and frame.pixels is not None:
                saver.save(drawn(frame.pixels, frame.persons, predictor.schema.skeleton,
                                 opts.min_score, boxes=persons.source != "whole image"),
                           outputs.drawing(frame.source))
            if stream is not None:
                stream.write(frame.record())
            if count == 1:
                single = {"image": frame.source,
                          "persons": [person_entry(p, predictor.schema) for p in frame.persons]}
            frame.pixels = None
            bar.update(1)
    return tally, single


def _poses(tally: Tally, predictor) -> dict:
    counts = {"poses": tally.poses, "suppressed_by_oks_nms": tally.poses - tally.persons,
              "results": tally.persons}
    if predictor.protocol.oks_nms is not None and predictor.schema.sigmas is None:
        counts["oks_nms"] = "not applied: the keypoint schema has no OKS sigmas"
    return counts


def _boxes_source(opts: PredictOptions, persons, outputs: Outputs | None) -> str:
    if persons.boxes_file is not None:
        return persons.boxes_file.source
    if persons.detector:
        return str(outputs.detections) if outputs else (
            f"detector {opts.detector.name} (score >= {opts.detector.score})")
    return "--bbox" if persons.bbox else "whole image"


def predict_video(opts: PredictOptions, predictor) -> dict:
    """A video file or a camera: results.jsonl and the drawn video as the frames come, then
    results.json. Returns counts: frames, undecodable, persons, tracks, speed, files."""
    from .stream import assemble_results
    from .video import DrawnVideo, VideoSource

    if opts.boxes:
        raise UserError("--boxes is for image folders; a video's persons come from the "
                        "detector, --bbox or --whole-image")
    camera = opts.camera is not None
    video = VideoSource(opts.camera if camera else opts.inputs, camera=camera,
                        max_frames=opts.max_frames)
    outputs = Outputs.of_video(opts.out, video, opts.camera) if opts.out else None
    writer = DrawnVideo(outputs.drawn, video.fps) if outputs and opts.draw else None
    frames = predictor.predict_video(
        video, bbox=opts.bbox, whole_image=opts.whole_image, track=opts.track,
        smooth=(opts.smooth_min_cutoff, opts.smooth_beta) if opts.smooth else None,
        keep_pixels=writer is not None)
    started = time.perf_counter()
    tally = _write_frames(frames, video.length, outputs, writer, opts, predictor)
    seconds = time.perf_counter() - started
    summary = {"source": video.name, "fps": video.fps, "frames": tally.frames,
               "undecodable_frames": video.counts["undecodable"],
               "announced_not_read": video.counts["announced_not_read"],
               "persons": tally.persons, "persons_from": opts.persons_from,
               "tracks": tally.tracks, "smoothed": bool(opts.smooth),
               "seconds": round(seconds, 3),
               "frames_per_s": round(tally.frames / seconds, 3) if seconds > 0 else None}
    if outputs is not None:
        assemble_results(outputs.stream, outputs.results)
        summary.update(stream_file=str(outputs.stream), results_file=str(outputs.results))
        if writer is not None and writer.written:
            summary["video_file"] = str(outputs.drawn)
    return summary


def _write_frames(frames, length: int | None, outputs: Outputs | None, writer,
                  opts: PredictOptions, predictor) -> Tally:
    """Each frame's line and drawing as it comes; the counts."""
    from .draw import drawn

    tally = Tally()
    try:
        with _stream(outputs) as stream, _bar(length, "frame", opts.progress) as bar:
            for frame in frames:
                tally.add(frame)
                if writer is not None:
                    writer.write(None if frame.pixels is None else drawn(
                        frame.pixels, frame.persons, predictor.schema.skeleton, opts.min_score,
                        boxes=opts.persons_from != "whole image"))
                if stream is not None:
                    stream.write(frame.record())
                frame.pixels = None
                bar.update(1)
    finally:
        if writer is not None:
            writer.close()
    return tally


def print_skips(summary: dict) -> None:
    """The boxes (or images) left out, by reason: warnings, as the crops count them."""
    for reason, n in sorted(summary["skipped"].items()):
        log.warning("skipped %d: %s (first: %s)", n, reason,
                    summary["skip_examples"].get(reason))

