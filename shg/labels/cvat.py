"""COCO Keypoints 1.0 files for CVAT (`shg labels export --to cvat`, and the label audit's file of
flagged annotations), and the check that a file is one CVAT imports.

CVAT imports "COCO Keypoints 1.0" as a single .json (or a zip with
annotations/person_keypoints_<subset>.json) through Datumaro's COCO person_keypoints reader
(docs.cvat.ai, Dataset management > Formats > COCO Keypoints; cvat/apps/dataset_manager/
formats/coco.py; datumaro/plugins/data_formats/coco/base.py). What that reader requires, and
`cvat_problems` checks:

- top level: `images`, `annotations` and `categories` lists (`info` and `licenses` are not
  required);
- a category: an integer `id`, a string `name`, a `keypoints` list of joint names and a
  `skeleton` list of 1-based joint pairs (CVAT makes the task's skeleton from them: each
  point a sublabel named as the joint);
- an image: an integer `id`, a string `file_name` (matched to the task's frames by name),
  integer `width` and `height` when given;
- an annotation: an integer `id` (unique: Datumaro groups a person's shapes by it), an
  integer `image_id` of a listed image, an integer `category_id` of a listed category,
  an integer `iscrowd`, a `keypoints` list of x, y, v triplets (3 per joint of its category,
  v 0, 1 or 2), a `segmentation` (a list, possibly empty, or an RLE dict), a `bbox` list of 4
  numbers; `score` a number and `attributes` an object when present.

CrowdPose's and AP-10K's own files have no `segmentation` and OneHand10K's no `num_keypoints`:
what is written here completes them (segmentation [], iscrowd 0, num_keypoints, area from
the box), keeps every other field of an annotation as it was, writes the category's skeleton
from the keypoint schema (CrowdPose's own category carries COCO's 17-joint skeleton for its 14
joints, edges CVAT cannot make), and records the audit's suspicion of an annotation in its
`attributes` ("suspect": kind, joints, score), which CVAT imports where the skeleton label
has that attribute.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from shards import atomic
from shards.manifest import DataError

from .sources import Source

SUBSET = "default"
FILE_NAME = f"person_keypoints_{SUBSET}.json"
"""Datumaro takes the subset from the name after person_keypoints_."""


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def cvat_problems(dataset, limit: int = 20) -> list[str]:
    """What keeps CVAT's COCO Keypoints 1.0 import from taking `dataset` (a loaded file), at
    most `limit` lines; empty when it is fine."""
    problems: list[str] = []

    def bad(text: str) -> None:
        if len(problems) < limit:
            problems.append(text)

    if not isinstance(dataset, dict):
        return ["not a JSON object with images, annotations and categories"]
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            bad(f"no '{key}' list")
    if problems:
        return problems
    joints: dict[int, int] = {}
    for n, cat in enumerate(dataset["categories"]):
        where = f"category {cat.get('id', n) if isinstance(cat, dict) else n}"
        if not isinstance(cat, dict):
            bad(f"{where}: not an object")
            continue
        if not _int(cat.get("id")):
            bad(f"{where}: 'id' is not an integer")
        if not isinstance(cat.get("name"), str):
            bad(f"{where}: 'name' is not a string")
        names, skeleton = cat.get("keypoints"), cat.get("skeleton")
        if not (isinstance(names, list) and names and all(isinstance(s, str) for s in names)):
            bad(f"{where}: 'keypoints' is not a list of joint names")
            continue
        if len(set(names)) != len(names):
            bad(f"{where}: a joint is named twice in 'keypoints'")
        if not isinstance(skeleton, list):
            bad(f"{where}: no 'skeleton' list")
        else:
            for edge in skeleton:
                if not (isinstance(edge, list) and len(edge) == 2
                        and all(_int(v) and 1 <= v <= len(names) for v in edge)):
                    bad(f"{where}: skeleton edge {edge!r} is not two joint numbers "
                        f"1..{len(names)}")
                    break
        if _int(cat.get("id")):
            if cat["id"] in joints:
                bad(f"{where}: the id is used twice")
            joints[cat["id"]] = len(names)
    images = set()
    for n, im in enumerate(dataset["images"]):
        if not isinstance(im, dict) or not _int(im.get("id")):
            bad(f"image {n}: 'id' is not an integer")
            continue
        if im["id"] in images:
            bad(f"image {im['id']}: the id is used twice")
        images.add(im["id"])
        if not isinstance(im.get("file_name"), str) or not im["file_name"]:
            bad(f"image {im['id']}: 'file_name' is not a string")
        for key in ("width", "height"):
            if key in im and not _int(im[key]):
                bad(f"image {im['id']}: '{key}' is not an integer")
    ids = set()
    for n, ann in enumerate(dataset["annotations"]):
        if not isinstance(ann, dict) or not _int(ann.get("id")):
            bad(f"annotation {n}: 'id' is not an integer")
            continue
        where = f"annotation {ann['id']}"
        if ann["id"] in ids:
            bad(f"{where}: the id is used twice")
        ids.add(ann["id"])
        if not _int(ann.get("image_id")) or ann["image_id"] not in images:
            bad(f"{where}: 'image_id' {ann.get('image_id')!r} is not a listed image")
        if not _int(ann.get("category_id")) or ann["category_id"] not in joints:
            bad(f"{where}: 'category_id' {ann.get('category_id')!r} is not a listed category "
                "with keypoints")
        if not _int(ann.get("iscrowd")):
            bad(f"{where}: 'iscrowd' is missing or not an integer")
        kps = ann.get("keypoints")
        if not (isinstance(kps, list) and all(_number(v) for v in kps)):
            bad(f"{where}: 'keypoints' is not a list of numbers")
        elif ann.get("category_id") in joints and len(kps) != 3 * joints[ann["category_id"]]:
            bad(f"{where}: {len(kps)} keypoint values; its category's "
                f"{joints[ann['category_id']]} joints need {3 * joints[ann['category_id']]}")
        elif any(v not in (0, 1, 2) for v in kps[2::3]):
            bad(f"{where}: a visibility is not 0, 1 or 2")
        if not isinstance(ann.get("segmentation"), (list, dict)):
            bad(f"{where}: 'segmentation' is missing (an empty list will do)")
        box = ann.get("bbox")
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
            bad(f"{where}: 'bbox' is not 4 numbers")
        if "score" in ann and not _number(ann["score"]):
            bad(f"{where}: 'score' is not a number")
        if "attributes" in ann and not isinstance(ann["attributes"], dict):
            bad(f"{where}: 'attributes' is not an object")
    return problems


def _complete(ann: dict) -> dict:
    """The fields CVAT's reader requires that real files leave out, as COCO defines them."""
    ann.setdefault("iscrowd", 0)
    ann.setdefault("segmentation", [])
    kps = ann.get("keypoints") or []
    ann.setdefault("num_keypoints", sum(1 for v in kps[2::3] if v > 0))
    box = ann.get("bbox")
    if "area" not in ann and isinstance(box, list) and len(box) == 4:
        ann["area"] = float(box[2] * box[3])
    return ann


