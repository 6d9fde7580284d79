"""The results stream of a prediction run and the files made from it.

`results.jsonl` (JSON Lines) gets one line per image or video frame as soon as it is predicted
(shg/inference/frames.py, `Frame.record`, has the format), each line written with one write
call and flushed: a run that is killed keeps every line written before, and a line without its
newline at the end of the file is the only thing a kill can leave half written (readers skip
it). At the end of the run `results.json` (the COCO keypoint results array that pycocotools and
`shg eval --results` read) and, when the person detector ran, `detections.json` (COCO
detection results, what `--boxes` reads) are assembled from the stream line by line, never
holding more than one line, so a run's memory does not grow with its length. A killed run's
stream gives them the same way: `assemble_results("OUT/results.jsonl", "OUT/results.json")`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Iterable, Iterator

from shards import atomic


class JsonLines:
    """Write one JSON object per line, each with one write call, straight to the file."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        self.lines = 0

    def write(self, record: dict) -> None:
        data = memoryview((json.dumps(record) + "\n").encode())
        while data:  # a regular file takes it in one call; a short write is carried on
            data = data[os.write(self.fd, data):]
        self.lines += 1

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> JsonLines:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_lines(path: str | Path) -> Iterator[dict]:
    """The complete lines of a results stream, one at a time (a last line cut by a kill is
    left out)."""
    with open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n") and line.strip():
                yield json.loads(line)


def write_array(path: str | Path, items: Iterable) -> int:
    """A JSON array of `items`, written item by item (atomically: complete or not at all); the
    number written. The text is json.dumps(list(items))'s."""
    count = 0
    with atomic.atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write("[")
        for item in items:
            f.write(", " if count else "")
            f.write(json.dumps(item))
            count += 1
        f.write("]")
    return count


def assemble_results(stream: str | Path, out: str | Path) -> int:
    """results.json (every person of every line, in order) from a results stream; the number of
    results."""
    return write_array(out, (person for line in read_lines(stream)
                             for person in line["persons"]))


def assemble_detections(stream: str | Path, out: str | Path) -> int:
    """detections.json (the person detector's boxes as COCO detection results) from a results
    stream; the number of boxes."""
    return write_array(out, ({"image_id": line["image_id"], "category_id": 1, **det}
                             for line in read_lines(stream)
                             for det in line.get("detections", ())))


def person_entry(result: dict, schema) -> dict:
    """One person as printed for one image: score, box, named keypoints (and track_id)."""
    import numpy as np

    kps = np.asarray(result["keypoints"]).reshape(-1, 3)
    entry = {"score": result["score"], "bbox": result.get("bbox"),
             "keypoints": [{"name": n, "x": round(float(p[0]), 2), "y": round(float(p[1]), 2),
                            "score": round(float(p[2]), 4)} for n, p in zip(schema.names, kps)]}
    if "track_id" in result:
        entry["track_id"] = result["track_id"]
    return entry
