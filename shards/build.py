"""`shg shards build` / `shg shards finalize`: thesis crops written as WebDataset tar shards.

Layout of an output directory (several splits may share it):

    DIR/{split}-{i:06d}.tar        complete shards (written as *.tar.tmp, renamed when done)
    DIR/{split}-{i:06d}.tar.idx.json  where each sample lies in it (shards/index.py)
    DIR/parts/{split}-{i:06d}.json per-shard statistics, merged into the manifest
    DIR/manifest.json              {"format": 1, "splits": {split: {...}}}

A shard is planned from the annotation json alone, so every task of a Slurm array agrees on
which persons go to which shard; task i of n builds shards i, i+n, i+2n, ...
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections import Counter
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from . import atomic
from . import index as shard_index
from . import plan_cache
from .coco import SKIP_REASONS, ImageJob, Plan, annotation_path, make_plan
from .crop import CropParams, ImageSkip, crop_box, cut, open_for_crops, to_crop
from .manifest import MANIFEST, DataError, read_manifest
from .labelstudio import make_labelstudio_plan
from .mpii import make_mpii_plan

# Lossless either way. Measured on 256x256 crops here: zlib level 1, Huffman-only coding and
# the PNG "Up" filter on every row encode 10x faster than PIL's default (level 6, adaptive
# filters) and decode 2x faster than adaptive filtering (Paeth rows are the slow part of
# reading), for files about half the size of uncompressed ones.
PNG_COMPRESS_LEVEL = 1


FORMATS = ("coco", "mpii", "labelstudio")


@dataclass
class BuildOptions:
    coco_root: str = ""
    """A COCO root: ROOT/annotations/person_keypoints_SPLIT.json and the images in ROOT/SPLIT/
    (or give `ann` and `images`)."""
    split: str = ""
    out: str = ""
    ann: str = ""
    """The annotation file (any layout in COCO format, MPII's JSON with format="mpii", or
    Label Studio's JSON export with format="labelstudio")."""
    images: str = ""
    """The folder the annotation file's image names are relative to."""
    format: str = "coco"
    category: str = ""
    """COCO format: the keypoint category to take (a name or id); default: every category
    that has the file's keypoint list."""
    schema: str = ""
    """A schema file (TOML) correcting or completing the data's keypoint schema."""
    shard_size: int = 1000
    workers: int = 0
    """Crop processes: 0 = one per CPU this process may use (a Slurm task's allocation)."""
    task_index: int = 0
    num_tasks: int = 1
    min_keypoints: int = 1
    strict: bool = False
    seed: int = 0
    progress: bool = True
    png_level: int = PNG_COMPRESS_LEVEL
    """zlib level of the stored PNGs: 0 stores raw (2x the disk, ~2x faster to read)."""
    crop_size: int = CropParams.size
    """Side of the stored crops (a multiple of 64: the SHG's heatmaps are a quarter of it and
    its hourglasses halve those four times)."""
    enlarge: float = CropParams.enlarge
    """The square around each box is enlarged by this (the thesis: 1.1)."""

    def __post_init__(self) -> None:
        if not self.split or not self.out:
            raise DataError("give a split name and an output directory")
        if self.format not in FORMATS:
            raise DataError(f"format {self.format!r}; valid: {', '.join(FORMATS)}")
        if bool(self.ann) != bool(self.images) or not (self.ann or self.coco_root):
            raise DataError("give --coco ROOT, or --ann FILE with --images DIR")
        if self.format in ("mpii", "labelstudio") and not self.ann:
            raise DataError(f"--format {self.format} needs --ann FILE --images DIR")
        if self.crop_size < 64 or self.crop_size % 64:
            raise DataError(f"crop size must be a multiple of 64 (64, 128, 192, 256, ...), "
                            f"not {self.crop_size}")
        if self.enlarge < 1:
            raise DataError(f"enlarge must be >= 1 (the crop holds the box), not {self.enlarge}")
        if self.shard_size < 1:
            raise DataError("shard_size must be >= 1")
        if self.num_tasks < 1 or not 0 <= self.task_index < self.num_tasks:
            raise DataError(f"task_index must be in [0, num_tasks): got {self.task_index} "
                             f"of {self.num_tasks}")
        if self.workers < 0:
            raise DataError("workers must be >= 0 (0: one per CPU)")
        if self.workers == 0:
            self.workers = len(os.sched_getaffinity(0))
        if not 0 <= self.png_level <= 9:
            raise DataError("png_level must be in 0..9")
        if self.min_keypoints < 0:
            raise DataError("min_keypoints must be >= 0")


    @property
    def annotation_file(self) -> Path:
        return Path(self.ann) if self.ann else annotation_path(self.coco_root, self.split)

    @property
    def image_root(self) -> Path:
        return Path(self.images) if self.images else Path(self.coco_root) / self.split

    def plan(self) -> Plan:
        """Which persons become samples (from the annotation file alone)."""
        if self.format == "mpii":
            return make_mpii_plan(self.annotation_file, self.image_root, self.split,
                                  self.min_keypoints, self.seed, self.schema or None)
        if self.format == "labelstudio":
            return make_labelstudio_plan(self.annotation_file, self.image_root, self.split,
                                         self.min_keypoints, self.seed, self.schema or None)
        return make_plan(self.annotation_file, self.split, self.min_keypoints, self.seed,
                         self.category or None, self.schema or None)


class StrictError(DataError):
    """Raised by --strict on the first skipped input."""


def shard_name(split: str, index: int) -> str:
    return f"{split}-{index:06d}.tar"


def _part_path(out: Path, split: str, index: int) -> Path:
    return out / "parts" / f"{split}-{index:06d}.json"


# ---------------------------------------------------------------- per-image work (in workers)

def _encode_png(rgb: np.ndarray, level: int) -> bytes:
    import cv2

    ok, data = cv2.imencode(".png", rgb[:, :, ::-1], [
        cv2.IMWRITE_PNG_COMPRESSION, level,
        cv2.IMWRITE_PNG_STRATEGY, cv2.IMWRITE_PNG_STRATEGY_HUFFMAN_ONLY,
        cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP])
    if not ok:
        raise RuntimeError("PNG encoding failed")
    return data.tobytes()


def _crop_image(args: tuple[str, ImageJob, CropParams, int]) -> dict:
    """Decode one image and cut every planned person out of it.

    Returns {"samples": [...], "skip": (reason, message) | None, "rgb_sum", "rgb_sq", "pixels"}.
    Runs in worker processes: only plain data in and out.
    """
    root, job, params, png_level = args
    path = Path(root) / job.file_name
    result = {"samples": [], "skip": None, "rgb_sum": np.zeros(3), "rgb_sq": np.zeros(3),
              "pixels": 0}
    boxes = [crop_box(p.bbox, job.width, job.height, params) for p in job.persons]
    every = [crop_box(b, job.width, job.height, params) for b in job.all_bboxes()]
    try:
        image, scale = open_for_crops(path, job.width, job.height, every, params)
    except ImageSkip as skip:
        result["skip"] = (skip.reason, str(skip))
        return result
    for person, box in zip(job.persons, boxes):
        crop = cut(image, box, params, scale)
        pixels = np.asarray(crop).reshape(-1, 3)
        as_float = pixels.astype(np.float32)
        result["rgb_sum"] += pixels.sum(0, dtype=np.int64)
        result["rgb_sq"] += np.einsum("ij,ij->j", as_float, as_float, dtype=np.float64)
        result["pixels"] += pixels.shape[0]
        png = _encode_png(pixels.reshape(params.size, params.size, 3), png_level)
        kps = person.keypoints.copy()
        labelled = kps[:, 2] > 0
        kps[labelled, :2] = to_crop(kps[labelled, :2], box, params.size)
        meta = {
            "image_id": job.image_id,
            "ann_id": person.ann_id,
            "category_id": person.category_id,
            "file_name": job.file_name,
            "image_size": [job.width, job.height],
            "bbox": list(person.bbox),
            "area": person.area,
            "keypoints": kps.round(4).tolist(),
            "num_keypoints": int(labelled.sum()),
            "affine": box.affine(params.size).tolist(),
            "crop_size": params.size,
            **person.extra,
        }
        result["samples"].append({"__key__": f"{job.image_id}_{person.ann_id}",
                                  "png": png,
                                  "json": json.dumps(meta).encode()})
    return result


# ---------------------------------------------------------------- writing one shard

class ShardWriter:
    """One shard being written: samples go into DIR/{split}-{i:06d}.tar.tmp while their counts
    and pixel statistics accumulate; `close` writes the shard's index and its part file
    (statistics and the plan-level facts `shared`: num_shards, plan, crop) and only then renames
    the tar, so a shard that exists always has both; `abort` removes the unfinished tar."""

    def __init__(self, out: Path, split: str, index: int, shared: dict):
        import webdataset as wds

        self.out, self.split, self.index, self.shared = out, split, index, shared
        self.tmp = out / (shard_name(split, index) + ".tmp")
        self.stream = open(self.tmp, "wb")
        self.writer = wds.TarWriter(self.stream, encoder=False)
        self.count = 0
        self.skipped: Counter = Counter()
        self.skipped_images: Counter = Counter()
        self.rgb_sum, self.rgb_sq, self.pixels = np.zeros(3), np.zeros(3), 0

    def write(self, result: dict) -> None:
        """The samples and statistics of one image (a `_crop_image` result)."""
        for sample in result["samples"]:
            self.writer.write(sample)
        self.count += len(result["samples"])
        self.rgb_sum += result["rgb_sum"]
        self.rgb_sq += result["rgb_sq"]
        self.pixels += result["pixels"]

    def skip(self, reason: str, persons: int) -> None:
        """An image left out (`persons` planned samples lost) for `reason`."""
        self.skipped[reason] += persons
        self.skipped_images[reason] += 1

    def close(self) -> None:
        self.writer.close()
        self.stream.flush()
        os.fsync(self.stream.fileno())
        self.stream.close()
        final = self.out / shard_name(self.split, self.index)
        # the index is written before the rename too: a shard that exists has its index
        shard_index.write(final, shard_index.scan(self.tmp))
        part = {
            "shard": shard_name(self.split, self.index), "index": self.index,
            "num_shards": self.shared["num_shards"], "num_samples": self.count,
            "bytes": self.tmp.stat().st_size,
            "skipped": dict(self.skipped), "skipped_images": dict(self.skipped_images),
            "rgb_sum": self.rgb_sum.tolist(), "rgb_sq": self.rgb_sq.tolist(),
            "pixels": self.pixels,
            # Plan-level facts, identical in every part of a split:
            "plan": self.shared["plan"],
            "crop": self.shared["crop"],
        }
        # The part is written before the rename: a shard that exists always has its statistics.
        atomic.write_json(_part_path(self.out, self.split, self.index), part)
        os.replace(self.tmp, final)

    def abort(self) -> None:
        """Never leave a half-written shard behind."""
        if not self.stream.closed:
            try:
                self.writer.close()
            except Exception:  # noqa: BLE001 - the file is deleted next anyway
                pass
            self.stream.close()
            self.tmp.unlink(missing_ok=True)


def _shared_facts(plan: Plan, params: CropParams, num_shards: int, fingerprint: dict) -> dict:
    """What every part file of a split repeats: the plan's facts and the crop settings."""
    return {"num_shards": num_shards,
            "plan": {"fingerprint": fingerprint,
                     "annotation_file": plan.annotation_file,
                     "annotation_sha256": plan.annotation_sha256,
                     "planned_persons": plan.num_persons, "planned_images": plan.num_images,
                     "filtered": dict(plan.filtered), "skipped": dict(plan.skipped),
                     "dropped_keypoints": dict(plan.dropped_keypoints),
                     "schema": plan.schema.to_dict()},
            "crop": asdict(params)}


# ---------------------------------------------------------------- build

def build(opts: BuildOptions, params: CropParams | None = None, log=print) -> dict:
    """Build this task's shards; finalize the manifest when this is the only task. The crops
    are `params`, by default those of opts.crop_size and opts.enlarge.

    Returns a summary dict (counts for this task, and the manifest when finalized).
    """
    params = params or CropParams(size=opts.crop_size, enlarge=opts.enlarge)
    import cv2  # noqa: F401  (imported before forking and before the clock starts:
    import webdataset  # noqa: F401  webdataset pulls in torch, which takes a second)

    out = Path(opts.out)
    (out / "parts").mkdir(parents=True, exist_ok=True)
    plan, shards = plan_cache.task_plan(opts, out)
    if plan.first_offender and opts.strict:
        raise StrictError(f"--strict: {plan.first_offender}")
    fingerprint = {"annotation_sha256": plan.annotation_sha256, "shard_size": opts.shard_size,
                   "min_keypoints": opts.min_keypoints, "seed": opts.seed, "crop": asdict(params),
                   "schema": plan.schema.to_dict()}
    _check_existing_parts(out, opts.split, fingerprint)
    mine = [i for i in range(len(shards)) if i % opts.num_tasks == opts.task_index]
    todo = [i for i in mine if not (out / shard_name(opts.split, i)).exists()
            or not _part_path(out, opts.split, i).exists()]
    if len(todo) < len(mine):
        log(f"{len(mine) - len(todo)} of {len(mine)} shards already complete, skipping them")

    shared = _shared_facts(plan, params, len(shards), fingerprint)
    t0 = time.perf_counter()
    counts = _write_shards(opts, params, out, todo, shards, shared)
    elapsed = time.perf_counter() - t0
    written = counts["written"]
    summary = {"split": opts.split, "task_index": opts.task_index, "num_tasks": opts.num_tasks,
               "shards_built": len(todo), "crops_written": written,
               "seconds": round(elapsed, 3),
               "crops_per_second": round(written / elapsed, 1) if elapsed > 0 else None,
               "skipped_this_task": dict(counts["skipped"]),
               "first_offender": counts["first_offender"]}
    if opts.num_tasks == 1:
        summary["manifest"] = finalize(out, opts.split)
    return summary


def _write_shards(opts: BuildOptions, params: CropParams, out: Path, todo: list[int],
                  shards: list, shared: dict) -> dict:
    """Crop the images of the shards `todo` (in worker processes) and write each shard in
    turn; a shard planned empty is written empty. Returns the samples written, the skipped
    persons by reason and the first skipped input."""
    jobs = [(i, job) for i in todo for job in shards[i]]
    counts = {"written": 0, "skipped": Counter(), "first_offender": None}

    from tqdm import tqdm

    bar = tqdm(total=sum(len(job.persons) for _, job in jobs), unit="crop",
               desc=f"{opts.split} task {opts.task_index}", disable=not opts.progress,
               mininterval=1.0)
    pool = get_context("fork").Pool(opts.workers) if opts.workers > 1 and len(jobs) > 1 else None
    shard: ShardWriter | None = None
    try:
        root = str(opts.image_root)
        work = ((root, job, params, opts.png_level) for _, job in jobs)
        results = pool.imap(_crop_image, work, chunksize=4) if pool else map(_crop_image, work)
        for (index, job), res in zip(jobs, results):
            if shard is None or shard.index != index:
                if shard is not None:
                    shard.close()
                shard = ShardWriter(out, opts.split, index, shared)
            if res["skip"]:
                reason, message = res["skip"]
                if opts.strict:
                    raise StrictError(f"--strict: {message}")
                shard.skip(reason, len(job.persons))
                counts["skipped"][reason] += len(job.persons)
                counts["first_offender"] = counts["first_offender"] or message
            shard.write(res)
            counts["written"] += len(res["samples"])
            bar.update(len(job.persons))
        if shard is not None:
            shard.close()
        for index in todo:
            if not shards[index]:
                shard = ShardWriter(out, opts.split, index, shared)
                shard.close()
    except BaseException:
        if pool:
            pool.terminate()
        if shard is not None:
            shard.abort()
        raise
    finally:
        bar.close()
        if pool:
            pool.close()
            pool.join()
    return counts


def _check_existing_parts(out: Path, split: str, fingerprint: dict) -> None:
    """Resuming is only sound into a directory built from the same plan."""
    for part in (out / "parts").glob(f"{split}-*.json"):
        old = json.loads(part.read_text())["plan"].get("fingerprint")
        if old != fingerprint:
            raise DataError(f"{out}: holds '{split}' shards built from other annotations or "
                            f"settings ({part.name}: {old} vs now {fingerprint}); remove them "
                            "or choose another --out")


# ---------------------------------------------------------------- finalize

def finalize(out: str | Path, split: str) -> dict:
    """Merge the per-shard statistics of a split into DIR/manifest.json (all tasks must be done)."""
    out = Path(out)
    parts = sorted((out / "parts").glob(f"{split}-*.json"))
    if not parts:
        raise DataError(f"{out}: no shards of split '{split}' found (did the build run?)")
    loaded = [json.loads(p.read_text()) for p in parts]
    expected = loaded[0]["num_shards"]
    if any(p["plan"]["fingerprint"] != loaded[0]["plan"]["fingerprint"] for p in loaded):
        raise DataError(f"{out}: parts of split '{split}' come from different builds; "
                        "rebuild into an empty directory")
    have = {p["index"] for p in loaded if (out / p["shard"]).exists()}
    missing = sorted(set(range(expected)) - have)
    if missing:
        names = ", ".join(shard_name(split, i) for i in missing[:5])
        raise DataError(f"{out}: split '{split}' is incomplete: {len(missing)} of {expected} "
                        f"shards missing ({names}{', ...' if len(missing) > 5 else ''})")
    loaded = [p for p in loaded if p["index"] < expected]
    plan = loaded[0]["plan"]
    skipped = Counter(plan["skipped"])
    skipped_images: Counter = Counter()
    rgb_sum, rgb_sq, pixels = np.zeros(3), np.zeros(3), 0
    for p in loaded:
        skipped.update(p["skipped"])
        skipped_images.update(p["skipped_images"])
        rgb_sum += p["rgb_sum"]
        rgb_sq += p["rgb_sq"]
        pixels += p["pixels"]
    mean = rgb_sum / max(pixels, 1)
    std = np.sqrt(np.maximum(rgb_sq / max(pixels, 1) - mean ** 2, 0.0))
    entry = {
        "shards": [{"file": p["shard"], "num_samples": p["num_samples"],
                    **({"bytes": p["bytes"]} if "bytes" in p else {})} for p in loaded],
        "num_samples": sum(p["num_samples"] for p in loaded),
        "mean_rgb": mean.round(4).tolist(),
        "std_rgb": std.round(4).tolist(),
        "source": {"annotation_file": plan["annotation_file"],
                   "annotation_sha256": plan["annotation_sha256"]},
        "planned_persons": plan["planned_persons"],
        "schema": plan["schema"],
        "crop": loaded[0]["crop"],
        "filtered": plan["filtered"],
        "skipped": {k: skipped[k] for k in SKIP_REASONS if skipped[k]},
        "skipped_images": dict(skipped_images),
        "dropped_keypoints": plan["dropped_keypoints"],
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    with open(out / ".manifest.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two splits may finalize at once
        manifest = read_manifest(out, missing_ok=True)
        manifest["splits"][split] = entry
        atomic.write_json(out / MANIFEST, manifest, indent=1, fsync=True)
    return entry

