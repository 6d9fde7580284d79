"""Label Studio's JSON export as a shard plan: `shg shards build --format labelstudio --ann
EXPORT.json --images DIR`.

How persons and joints are represented (what `shg labels export --to labelstudio` writes,
shg/labels/labelstudio.py, and what this reads back after a labeller's edits):

- a task per image: `data.image` (the URL Label Studio shows), `data.file_name` (relative to
  --images), `data.image_id`, `data.width`, `data.height`, `data.categories` ({name: id}),
  `data.areas` ({person region id: the annotation's COCO area}, the OKS scale of COCO AP);
- a person: a RectangleLabels region (its label the category's name) whose id is
  `ann-<COCO annotation id>` for a person from an annotation file (read back as that id);
- a joint: a KeyPointLabels region, one label per joint name, whose `parentID` is its person's
  region id. Label Studio keeps `parentID` through the labeller's edits (its outliner shows
  the joints nested under their person; deleting a person re-parents its joints to nothing)
  and exports it, as it keeps region ids;
- visibility: a per-region Choices result sharing the joint's region id: "occluded" is COCO
  v=1, no choice is v=2 (visible); a joint without a region is unlabelled (v=0).

Coordinates: Label Studio stores x, y (and a box's width, height) in percent of the image's
`original_width` / `original_height`, 0 % at the image's left (top) edge and 100 % at its right
(bottom) edge. This toolkit's pixel coordinates are continuous with (0, 0) the image's top-left
corner (shards/crop.py), so a pixel is exactly x_px = x% / 100 * original_width: no half-pixel
shift.

Choices made on reading (each a count in the plan, never a silent loss):

- a task's annotation is its ground-truth one, else its most recently updated one that was
  not cancelled; tasks with none are counted (`task_without_annotation`, `cancelled_task`), as
  are the other annotations of a task (`other_annotation`);
- a joint without a parent (a labeller added it without nesting it) joins the smallest
  person box containing it; in no box: dropped (`no_person`). An annotation with joints but no
  box at all is one person whose box is its joints' extent;
- a joint named twice in one person: both dropped (`duplicate_joint`); a joint without a label
  (`no_label`); a joint outside the image (`outside_image`, as for COCO files);
- a rotated box counts by its axis-aligned extent; a task viewed rotated (`image_rotation` not
  0) is skipped (`malformed_annotation`);
- a label that is not a joint of the schema is an error naming it (a schema that is not the
  data's would corrupt every sample).

The keypoint schema: `--schema FILE` (the schema.toml that `shg labels export` writes beside
the tasks: names, flip pairs, skeleton, sigmas), else the known layout (COCO person, MPII,
CrowdPose, AP-10K) that holds every joint label the export uses.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
import urllib.parse
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .coco import ImageJob, Person, Plan, drop_outside_image
from .manifest import DataError, read_json_file
from .schema import KNOWN, KeypointSchema, SchemaError, apply_schema_file, from_category

PERSON = "person"
"""from_name of the person boxes (RectangleLabels) in the generated labelling config."""
KEYPOINTS = "keypoints"
"""from_name of the joints (KeyPointLabels, one label per joint name)."""
VISIBILITY = "visibility"
"""from_name of the per-region Choices that mark a joint occluded (COCO v=1)."""
IMAGE = "image"
"""name of the Image object tag (to_name of every result)."""
OCCLUDED = "occluded"
ANN_PREFIX = "ann-"
"""A person region's id: ANN_PREFIX + its COCO annotation id (persons of annotation files)."""
_ANN_ID = re.compile(r"^ann-(\d+)$")
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")  # Label Studio prefixes uploaded file names


def person_region_id(ann_id: int) -> str:
    return f"{ANN_PREFIX}{ann_id}"


def percent(value: float, size: float) -> float:
    """Pixels to Label Studio's percent of the image side."""
    return value / size * 100.0


def pixels(value: float, size: float) -> float:
    """Label Studio's percent of the image side to pixels."""
    return value / 100.0 * size


