"""`shg predict` on a video file or a camera: every person of every frame, drawn into a video at
the source's frame rate and size, and one COCO keypoint results file for all frames.

Frames are read with OpenCV, grouped `frames_per_batch` at a time: the person detector (or
--boxes-free alternatives: --bbox, --whole-image) runs on the group, every person of the group
is cut with the training crop code (shards/detections.py: frame_batches) and predicted in
batches, then the COCO protocol (rescoring, OKS-NMS) is applied per frame. Each result carries
"frame" (the source frame index, also its image_id) and, with tracking on, "track_id";
--smooth filters every track's keypoints with a One-Euro filter (shg/tracking.py).

A frame that cannot be decoded is counted and reported (the drawn video repeats the last good
frame there, so its timing stays the source's); so are frames a file announces and never
delivers.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from .errors import UserError

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG",
          ".webm": "VP80"}
GIVE_UP_AFTER = 25
"""Consecutive unreadable frames after which a stream without a frame count is at its end."""


def is_video(path: str | None) -> bool:
    return path is not None and Path(path).suffix.lower() in VIDEO_SUFFIXES


def open_capture(opts):
    """(cv2.VideoCapture, source name, frames announced or None)."""
    import cv2

    if opts.camera is not None:
        source = int(opts.camera) if str(opts.camera).isdigit() else str(opts.camera)
        name = f"camera {opts.camera}"
    else:
        if not Path(opts.inputs).is_file():
            raise UserError(f"{opts.inputs}: video file not found")
        source, name = str(opts.inputs), str(opts.inputs)
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        raise UserError(f"{name}: cannot open it as a video (OpenCV/FFmpeg); is it a video "
                        f"file ({', '.join(VIDEO_SUFFIXES)}) or a camera index/URL?")
    count = int(cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0) if opts.camera is None else 0
    return cap, name, count if count > 0 else None


def frame_limit(announced: int | None, max_frames: int | None) -> int | None:
    """How many frames to read: the fewer of the announced count and --max-frames (None: to
    the stream's end)."""
    known = [x for x in (announced, max_frames) if x is not None]
    return min(known) if known else None


def read_frames(cap, announced: int | None, max_frames: int | None, counts: Counter):
    """(frame index, RGB frame, or None for a frame that could not be decoded) to the end of the
    stream or `max_frames`. Counted: counts["undecodable"] (failures between good frames) and
    counts["announced_not_read"] (frames the file announced after the last one it delivered)."""
    import cv2

    limit = frame_limit(announced, max_frames)
    index, failed = 0, []
    while limit is None or index < limit:
        ok, frame = cap.read()
        if not ok:
            failed.append(index)
            index += 1
            if len(failed) >= GIVE_UP_AFTER:
                break  # the stream's end (or a run of failures no player would show)
            continue
        counts["undecodable"] += len(failed)
        for i in failed:
            yield i, None
        failed = []
        yield index, cv2.cvtColor(frame, cv2.COLOR_BGR2RGB)
        index += 1
    if announced is not None:
        # not yielded: a wrong estimate of the count must not pad the drawn video
        counts["announced_not_read"] += max(0, min(announced, limit) - index + len(failed))


def _writer(path: Path, fps: float, size: tuple[int, int]):
    import cv2

    fourcc = FOURCC.get(path.suffix.lower())
    if fourcc is None:
        raise UserError(f"--out {path}: a drawn video needs one of {', '.join(FOURCC)}")
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, size)
    if not writer.isOpened():
        raise UserError(f"--out {path}: OpenCV cannot write {fourcc} video here; try .avi")
    return writer


def output_paths(opts, name: str) -> tuple[Path | None, Path | None]:
    """(drawn video, results file): OUT.mp4 + OUT.json, or OUT/<source>.mp4 + OUT/results.json."""
    if not opts.out:
        return None, None
    out = Path(opts.out)
    if out.suffix.lower() in VIDEO_SUFFIXES:
        out.parent.mkdir(parents=True, exist_ok=True)
        return out, out.with_suffix(".json")
    out.mkdir(parents=True, exist_ok=True)
    stem = Path(name).stem if opts.camera is None else f"camera-{Path(str(opts.camera)).stem}"
    return out / f"{stem}.mp4", out / "results.json"


