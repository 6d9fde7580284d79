"""Video files and cameras into frames, and drawn frames into a video file (OpenCV).

`VideoSource` reads a file or a camera (an index or a stream URL) frame by frame, decoding in a
background thread a few frames ahead (OpenCV decodes without holding the GIL, so reading
overlaps the model). A frame that cannot be decoded becomes a frame with `skipped` set
(counted; the drawn video repeats the last good frame there, so its timing stays the
source's); so are counted the frames a file announces and never delivers. `DrawnVideo` writes
frames at the source's rate and size.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import Counter
from pathlib import Path
from typing import Iterator

import numpy as np

from ..errors import UserError
from .frames import Frame, Persons

log = logging.getLogger(__name__)

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
FOURCC = {".mp4": "mp4v", ".m4v": "mp4v", ".mov": "mp4v", ".mkv": "mp4v", ".avi": "MJPG",
          ".webm": "VP80"}
GIVE_UP_AFTER = 25
"""Consecutive unreadable frames after which a stream without a frame count is at its end."""
READ_AHEAD = 16
"""Frames decoded ahead of the model at most."""


def is_video(path: str | None) -> bool:
    return path is not None and Path(path).suffix.lower() in VIDEO_SUFFIXES


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


class _Failed:
    def __init__(self, exc: BaseException):
        self.exc = exc


def read_ahead(items: Iterator, size: int = READ_AHEAD) -> Iterator:
    """`items`, produced by a background thread at most `size` ahead of the consumer (an error
    there is raised here; the thread stops when the consumer does)."""
    ready: queue.Queue = queue.Queue(size)
    stop, end = threading.Event(), object()

    def put(item) -> bool:
        while not stop.is_set():
            try:
                ready.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not put(item):
                    return
            put(end)
        except BaseException as exc:  # handed to the consumer
            put(_Failed(exc))

    thread = threading.Thread(target=produce, name="video-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = ready.get()
            if item is end:
                return
            if isinstance(item, _Failed):
                raise item.exc
            yield item
    finally:
        stop.set()
        thread.join()


class VideoSource:
    """An opened video file or camera: name, frame rate, frames announced, and its frames."""

    def __init__(self, source: str | int, camera: bool = False, max_frames: int | None = None):
        import cv2

        if max_frames is not None and max_frames < 1:
            raise UserError(f"--max-frames must be >= 1, got {max_frames}")
        if camera:
            self.name = f"camera {source}"
            source = int(source) if str(source).isdigit() else str(source)
        else:
            if not Path(source).is_file():
                raise UserError(f"{source}: video file not found")
            self.name = source = str(source)
        self.camera, self.max_frames = camera, max_frames
        self.cap = cv2.VideoCapture(source)
        if not self.cap.isOpened():
            raise UserError(f"{self.name}: cannot open it as a video (OpenCV/FFmpeg); is it a "
                            f"video file ({', '.join(VIDEO_SUFFIXES)}) or a camera index/URL?")
        count = 0 if camera else int(self.cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.announced = count if count > 0 else None
        fps = self.cap.get(cv2.CAP_PROP_FPS) or 0.0
        self.fps = fps if 0 < fps < 1000 else 30.0  # cameras and some streams report 0
        self.counts: Counter = Counter()
        """undecodable, announced_not_read: known once the frames are read."""

    @property
    def length(self) -> int | None:
        """Frames to be read, when known."""
        return frame_limit(self.announced, self.max_frames)

    def frames(self, persons: Persons) -> Iterator[Frame]:
        """Every frame (image id = frame index), with its boxes when `persons` gives them; the
        capture is released at the end."""
        decoded = read_ahead(read_frames(self.cap, self.announced, self.max_frames,
                                         self.counts))
        try:
            for index, pixels in decoded:
                frame = Frame(index, self.name, frame=index, time=index / self.fps)
                if pixels is None:
                    frame.skipped = ("undecodable",
                                     f"{self.name}: frame {index} could not be decoded")
                else:
                    frame.height, frame.width = pixels.shape[:2]
                    frame.pixels = pixels
                    frame.boxes = persons.boxes(index, frame.width, frame.height)
                yield frame
        finally:
            decoded.close()  # the reading thread stops before the capture goes
            self.cap.release()
        if self.counts["undecodable"] or self.counts["announced_not_read"]:
            log.warning("%s: %d frames could not be decoded, %d announced were never read",
                        self.name, self.counts["undecodable"], self.counts["announced_not_read"])


class DrawnVideo:
    """A video file of drawn frames at `fps`, sized by its first frame; a frame missing (None)
    repeats the last one written."""

    def __init__(self, path: Path, fps: float):
        self.fourcc = FOURCC.get(path.suffix.lower())
        if self.fourcc is None:
            raise UserError(f"--out {path}: a drawn video needs one of {', '.join(FOURCC)}")
        self.path, self.fps = path, fps
        self.writer, self.last, self.written = None, None, 0

    def write(self, rgb: np.ndarray | None) -> None:
        import cv2

        bgr = self.last if rgb is None else cv2.cvtColor(np.asarray(rgb), cv2.COLOR_RGB2BGR)
        if bgr is None:
            return  # nothing to repeat before the first good frame
        if self.writer is None:
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*self.fourcc),
                                          self.fps, (bgr.shape[1], bgr.shape[0]))
            if not self.writer.isOpened():
                raise UserError(f"--out {self.path}: OpenCV cannot write {self.fourcc} video "
                                "here; try .avi")
        self.writer.write(bgr)
        self.last, self.written = bgr, self.written + 1

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()
