"""What a labelling export starts from, read into one shape: the images, the persons of each
(a COCO annotation file's annotations, or a model's predictions: COCO keypoint results) and
the label audit's suspects.

    annotations  a COCO keypoint annotation file (any layout): its images and persons; iscrowd
                 regions, other categories and malformed annotations are counted, not taken
    results      a model's predictions: `shg predict`'s results.jsonl (each line names its image
                 file and size) or results.json (COCO keypoint results: image ids only, so the
                 images come from --ann, or from the folder's files named by their COCO id);
                 a joint is labelled when its score reaches min_keypoint_score
    audit        audit.json {"suspects": [{"annotation_id", "image_id", "kind", "joints",
                 "score"}]}: which annotations (and joints, by name or index) to look at again
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from shards.coco import plan_schema, stream_coco
from shards.manifest import DataError, read_json_file
from shards.schema import KeypointSchema, SchemaError, apply_schema_file, stored

from ..errors import UserError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
PERSON_LAYOUTS = {"coco-person": "person", "mpii": "person", "crowdpose": "person"}
"""The category name of the known layouts that label people (the others: the schema's name)."""


@dataclass
class ImageInfo:
    image_id: int
    file_name: str
    """Relative to the images folder."""
    width: int
    height: int


@dataclass
class PersonIn:
    bbox: tuple[float, float, float, float]
    keypoints: np.ndarray
    """(K, 3): x, y in image pixels and COCO visibility (0 unlabelled, 1 occluded, 2 visible)."""
    category_id: int
    ann_id: int | None = None
    """The annotation's id (annotation files); None for predictions."""
    area: float | None = None
    score: float | None = None
    """A prediction's person score."""
    keypoint_scores: np.ndarray | None = None
    """A prediction's per-joint confidence."""
    suspects: list = field(default_factory=list)
    """Suspect entries of the audit naming this annotation: (kind, joint indices, score)."""


@dataclass
class Source:
    schema: KeypointSchema
    categories: dict[int, str]
    """Category id -> name (the person boxes' labels)."""
    images: dict[int, ImageInfo]
    persons: dict[int, list[PersonIn]]
    """image id -> its persons (images without persons are not keys)."""
    kind: str
    """"annotations" or "predictions"."""
    path: str
    counts: Counter = field(default_factory=Counter)
    """What was not taken, by reason."""
    first_offender: str | None = None
    audited: bool = False
    """An audit was applied: only its flagged annotations' images are left."""

    def count(self, reason: str, what: str, n: int = 1) -> None:
        self.counts[reason] += n
        if self.first_offender is None:
            self.first_offender = f"{what}: {reason}"


def _bbox(values, where: str) -> tuple[float, float, float, float]:
    if not (isinstance(values, list) and len(values) == 4
            and all(isinstance(v, (int, float)) for v in values)):
        raise ValueError(f"{where}: bbox is not [x, y, w, h]")
    return tuple(float(v) for v in values)  # type: ignore[return-value]


# ----------------------------------------------------------------------------- annotations
def read_annotations(path: str | Path, category: str | int | None = None,
                     schema_file: str | None = None) -> Source:
    """A COCO keypoint annotation file's images and persons."""
    path = Path(path)
    coco = stream_coco(path)
    schema = plan_schema({"categories": coco.categories}, path, category, schema_file)
    wanted = set(schema.categories)
    names = {c["id"]: str(c.get("name", c["id"])) for c in coco.categories
             if isinstance(c, dict) and "id" in c and (not wanted or c["id"] in wanted)}
    images = {}
    for image_id, im in coco.images.items():
        try:
            images[int(image_id)] = ImageInfo(int(image_id), str(im["file_name"]),
                                              int(im["width"]), int(im["height"]))
        except (KeyError, TypeError, ValueError):
            raise DataError(f"{path}: image {image_id} lacks file_name, width or height") from None
    source = Source(schema, names, images, {}, "annotations", str(path))
    for ann_id in coco.malformed:
        source.count("malformed_annotation", f"{path}: annotation {ann_id}")
    k = schema.num_joints
    for ann in coco.annotations:
        ann_id = ann["id"]
        if wanted and ann["category_id"] not in wanted:
            source.counts["other_category"] += 1
            continue
        if ann.get("iscrowd", 0):
            source.counts["iscrowd"] += 1
            continue
        if ann["image_id"] not in images:
            source.count("unknown_image", f"{path}: annotation {ann_id}")
            continue
        kps = ann.get("keypoints")
        if not isinstance(kps, np.ndarray) or kps.ndim != 1:
            source.count("malformed_annotation", f"{path}: annotation {ann_id} (keypoints)")
            continue
        if kps.size != 3 * k:
            raise SchemaError(f"{path}: annotation {ann_id} has {kps.size} keypoint values; its "
                              f"category's {k} joints need {3 * k} (x, y, v each)")
        try:
            bbox = _bbox(ann.get("bbox"), f"annotation {ann_id}")
        except ValueError:
            source.count("malformed_annotation", f"{path}: annotation {ann_id} (bbox)")
            continue
        kps = kps.reshape(k, 3).copy()
        kps[kps[:, 2] <= 0] = 0.0
        area = ann.get("area")
        source.persons.setdefault(ann["image_id"], []).append(PersonIn(
            bbox, kps, int(ann["category_id"]), int(ann_id),
            float(area) if isinstance(area, (int, float)) else None))
    for persons in source.persons.values():
        persons.sort(key=lambda p: p.ann_id)
    return source


# ----------------------------------------------------------------------------- predictions
def results_schema(model: str | None, ann: str | None, schema_file: str | None,
                   where: str) -> KeypointSchema:
    """The keypoint schema of a results file: the model's (its weights' metadata), else an
    annotation file's category, else a schema file with names."""
    if model:
        schema = stored(_weights_metadata(model))
    elif ann:
        coco = stream_coco(ann)
        schema = plan_schema({"categories": coco.categories}, Path(ann))
    elif schema_file:
        from shards.labelstudio import schema_from_file

        return schema_from_file(schema_file)
    else:
        raise UserError(f"{where}: a results file does not name its joints; give the model "
                        "(--model M.safetensors), an annotation file of the layout (--ann) or "
                        "a schema file with names (--schema)")
    return apply_schema_file(schema, schema_file) if schema_file else schema


def _weights_metadata(path: str) -> dict:
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if p.is_dir():
        p = p / "model.safetensors"
    if not p.is_file():
        raise UserError(f"{p}: no weights file")
    try:
        with safe_open(str(p), framework="np") as f:
            return {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise UserError(f"{p}: cannot read the weights' metadata ({exc})") from None


def _relative(file: str, images: Path) -> str:
    """A results line's image file as a path under the images folder."""
    p = Path(file)
    for base in (p, Path.cwd() / p):
        try:
            return str(base.resolve().relative_to(images.resolve()))
        except ValueError:
            pass
    return p.name


def _size(images: Path, name: str) -> tuple[int, int] | None:
    from PIL import Image

    try:
        with Image.open(images / name) as im:
            return im.size
    except Exception:  # noqa: BLE001 - PIL raises many kinds for unreadable files
        return None


def read_results(path: str | Path, images: str | Path, schema: KeypointSchema,
                 ann: str | None = None, min_keypoint_score: float = 0.2,
                 min_score: float = 0.0) -> Source:
    """A model's predictions as persons: results.jsonl (lines name their image) or results.json
    (image ids: the images of `ann`, else the folder's files named by their COCO id)."""
    path, images = Path(path), Path(images)
    if not path.is_file():
        raise DataError(f"{path}: results file not found")
    k = schema.num_joints
    coco = stream_coco(ann) if ann else None
    named = {c["id"]: str(c["name"]) for c in (coco.categories if coco else [])
             if isinstance(c, dict) and "id" in c and "name" in c}
    # the boxes' label: the category's name (from --ann), else what the layout labels
    default = PERSON_LAYOUTS.get(schema.name, schema.name or "person")
    categories = {c: named.get(c, default) for c in (schema.categories or (1,))}
    source = Source(schema, categories, {}, {}, "predictions", str(path))
    if path.suffix == ".jsonl":
        lines = []
        with open(path, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.endswith(b"\n") or not raw.strip():
                    continue  # a line cut by a kill (shg predict's stream)
                try:
                    lines.append(json.loads(raw))
                except json.JSONDecodeError as exc:
                    raise DataError(f"{path}: line {n} is not JSON ({exc})") from None
        results = []
        for n, line in enumerate(lines, 1):
            if "frame" in line:
                raise DataError(f"{path}: line {n} is a video frame; label images (a video's "
                                "frames need extracting first)")
            if line.get("skipped"):
                source.count("skipped_image", f"{path}: line {n} ({line.get('file')})")
                continue
            try:
                image_id = int(line["image_id"])
                info = ImageInfo(image_id, _relative(str(line["file"]), images),
                                 int(line["width"]), int(line["height"]))
            except (KeyError, TypeError, ValueError):
                raise DataError(f"{path}: line {n} lacks image_id, file, width or height "
                                "(not shg predict's results stream)") from None
            source.images[image_id] = info
            results += line.get("persons") or []
    else:
        results, _ = read_json_file(path, "results file")
        if not isinstance(results, list):
            raise DataError(f"{path}: not COCO keypoint results (a list of "
                            "{image_id, category_id, keypoints, score})")
        if coco:
            for image_id, im in coco.images.items():
                source.images[int(image_id)] = ImageInfo(int(image_id), str(im["file_name"]),
                                                         int(im["width"]), int(im["height"]))
        else:
            for file in sorted(p for p in images.rglob("*")
                               if p.suffix.lower() in IMAGE_SUFFIXES):
                if file.stem.isdigit():
                    source.images.setdefault(int(file.stem), ImageInfo(
                        int(file.stem), str(file.relative_to(images)), 0, 0))
    for n, result in enumerate(results):
        try:
            image_id = int(result["image_id"])
            kps = np.asarray(result["keypoints"], dtype=np.float64)
            score = float(result.get("score", 1.0))
        except (KeyError, TypeError, ValueError):
            source.count("malformed_result", f"{path}: result {n}")
            continue
        if kps.shape != (3 * k,):
            raise SchemaError(f"{path}: result {n} has {kps.size} keypoint values; the schema "
                              f"{schema.describe()} needs {3 * k}")
        info = source.images.get(image_id)
        if info is None:
            source.count("unknown_image", f"{path}: result {n} (image {image_id}: "
                         + ("not in --ann" if ann else "no image file named by this id; give "
                            "results.jsonl or --ann") + ")")
            continue
        if not info.width:
            size = _size(images, info.file_name)
            if size is None:
                source.count("missing_image", f"{path}: result {n} ({info.file_name})")
                continue
            info.width, info.height = size
        if score < min_score:
            source.counts["below_min_score"] += 1
            continue
        kps = kps.reshape(k, 3)
        conf = kps[:, 2].copy()
        kept = np.zeros((k, 3))
        good = conf >= min_keypoint_score
        kept[good, :2] = kps[good, :2]
        kept[good, 2] = 2.0
        source.counts["keypoints_below_min_score"] += int((~good).sum())
        if "bbox" in result:
            try:
                bbox = _bbox(result["bbox"], f"result {n}")
            except ValueError:
                source.count("malformed_result", f"{path}: result {n} (bbox)")
                continue
        elif good.any():
            (x0, y0), (x1, y1) = kps[good, :2].min(0), kps[good, :2].max(0)
            bbox = (float(x0), float(y0), float(x1 - x0), float(y1 - y0))
        else:
            source.counts["no_keypoint_above_min_score"] += 1
            continue
        category = int(result.get("category_id", next(iter(categories))))
        source.persons.setdefault(image_id, []).append(PersonIn(
            bbox, kept, category if category in categories else next(iter(categories)),
            score=score, keypoint_scores=conf))
    return source


# ----------------------------------------------------------------------------- audit
def apply_audit(source: Source, path: str | Path) -> int:
    """Attach the audit's suspects to the annotations they name and keep only the images with
    a suspect; returns the number of suspects attached (the others are counted)."""
    path = Path(path)
    audit, _ = read_json_file(path, "audit file")
    suspects = audit.get("suspects") if isinstance(audit, dict) else None
    if not isinstance(suspects, list):
        raise DataError(f"{path}: not an audit file (no 'suspects' list)")
    if source.kind != "annotations":
        raise UserError(f"{path}: an audit names the annotations of an annotation file; give it "
                        "with --ann, not with predictions")
    by_id = {p.ann_id: p for persons in source.persons.values() for p in persons}
    attached = 0
    names = source.schema.names
    for n, s in enumerate(suspects):
        if not isinstance(s, dict) or "annotation_id" not in s:
            raise DataError(f"{path}: suspect {n} has no annotation_id")
        person = by_id.get(s["annotation_id"])
        if person is None:
            source.count("suspect_of_unknown_annotation",
                         f"{path}: suspect {n} (annotation {s['annotation_id']})")
            continue
        joints = []
        for j in s.get("joints") or []:
            if isinstance(j, int) and 0 <= j < len(names):
                joints.append(j)
            elif isinstance(j, str) and j in names:
                joints.append(names.index(j))
            else:
                raise DataError(f"{path}: suspect {n} names joint {j!r}, not one of the "
                                f"schema's {source.schema.describe()}")
        score = s.get("score")
        person.suspects.append((str(s.get("kind") or "suspect"), joints,
                                float(score) if isinstance(score, (int, float)) else None))
        attached += 1
    flagged = {image_id for image_id, persons in source.persons.items()
               if any(p.suspects for p in persons)}
    source.counts["images_without_suspects"] += len(source.persons) - len(flagged)
    source.persons = {i: p for i, p in source.persons.items() if i in flagged}
    source.audited = True
    return attached