def _chunks(frames, size: int):
    chunk = []
    for item in frames:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def predict_video(opts) -> dict:
    """Predict every frame; write the drawn video and the results. Returns a summary: frames
    read, undecodable, persons per frame, tracks, fps, files."""
    import time

    import cv2
    from PIL import Image
    from tqdm import tqdm

    from shards import atomic
    from shards.detections import Detection, frame_batches

    from .detector import PersonDetector
    from .evaluation import protocol as post
    from .evaluation.core import predict_rows
    from .predict import (check_detector_category, draw_persons, load_predictor, parse_bbox,
                          person_entry)
    from .tracking import IoUTracker, OneEuro

    if opts.boxes:
        raise UserError("--boxes is for image folders; a video's persons come from the "
                        "detector, --bbox or --whole-image")
    model, meta, schema, params, device = load_predictor(opts)
    categories = schema.categories or (1,)
    detector = None
    if opts.persons_from == "detector":
        check_detector_category(categories)
        detector = PersonDetector(opts.detector, device)
    fixed_box = parse_bbox(opts.bbox) if opts.bbox else None
    cap, name, announced = open_capture(opts)
    fps = cap.get(cv2.CAP_PROP_FPS) or 0.0
    fps = fps if 0 < fps < 1000 else 30.0  # cameras and some streams report 0
    video_file, results_file = output_paths(opts, name)
    tracker = IoUTracker() if opts.track else None
    smoothers: dict[int, OneEuro] = {}
    counts: Counter = Counter()
    results, writer, last_drawn, box_index = [], None, None, 0
    started = time.perf_counter()
    bar = tqdm(total=frame_limit(announced, opts.max_frames), unit="frame", desc="predict",
               disable=not opts.progress)
    mean = meta.get("mean_rgb", [0.0, 0.0, 0.0])
    try:
        for chunk in _chunks(read_frames(cap, announced, opts.max_frames, counts),
                             opts.frames_per_batch):
            good = {i: f for i, f in chunk if f is not None}
            order = sorted(good)
            if detector is not None:
                found = detector([good[i] for i in order]) if order else []
            else:
                found = [[(fixed_box or (0.0, 0.0, float(good[i].shape[1]),
                                         float(good[i].shape[0])), 1.0)] for i in order]
            dets = []
            for frame_index, persons in zip(order, found):
                for box, score in persons:
                    dets.append(Detection(box_index, frame_index, box, score, categories[0]))
                    box_index += 1
            rows = list(predict_rows(
                model, frame_batches(good, dets, params, opts.batch_size, mean,
                                     schema.num_joints),
                schema=schema, sigma=float(meta.get("sigma", 1.0)), flip=opts.protocol.flip,
                flip_shift=opts.protocol.flip_shift, device=device)) if dets else []
            frame_results, _ = post.apply(rows, opts.protocol, schema, with_box=True)
            by_frame: dict[int, list] = {}
            for res in frame_results:
                by_frame.setdefault(res["image_id"], []).append(res)
            for frame_index, frame in chunk:
                persons = by_frame.get(frame_index, [])
                _track_and_smooth(frame_index, persons, tracker, smoothers, opts, fps)
                for res in persons:
                    res["frame"] = frame_index
                results.extend(persons)
                counts["frames"] += 1
                if frame is None:
                    drawn = last_drawn
                else:
                    image = Image.fromarray(frame)
                    draw_persons(image, persons, schema.skeleton, opts.min_score,
                                 boxes=opts.persons_from != "whole image")
                    drawn = cv2.cvtColor(np.asarray(image), cv2.COLOR_RGB2BGR)
                if video_file is not None and drawn is not None:
                    if writer is None:
                        writer = _writer(video_file, fps, (drawn.shape[1], drawn.shape[0]))
                    writer.write(drawn)
                    counts["frames_written"] += 1
                last_drawn = drawn
            bar.update(len(chunk))
    finally:
        bar.close()
        cap.release()
        if writer is not None:
            writer.release()
    seconds = time.perf_counter() - started
    summary = {"source": name, "fps": fps, "frames": counts["frames"],
               "undecodable_frames": counts["undecodable"],
               "announced_not_read": counts["announced_not_read"],
               "persons": len(results), "persons_from": opts.persons_from,
               "tracks": len({r["track_id"] for r in results if "track_id" in r}),
               "smoothed": bool(opts.smooth), "seconds": round(seconds, 3),
               "frames_per_s": round(counts["frames"] / seconds, 3) if seconds > 0 else None,
               "per_frame": {}}
    for res in results:
        summary["per_frame"].setdefault(res["frame"], []).append(person_entry(res, schema))
    if results_file is not None:
        atomic.write_text(results_file, json.dumps(results))
        summary["results_file"] = str(results_file)
    if video_file is not None and writer is not None:
        summary["video_file"] = str(video_file)
    if counts["undecodable"] or counts["announced_not_read"]:
        log.warning("%s: %d frames could not be decoded, %d announced were never read", name,
                    counts["undecodable"], counts["announced_not_read"])
    return summary


def _track_and_smooth(frame: int, persons: list, tracker, smoothers: dict, opts,
                      fps: float) -> None:
    """Give each result of `frame` its track_id and (with --smooth) filtered keypoints."""
    from .tracking import OneEuro

    if tracker is None:
        return
    ids = tracker.update(frame, [r["bbox"] for r in persons])
    for res, track_id in zip(persons, ids):
        res["track_id"] = track_id
        if not opts.smooth:
            continue
        kps = np.asarray(res["keypoints"], dtype=np.float64).reshape(-1, 3)
        smoother = smoothers.setdefault(track_id, OneEuro(opts.smooth_min_cutoff,
                                                          opts.smooth_beta))
        kps[:, :2] = smoother(kps[:, :2], frame / fps)
        res["keypoints"] = [round(float(v), 3) for v in kps.ravel()]