# ----------------------------------------------------------------------------- schema
def schema_from_file(path: str | Path, labels: set[str] | None = None) -> KeypointSchema:
    """A schema file with `names` (what shg labels export writes) as a whole schema; one
    without names corrects the known layout of `labels`."""
    import tomllib

    path = Path(path)
    if not path.is_file():
        raise SchemaError(f"{path}: schema file not found")
    try:
        raw = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SchemaError(f"{path}: invalid TOML ({exc})") from None
    names = raw.get("names")
    if names is None:
        return apply_schema_file(known_from_labels(labels or set(), str(path)), path)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise SchemaError(f"{path}: names must be a list of joint names")
    if "flip_pairs" in raw:  # the file's pairs replace the ones derived from the names
        base = KeypointSchema(tuple(names), tuple(range(len(names))), name=str(raw.get("name", "")))
    else:
        base = from_category({"name": raw.get("name", ""), "keypoints": names}, str(path))
    return apply_schema_file(base, path)


def known_from_labels(labels: set[str], where: str) -> KeypointSchema:
    """The known layout holding every joint label; none or several is an error asking for a
    schema file."""
    fits = [s for s in KNOWN if labels <= set(s.names)]
    if len(fits) == 1 and labels:
        return fits[0]
    used = ", ".join(sorted(labels)[:6]) + (", ..." if len(labels) > 6 else "")
    if not labels:
        raise SchemaError(f"{where}: no joint labels to tell the keypoint schema from; give "
                          "--schema FILE (shg labels export writes schema.toml)")
    if fits:
        raise SchemaError(f"{where}: the joint labels ({used}) fit "
                          f"{' and '.join(s.name for s in fits)}; give --schema FILE "
                          "(shg labels export writes schema.toml)")
    raise SchemaError(f"{where}: the joint labels ({used}) are not a known layout (COCO "
                      "person, MPII, CrowdPose, AP-10K); give --schema FILE with their names "
                      "(shg labels export writes schema.toml)")


# ----------------------------------------------------------------------------- reading
@dataclass
class _Region:
    id: str
    type: str
    value: dict
    parent: str | None
    width: float | None  # the result's original_width / original_height, when given
    height: float | None
    choices: list = field(default_factory=list)


def _tasks(path: Path) -> tuple[list, bytes]:
    tasks, raw = read_json_file(path, "Label Studio export")
    if isinstance(tasks, dict) and "data" in tasks:
        tasks = [tasks]
    if not isinstance(tasks, list) or not all(isinstance(t, dict) for t in tasks):
        raise DataError(f"{path}: not a Label Studio JSON export (a list of tasks)")
    if tasks and not any("data" in t for t in tasks):
        raise DataError(f"{path}: not Label Studio's JSON export (tasks without 'data': JSON-MIN "
                        "or CSV lose the region ids and parents; export as JSON)")
    return tasks, raw


def _chosen(task: dict, filtered: Counter) -> dict | None:
    """The task's annotation to use: its ground truth, else the latest not cancelled."""
    anns = [a for a in task.get("annotations") or [] if isinstance(a, dict)]
    usable = [a for a in anns if not a.get("was_cancelled")]
    if not usable:
        filtered["cancelled_task" if anns else "task_without_annotation"] += 1
        return None
    usable.sort(key=lambda a: (bool(a.get("ground_truth")),
                               str(a.get("updated_at") or a.get("created_at") or ""),
                               a.get("id") if isinstance(a.get("id"), int) else 0))
    if len(anns) > 1:
        filtered["other_annotation"] += len(anns) - 1
    return usable[-1]