def _suspect_attribute(suspects: list, names: tuple[str, ...]) -> str:
    return "; ".join(
        f"{kind}: {', '.join(names[j] for j in joints) or 'whole annotation'}"
        + (f" ({score:.2f})" if score is not None else "") for kind, joints, score in suspects)


def write_coco_keypoints(source: Source, out: str | Path) -> dict:
    """A COCO Keypoints 1.0 file CVAT imports: the source's persons (an annotation file's,
    all or only the audit's flagged ones, with every field of the original annotation; or
    predictions, as annotations with new ids and their score). Returns what was written."""
    import ijson

    out = Path(out)
    if out.suffix != ".json":
        out = out / FILE_NAME
    out.parent.mkdir(parents=True, exist_ok=True)
    schema = source.schema
    skeleton = [[a + 1, b + 1] for a, b in schema.skeleton]
    counts: Counter = Counter()
    if source.kind == "annotations":
        keep = {p.ann_id: p for persons in source.persons.values() for p in persons
                if p.suspects or not source.audited}
        annotations, categories = [], []
        with open(source.path, "rb") as f:
            for ann in ijson.items(f, "annotations.item", use_float=True):
                person = keep.get(ann.get("id")) if isinstance(ann, dict) else None
                if person is None:
                    continue
                ann = _complete(ann)
                if person.suspects:
                    attributes = ann.get("attributes") if isinstance(ann.get("attributes"),
                                                                     dict) else {}
                    ann["attributes"] = {**attributes, "suspect": _suspect_attribute(
                        person.suspects, schema.names)}
                annotations.append(ann)
        with open(source.path, "rb") as f:
            for cat in ijson.items(f, "categories.item", use_float=True):
                if isinstance(cat, dict) and cat.get("id") in source.categories:
                    cat["skeleton"] = skeleton  # the schema's (CrowdPose's file has COCO's)
                    categories.append(cat)
    else:
        annotations, next_id = [], 1
        for image_id in sorted(source.persons):
            for p in source.persons[image_id]:
                kps = p.keypoints.copy()
                x, y, w, h = p.bbox
                annotations.append({
                    "id": next_id, "image_id": image_id, "category_id": p.category_id,
                    "keypoints": [round(float(v), 2) if i % 3 < 2 else int(v)
                                  for i, v in enumerate(kps.reshape(-1))],
                    "num_keypoints": int((kps[:, 2] > 0).sum()), "bbox": [x, y, w, h],
                    "area": float(w * h), "iscrowd": 0, "segmentation": [],
                    **({"score": round(float(p.score), 4)} if p.score is not None else {})})
                next_id += 1
        categories = [{"id": c, "name": name, "supercategory": name,
                       "keypoints": list(schema.names), "skeleton": skeleton}
                      for c, name in source.categories.items()]
    used = {a["image_id"] for a in annotations}
    images = [{"id": i.image_id, "file_name": i.file_name, "width": i.width,
               "height": i.height} for i in sorted(source.images.values(),
                                                    key=lambda i: i.image_id)
              if i.image_id in used]
    dataset = {"images": images, "annotations": annotations, "categories": categories}
    problems = cvat_problems(dataset)
    if problems:  # what this writes must be importable: a failure here is a bug to report
        raise DataError(f"{out}: would not import into CVAT: {problems[0]}")
    atomic.write_json(out, dataset)
    counts.update(images=len(images), annotations=len(annotations))
    return {**counts, "file": str(out)}
