"""Image files into frames: the images of a folder (or the files given), each read and decoded
once, in loader worker processes.

With the persons' boxes known before the model runs (a boxes file, --bbox, --whole-image) the
worker cuts their crops itself, with the reader of shard building and `shg eval --boxes`
(shards/detections.py: crops_of_file), so the crops are theirs to the pixel; the decoded image
goes to the main process only when it is to be drawn. For the person detector the worker
decodes the whole image, which the detector sees and the crops are cut from. Worker w of W
reads the files w, w + W, ...; the loader hands their frames back in turn, so frames come in
file order. An image that cannot be read is a frame with `skipped` set (counted, reported),
never the end of the run.
"""

from __future__ import annotations

from array import array
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from torch.utils.data import IterableDataset, get_worker_info

from ..errors import UserError
from .frames import Frame, Persons

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_files(inputs: str | Path) -> list[str]:
    """The image files of a folder (sorted by name), or the one image given. Plain strings: a
    folder of 100,000 images lists in about 10 MB (as Path objects, four times that)."""
    path = Path(inputs)
    if path.is_dir():
        files = sorted(str(p) for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise UserError(f"{path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return files
    if not path.is_file():
        raise UserError(f"{path}: image or folder not found")
    return [str(path)]


def image_ids(files: list[str], coco_ids: bool) -> array:
    """Each file's image id: its name when that is a number (000000000785.jpg: 785), else its
    position. `coco_ids`: every name must be a number (a boxes file finds images by id)."""
    ids, seen = array("q"), {}
    for position, file in enumerate(files):
        stem = Path(file).stem
        if stem.isdigit():
            image_id = int(stem)
        elif coco_ids:
            raise UserError(f"{file}: --boxes needs images named by their COCO image id (like "
                            "000000000785.jpg) to find their boxes")
        else:
            image_id = position
        if image_id in seen:
            raise UserError(f"{file} and {files[seen[image_id]]}: the same image id {image_id}")
        seen[image_id] = position
        ids.append(image_id)
    return ids


def decode(path: str | Path) -> np.ndarray:
    """The whole image as (H, W, 3) uint8 RGB."""
    from PIL import Image

    with Image.open(path) as image:
        return np.array(image.convert("RGB"))


class ImageFiles(IterableDataset):
    """Frames of image files: sizes read, boxes checked against them, crops cut when the boxes
    are known, pixels decoded when the detector needs them or `keep_pixels` (drawing)."""

    def __init__(self, files: list[str], ids, persons: Persons, params, joints: int,
                 keep_pixels: bool = False):
        self.files, self.ids, self.persons = files, ids, persons
        self.params, self.joints, self.keep_pixels = params, joints, keep_pixels

    def __len__(self) -> int:
        return len(self.files)

    def __iter__(self) -> Iterator[Frame]:
        info = get_worker_info()
        share = range(info.id, len(self.files), info.num_workers) if info else \
            range(len(self.files))
        for i in share:
            frame = self.read(i)
            if info is not None and frame.pixels is not None:
                import torch

                # through shared memory instead of the loader's pipe
                frame.pixels = torch.from_numpy(frame.pixels)
            yield frame

    def read(self, i: int) -> Frame:
        from PIL import Image

        from shards.crop import ImageSkip

        path, frame = self.files[i], Frame(self.ids[i], self.files[i])
        try:
            with Image.open(path) as image:  # the header: the size the boxes are checked with
                frame.width, frame.height = image.size
        except Exception as exc:  # PIL raises many kinds for unreadable files
            frame.skipped = ("corrupt_image", f"{path}: cannot read the image ({exc})")
            return frame
        boxes = self.persons.boxes(frame.image_id, frame.width, frame.height)
        try:
            if boxes is None:  # the detector's: it sees the whole image, the crops come after
                frame.pixels = decode(path)
            else:
                self._cut(frame, path, self._inside(frame, boxes, path))
        except ImageSkip as skip:
            self._skip(frame, skip.reason, str(skip))
        except Exception as exc:  # a file that breaks while decoding (truncated, corrupt)
            self._skip(frame, "corrupt_image", f"{path}: cannot decode ({exc})")
        return frame

    @staticmethod
    def _inside(frame: Frame, boxes: list, path: str) -> list:
        """The boxes with pixels in the image; the others counted as outside_image."""
        from shards.detections import outside_image

        inside = []
        for det in boxes:
            if outside_image(det.bbox, frame.width, frame.height):
                count, first = frame.dropped.get("outside_image", (0, None))
                frame.dropped["outside_image"] = (count + 1, first or (
                    f"entry {det.index}: bbox {list(det.bbox)} outside the "
                    f"{frame.width}x{frame.height} image {path}"))
            else:
                inside.append(det)
        return inside

    def _cut(self, frame: Frame, path: str, boxes: list) -> None:
        """The boxes' crops from one decode of the file, which is also the drawing's unless
        JPEG draft decoding made it smaller."""
        from shards.detections import crops_of_file

        frame.boxes, frame.samples, image, scale = boxes, [], None, 0.0
        if boxes:
            frame.samples, image, scale = crops_of_file(
                path, frame.width, frame.height, boxes, self.params, self.joints)
        if self.keep_pixels:
            frame.pixels = np.array(image) if scale == 1.0 else decode(path)

    @staticmethod
    def _skip(frame: Frame, reason: str, message: str) -> None:
        frame.skipped, frame.lost_boxes = (reason, message), len(frame.boxes or [])
        frame.boxes, frame.samples, frame.pixels = None, None, None


def _as_is(item):
    return item


def _numpy(frame: Frame) -> Frame:
    if frame.pixels is not None and not isinstance(frame.pixels, np.ndarray):
        frame.pixels = frame.pixels.numpy()
    return frame


def load(dataset: ImageFiles, workers: int) -> Iterable[Frame]:
    """The dataset's frames, decoded in `workers` processes (0, or one image: here), in file
    order."""
    workers = min(workers, len(dataset))
    if workers == 0 or len(dataset) == 1:
        return iter(dataset)
    from torch.utils.data import DataLoader

    loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=_as_is,
                        multiprocessing_context="fork", prefetch_factor=2)
    return map(_numpy, loader)