def _regions(result: list) -> tuple[dict[str, _Region], float | None]:
    """Regions by id (a per-region Choices result joins the region with its id), and the
    image_rotation the annotation was made with (None when none is given)."""
    regions: dict[str, _Region] = {}
    choices: list = []
    rotation = None
    for n, item in enumerate(result):
        if not isinstance(item, dict):
            raise ValueError("a result is not an object")
        kind = item.get("type")
        if item.get("image_rotation"):
            rotation = item["image_rotation"]
        if kind == "relation":
            continue
        rid = str(item.get("id") or f"#{n}")
        if kind == "choices":
            choices.append((rid, item.get("value", {}).get("choices") or []))
            continue
        value = item.get("value")
        if not isinstance(value, dict):
            raise ValueError(f"result {rid} has no value")
        regions[rid] = _Region(rid, kind, value, item.get("parentID") or None,
                               item.get("original_width"), item.get("original_height"))
    for rid, chosen in choices:
        if rid in regions:
            regions[rid].choices += chosen
    return regions, rotation


def _xy(region: _Region, size: tuple[int, int]) -> tuple[float, float]:
    w = float(region.width or size[0])
    h = float(region.height or size[1])
    return pixels(float(region.value["x"]), w), pixels(float(region.value["y"]), h)


def _box(region: _Region, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A rectangle's axis-aligned extent in pixels (rotated about its top-left corner, as
    Label Studio rotates)."""
    w = float(region.width or size[0])
    h = float(region.height or size[1])
    v = region.value
    x, y = pixels(float(v["x"]), w), pixels(float(v["y"]), h)
    bw, bh = pixels(float(v["width"]), w), pixels(float(v["height"]), h)
    angle = float(v.get("rotation") or 0.0)
    if angle:
        c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
        xs = [x + u * c - t * s for u, t in ((0, 0), (bw, 0), (bw, bh), (0, bh))]
        ys = [y + u * s + t * c for u, t in ((0, 0), (bw, 0), (bw, bh), (0, bh))]
        return min(xs), min(ys), max(xs) - min(xs), max(ys) - min(ys)
    return x, y, bw, bh


def _labels(region: _Region) -> list:
    for key in ("keypointlabels", "rectanglelabels", "labels"):
        if isinstance(region.value.get(key), list):
            return region.value[key]
    return []


def _file_name(data: dict, images: Path) -> str | None:
    """The image's path relative to `images`: data.file_name, else from the image URL (a
    local-files `?d=` path, relative to the server's document root, or the URL's path): the
    longest tail of it that exists under `images`, or its file name (without the prefix
    Label Studio gives uploaded files)."""
    name = data.get("file_name")
    if isinstance(name, str) and name:
        return name
    url = data.get(IMAGE)
    if not isinstance(url, str):
        url = next((v for v in data.values() if isinstance(v, str) and "/" in v), None)
    if not url:
        return None
    parsed = urllib.parse.urlparse(url)
    local = urllib.parse.parse_qs(parsed.query).get("d")  # (parse_qs decodes it)
    parts = Path(local[0] if local else urllib.parse.unquote(parsed.path)).parts
    parts = tuple(p for p in parts if p not in ("/", ""))
    if not parts:
        return None
    tails = [str(Path(*parts[i:])) for i in range(len(parts))]
    tails.append(_UPLOAD_PREFIX.sub("", parts[-1]))
    return next((t for t in tails if (images / t).is_file()), tails[-1])


def _image_size(data: dict, regions: dict[str, _Region], images: Path,
                file_name: str) -> tuple[int, int] | None:
    w, h = data.get("width"), data.get("height")
    if isinstance(w, (int, float)) and isinstance(h, (int, float)) and w > 0 and h > 0:
        return int(w), int(h)
    for r in regions.values():
        if r.width and r.height:
            return int(round(r.width)), int(round(r.height))
    try:
        from PIL import Image

        with Image.open(images / file_name) as im:
            return im.size
    except Exception:  # noqa: BLE001 - PIL raises many kinds for unreadable files
        return None


@dataclass
class _Found:
    """A person read from a task, before its annotation id is settled."""
    region_id: str
    ann_id: int | None
    bbox: tuple[float, float, float, float]
    keypoints: np.ndarray
    category_id: int
    area: float | None = None


def _persons(task_no: str, regions: dict[str, _Region], size: tuple[int, int],
             schema: KeypointSchema, categories: dict, default_category: int, areas: dict,
             dropped: Counter, path: Path) -> list[_Found]:
    k = schema.num_joints
    boxes = {rid: r for rid, r in regions.items()
             if r.type in ("rectanglelabels", "rectangle")}
    joints = [r for r in regions.values() if r.type in ("keypointlabels", "keypoint")]
    placed: dict[str, dict[int, list[tuple[float, float, float]]]] = {rid: {} for rid in boxes}
    extents = {rid: _box(r, size) for rid, r in boxes.items()}
    loose: dict[int, list] = {}

    def owner(region: _Region) -> str | None:
        seen, parent = set(), region.parent
        while parent and parent not in seen:
            if parent in boxes:
                return parent
            seen.add(parent)
            parent = regions[parent].parent if parent in regions else None
        x, y = _xy(region, size)
        inside = [(b[2] * b[3], rid) for rid, b in extents.items()
                  if b[0] <= x <= b[0] + b[2] and b[1] <= y <= b[1] + b[3]]
        return min(inside)[1] if inside else None

    for region in joints:
        labels = _labels(region)
        if len(labels) != 1:
            dropped["no_label" if not labels else "ambiguous_label"] += 1
            continue
        j = schema.index(str(labels[0]))
        if j is None:
            raise SchemaError(f"{path}: task {task_no} labels a joint {labels[0]!r}, which the "
                              f"schema {schema.describe()} does not have; give the schema of "
                              "the export (--schema FILE)")
        x, y = _xy(region, size)
        v = 1.0 if OCCLUDED in region.choices else 2.0
        if boxes:
            rid = owner(region)
            if rid is None:
                dropped["no_person"] += 1
                continue
            placed[rid].setdefault(j, []).append((x, y, v))
        else:
            loose.setdefault(j, []).append((x, y, v))

    def keypoints(found: dict[int, list]) -> np.ndarray:
        kps = np.zeros((k, 3))
        for j, points in found.items():
            if len(points) > 1:
                dropped["duplicate_joint"] += len(points)
                continue
            kps[j] = points[0]
        return kps

    persons = []
    for rid, region in boxes.items():
        labels = _labels(region)
        category = categories.get(str(labels[0]), default_category) if labels \
            else default_category
        m = _ANN_ID.match(rid)
        area = areas.get(rid)
        persons.append(_Found(rid, int(m.group(1)) if m else None, extents[rid],
                              keypoints(placed[rid]), int(category),
                              float(area) if isinstance(area, (int, float)) else None))
    if loose:
        kps = keypoints(loose)
        labelled = kps[kps[:, 2] > 0, :2]
        if len(labelled):
            x0, y0 = labelled.min(0)
            x1, y1 = labelled.max(0)
            persons.append(_Found("", None, (float(x0), float(y0), float(x1 - x0),
                                             float(y1 - y0)), kps, default_category))
    return persons


def make_labelstudio_plan(path: str | Path, images: str | Path, split: str,
                          min_keypoints: int = 1, seed: int = 0,
                          schema_file: str | None = None) -> Plan:
    """The persons of a Label Studio JSON export, grouped by image, images in a seeded random
    order (as make_plan does for COCO files)."""
    path, images = Path(path), Path(images)
    tasks, raw = _tasks(path)
    filtered, skipped, dropped = Counter(), Counter(), Counter()
    first: list[str] = []

    def skip(reason: str, what: str, count: int = 1) -> None:
        skipped[reason] += count
        if not first:
            first.append(f"{path}: {what}: {reason}")

    chosen = [(t, _chosen(t, filtered)) for t in tasks]
    labels = {str(lab) for _, ann in chosen if ann for item in ann.get("result") or []
              if isinstance(item, dict) and item.get("type") == "keypointlabels"
              for lab in (item.get("value") or {}).get("keypointlabels") or []}
    schema = schema_from_file(schema_file, labels) if schema_file \
        else known_from_labels(labels, str(path))
    category_ids: set[int] = set()

    found_by_image: dict[int, tuple[ImageJob, list[_Found]]] = {}
    for n, (task, ann) in enumerate(chosen):
        if ann is None:
            continue
        task_no = str(task.get("id", f"#{n}"))
        data = task.get("data") if isinstance(task.get("data"), dict) else {}
        try:
            regions, rotation = _regions(ann.get("result") or [])
        except (ValueError, TypeError, AttributeError) as exc:
            skip("malformed_annotation", f"task {task_no} ({exc})")
            continue
        if rotation:
            skip("malformed_annotation", f"task {task_no} was labelled with the image rotated "
                 f"{rotation} degrees (rotate the image file instead)")
            continue
        file_name = _file_name(data, images)
        if file_name is None:
            skip("malformed_annotation", f"task {task_no} names no image")
            continue
        size = _image_size(data, regions, images, file_name)
        categories = data.get("categories") if isinstance(data.get("categories"), dict) else {}
        default_category = next(iter(categories.values()), None) or \
            (schema.categories or (1,))[0]
        if size is None:
            skip("missing_image", f"task {task_no} ({file_name}: no size in the task, its "
                 "results or the image)", max(1, sum(r.type.startswith("rectangle")
                                                     for r in regions.values())))
            continue
        try:
            areas = data.get("areas") if isinstance(data.get("areas"), dict) else {}
            persons = _persons(task_no, regions, size, schema, categories, int(default_category),
                               areas, dropped, path)
        except (KeyError, TypeError, ValueError) as exc:
            skip("malformed_annotation", f"task {task_no} (a region without {exc})")
            continue
        image_id = data.get("image_id")
        if not isinstance(image_id, int):
            image_id = task.get("id") if isinstance(task.get("id"), int) else n
        if image_id in found_by_image:
            filtered["duplicate_task"] += 1
            continue
        job = ImageJob(int(image_id), file_name, int(size[0]), int(size[1]))
        found_by_image[image_id] = (job, persons)
        category_ids.update(int(v) for v in categories.values() if isinstance(v, int))

    # annotation ids: a person from an annotation file keeps its id; the others (and a second
    # person claiming a kept id) get new ones after the largest, in task order
    used: set[int] = set()
    fresh: list[_Found] = []
    for _, (_, persons) in sorted(found_by_image.items()):
        for p in persons:
            if p.ann_id is None or p.ann_id in used:
                fresh.append(p)
            else:
                used.add(p.ann_id)
    next_id = max(used, default=0) + 1
    for p in fresh:
        p.ann_id, next_id = next_id, next_id + 1

    jobs = []
    for image_id, (job, persons) in sorted(found_by_image.items()):
        for p in persons:
            where = f"task image {image_id} person {p.region_id or p.ann_id}"
            x, y, w, h = p.bbox
            if not all(math.isfinite(v) for v in p.bbox) or w <= 0 or h <= 0:
                skip("bad_bbox", f"{where} bbox {[round(v, 2) for v in p.bbox]}")
                continue
            if x >= job.width or y >= job.height or x + w <= 0 or y + h <= 0:
                skip("bbox_outside_image", f"{where} bbox {[round(v, 2) for v in p.bbox]}")
                continue
            if drop_outside_image(p.keypoints, job.width, job.height, dropped) < min_keypoints:
                filtered["too_few_keypoints"] += 1
                continue
            job.persons.append(Person(int(p.ann_id), (x, y, w, h), p.keypoints,
                                      p.area if p.area is not None else float(w * h),
                                      p.category_id))
        if job.persons:
            job.persons.sort(key=lambda q: q.ann_id)
            jobs.append(job)
    random.Random(seed).shuffle(jobs)
    if category_ids and not schema.categories:
        schema = KeypointSchema(**{**schema.__dict__, "categories": tuple(sorted(category_ids))})
    return Plan(split, jobs, str(path.absolute()), hashlib.sha256(raw).hexdigest(), filtered,
                skipped, dropped, first[0] if first else None, schema)
