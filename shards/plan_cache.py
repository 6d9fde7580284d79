"""The shard plan, computed once per build and shared by every task of a Slurm array.

Planning reads the whole annotation file (train2017's is 240 MB); without this each of n build
tasks would parse it again. The first task to arrive plans, under a file lock, and writes
DIR/parts/{split}.plan.jsonl: a header line (the plan's counts, schema and the key of the
inputs it was made from), then one line per shard with its images and persons. Every other
task (and a rerun of a killed build) reads the header and decodes only its own shards' lines.
A plan made from other inputs (another annotation file, shard size, seed, ...) is replaced.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
from collections import Counter
from pathlib import Path

import numpy as np

from . import atomic
from .coco import ImageJob, Person, Plan
from .schema import KeypointSchema

log = logging.getLogger(__name__)

FORMAT = 1


def plan_path(out: Path, split: str) -> Path:
    return out / "parts" / f"{split}.plan.jsonl"


def _file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while data := f.read(1 << 20):
            digest.update(data)
    return digest.hexdigest()


def inputs_key(opts) -> dict:
    """What a plan depends on: the annotation file's bytes and the planning options."""
    from .manifest import DataError

    ann = Path(opts.annotation_file)
    if not ann.is_file():
        raise DataError(f"{ann}: annotation file not found")
    return {"format": FORMAT, "annotation_sha256": _file_sha256(ann),
            "data_format": opts.format, "shard_size": opts.shard_size,
            "min_keypoints": opts.min_keypoints, "seed": opts.seed,
            "category": opts.category,
            "schema_file": _file_sha256(Path(opts.schema)) if opts.schema else None,
            "images": str(opts.image_root) if opts.format in ("mpii", "labelstudio") else None}


def task_plan(opts, out: Path) -> tuple[Plan, list]:
    """(the plan's facts, every shard's image jobs) for this task: the shards of other tasks
    are None. Plans (and writes the shared plan) when no plan of these inputs exists."""
    path = plan_path(out, opts.split)
    key = inputs_key(opts)
    with open(out / "parts" / f".{opts.split}.plan.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)  # the others wait for the first task's plan
        except OSError:  # a file system without locks: each task plans for itself
            pass
        cached = _read(path, key, opts.task_index, opts.num_tasks)
        if cached is not None:
            log.info("%s: using the plan another task made", path)
            return cached
        plan = opts.plan()
        # A split with no eligible person still gets one (empty) shard, so its manifest entry
        # exists and says why it is empty (the filtered and skipped counts).
        shards = shard_plan(plan, opts.shard_size) or [[]]
        _write(path, key, plan, shards)
    return plan, shards


def _write(path: Path, key: dict, plan: Plan, shards: list) -> None:
    header = {"key": key, "num_shards": len(shards), "split": plan.split,
              "annotation_file": plan.annotation_file,
              "annotation_sha256": plan.annotation_sha256,
              "filtered": dict(plan.filtered), "skipped": dict(plan.skipped),
              "dropped_keypoints": dict(plan.dropped_keypoints),
              "first_offender": plan.first_offender, "schema": plan.schema.to_dict(),
              "counts": [plan.num_images, plan.num_persons]}
    with atomic.atomic_path(path) as tmp, open(tmp, "w") as f:
        f.write(json.dumps(header) + "\n")
        for jobs in shards:
            f.write(json.dumps([_job_to_list(job) for job in jobs]) + "\n")


def _read(path: Path, key: dict, task_index: int, num_tasks: int) -> tuple[Plan, list] | None:
    if not path.is_file():
        return None
    with open(path) as f:
        try:
            header = json.loads(f.readline())
        except ValueError:
            return None
        if header.get("key") != key:
            return None
        shards: list = []
        for i, line in enumerate(f):
            shards.append([_job_from_list(j) for j in json.loads(line)]
                          if i % num_tasks == task_index else None)
    if len(shards) != header["num_shards"]:
        return None  # cut short: plan again
    plan = Plan(header["split"], [], header["annotation_file"], header["annotation_sha256"],
                Counter(header["filtered"]), Counter(header["skipped"]),
                Counter(header["dropped_keypoints"]), header["first_offender"],
                KeypointSchema.from_dict(header["schema"]), tuple(header["counts"]))
    return plan, shards


def _job_to_list(job: ImageJob) -> list:
    return [job.image_id, job.file_name, job.width, job.height,
            [[p.ann_id, list(p.bbox), p.keypoints.ravel().tolist(), p.area, p.category_id,
              p.extra] for p in job.persons],
            None if job.image_bboxes is None else [list(b) for b in job.image_bboxes]]


def _job_from_list(item: list) -> ImageJob:
    image_id, file_name, width, height, persons, bboxes = item
    return ImageJob(image_id, file_name, width, height,
                    [Person(a, tuple(b), np.asarray(k, dtype=np.float64).reshape(-1, 3), area, c,
                            extra) for a, b, k, area, c, extra in persons],
                    None if bboxes is None else [tuple(b) for b in bboxes])


def shard_plan(plan: Plan, shard_size: int) -> list[list[ImageJob]]:
    """Split the planned persons into shards of `shard_size` (an image may straddle two)."""
    shards: list[list[ImageJob]] = []
    current: list[ImageJob] = []
    room = shard_size
    for job in plan.images:
        persons = list(job.persons)
        while persons:
            take, persons = persons[:room], persons[room:]
            current.append(ImageJob(job.image_id, job.file_name, job.width, job.height, take,
                                    image_bboxes=[p.bbox for p in job.persons]))
            room -= len(take)
            if room == 0:
                shards.append(current)
                current, room = [], shard_size
    if current:
        shards.append(current)
    return shards
