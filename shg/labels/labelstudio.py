"""Label Studio tasks with pre-annotations, and the labelling config generated from the keypoint
schema: `shg labels export --to labelstudio`.

    OUT/tasks.json    a task per image ({"data": ..., "predictions": [...]}), for Label Studio's
                      import (the UI's Import button or its API)
    OUT/config.xml    the labelling interface: the image, a RectangleLabels box per person, a
                      KeyPointLabels label per joint (its hint names the joints the skeleton
                      connects it to; left joints warm colours, right cool, middle green), a
                      per-region "occluded" choice, and a header with what to check
    OUT/schema.toml   the keypoint schema (names, flip pairs, skeleton, sigmas), for
                      `shg shards build --format labelstudio --schema OUT/schema.toml`

The representation (person boxes, joints nested under them by parentID, occlusion as a
per-region choice, percent coordinates) is shards/labelstudio.py's, which reads the export
back. A person from an annotation file keeps its COCO id in its region id (`ann-<id>`) and its
area in `data.areas`; the audit's suspect joints carry a region `meta` text ("suspect: kind,
score"), their person box the list of joints to check, and the task `data.review` (shown in
the header) and `data.suspects` (a Data Manager column to sort or filter by).
"""

from __future__ import annotations

import colorsys
import re
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from xml.sax.saxutils import quoteattr

from shards import atomic
from shards.labelstudio import (ANN_PREFIX, IMAGE, KEYPOINTS, OCCLUDED, PERSON, VISIBILITY,
                                percent, person_region_id)
from shards.schema import KeypointSchema

from .sources import PersonIn, Source

POINT_SIZE = 0.4
"""A keypoint's drawn size in Label Studio (its value.width: percent of the image width)."""


# ----------------------------------------------------------------------------- config
def _side(schema: KeypointSchema, j: int) -> str:
    mirror = schema.flip_index[j]
    if mirror == j:
        return "middle"
    name = schema.names[j].lower()
    return "left" if "left" in name or re.match(r"^l[_\s\-.]", name) else "right"


def joint_colours(schema: KeypointSchema) -> list[str]:
    """A colour per joint: left joints in warm hues, right in cool ones, middle ones green
    (the mirror pairs get matching shades), as hex."""
    sides = [_side(schema, j) for j in range(schema.num_joints)]
    hues = {"left": (0.0, 0.15), "right": (0.5, 0.75), "middle": (0.28, 0.4)}
    colours = []
    for j, side in enumerate(sides):
        same = [i for i, s in enumerate(sides) if s == side]
        lo, hi = hues[side]
        t = same.index(j) / max(len(same) - 1, 1)
        r, g, b = colorsys.hsv_to_rgb(lo + (hi - lo) * t, 0.85, 0.95)
        colours.append(f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}")
    return colours


def labelling_config(schema: KeypointSchema, categories: dict[int, str]) -> str:
    """The Label Studio labelling config (XML) for a schema and its person categories."""
    neighbours = {j: [] for j in range(schema.num_joints)}
    for a, b in schema.skeleton:
        neighbours[a].append(schema.names[b])
        neighbours[b].append(schema.names[a])
    colours = joint_colours(schema)
    skeleton = ", ".join(f"{schema.names[a]}-{schema.names[b]}" for a, b in schema.skeleton)
    lines = [
        "<View>",
        f"  <!-- shg labels export: {schema.describe()} -->",
        f"  <!-- skeleton: {(skeleton or 'none').replace('--', '- -')} -->",
        '  <Header value="$review"/>',
        f'  <Image name="{IMAGE}" value="$image" zoom="true" zoomControl="true"/>',
        f'  <RectangleLabels name="{PERSON}" toName="{IMAGE}" strokeWidth="2">',
    ]
    for name in dict.fromkeys(categories.values()):
        lines.append(f"    <Label value={quoteattr(name)} background=\"#ffd400\"/>")
    lines += ["  </RectangleLabels>",
              f'  <KeyPointLabels name="{KEYPOINTS}" toName="{IMAGE}" strokeWidth="2">']
    for j, name in enumerate(schema.names):
        hint = ("connects to " + ", ".join(neighbours[j])) if neighbours[j] else "no limb"
        lines.append(f"    <Label value={quoteattr(name)} background=\"{colours[j]}\" "
                     f"hint={quoteattr(hint)}/>")
    lines += ["  </KeyPointLabels>",
              f'  <Choices name="{VISIBILITY}" toName="{IMAGE}" perRegion="true" '
              'choice="single" showInline="true">',
              f'    <Choice value="{OCCLUDED}" hint="labelled but not visible (COCO v=1); '
              'leave unchosen for a visible joint (v=2)"/>',
              "  </Choices>",
              "</View>", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- tasks
@dataclass
class TaskOptions:
    image_url: str = ""
    """URL prefix of the images (data.image = prefix + file name); empty: Label Studio's local
    files, /data/local-files/?d= + the path relative to `document_root`."""
    document_root: str = ""
    """LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT of the server (default: the images folder)."""
    images: str = ""
    model_version: str = ""
    """What Label Studio shows as the pre-annotation's source (the weights' or file's name)."""


def image_url(file_name: str, opts: TaskOptions) -> str:
    if opts.image_url:
        return opts.image_url + urllib.parse.quote(file_name)
    root = Path(opts.document_root or opts.images).resolve()
    path = (Path(opts.images).resolve() / file_name)
    try:
        relative = path.relative_to(root)
    except ValueError:
        raise ValueError(f"{path} is not under the document root {root}") from None
    return "/data/local-files/?d=" + urllib.parse.quote(relative.as_posix())


def _result(rid: str, kind: str, from_name: str, width: int, height: int, value: dict,
            **extra) -> dict:
    return {"id": rid, "type": kind, "from_name": from_name, "to_name": IMAGE,
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": value, **extra}


def _suspect_text(kind: str, score: float | None) -> str:
    return f"suspect: {kind}" + (f", score {score:.2f}" if score is not None else "")


def person_results(person: PersonIn, rid: str, schema: KeypointSchema, categories: dict,
                   width: int, height: int) -> list[dict]:
    """The box, joints and occlusion choices of one person."""
    x, y, w, h = person.bbox
    box = {"x": percent(x, width), "y": percent(y, height), "width": percent(w, width),
           "height": percent(h, height), "rotation": 0,
           "rectanglelabels": [categories.get(person.category_id, schema.name or "person")]}
    extra = {}
    if person.suspects:
        notes = [f"check {', '.join(schema.names[j] for j in joints) or 'the whole person'} "
                 f"({_suspect_text(kind, score)})" for kind, joints, score in person.suspects]
        extra["meta"] = {"text": notes}
    if person.score is not None:
        extra["score"] = round(float(person.score), 4)
    results = [_result(rid, "rectanglelabels", PERSON, width, height, box, **extra)]
    marks: dict[int, list[str]] = {}
    for kind, joints, score in person.suspects:
        for j in joints:
            marks.setdefault(j, []).append(_suspect_text(kind, score))
    for j, (kx, ky, v) in enumerate(person.keypoints):
        if v <= 0:
            continue
        kid = f"{rid}-k{j}"
        value = {"x": percent(kx, width), "y": percent(ky, height), "width": POINT_SIZE}
        extra = {"parentID": rid}
        if j in marks:
            extra["meta"] = {"text": marks[j]}
        if person.keypoint_scores is not None:
            extra["score"] = round(float(person.keypoint_scores[j]), 4)
        results.append(_result(kid, "keypointlabels", KEYPOINTS, width, height,
                               {**value, "keypointlabels": [schema.names[j]]}, **extra))
        if v == 1:
            results.append(_result(kid, "choices", VISIBILITY, width, height,
                                   {**value, "choices": [OCCLUDED]}, parentID=rid))
    return results


def tasks(source: Source, opts: TaskOptions) -> list[dict]:
    """A Label Studio task per image with persons, its persons as one prediction."""
    out = []
    names = {v: k for k, v in source.categories.items()}
    for image_id in sorted(source.persons):
        info = source.images[image_id]
        persons = source.persons[image_id]
        results, areas, review, suspects = [], {}, [], 0
        for n, person in enumerate(persons):
            rid = person_region_id(person.ann_id) if person.ann_id is not None else f"p{n}"
            results += person_results(person, rid, source.schema, source.categories,
                                      info.width, info.height)
            if person.area is not None:
                areas[rid] = person.area
            for kind, joints, score in person.suspects:
                suspects += 1
                what = ", ".join(source.schema.names[j] for j in joints) or "the whole person"
                review.append(f"{rid}: {what} ({_suspect_text(kind, score)})")
        data = {"image": image_url(info.file_name, opts), "file_name": info.file_name,
                "image_id": image_id, "width": info.width, "height": info.height,
                "categories": names, "areas": areas,
                "review": ("Check " + "; ".join(review)) if review else "",
                "suspects": suspects}
        scores = [p.score for p in persons if p.score is not None]
        prediction = {"model_version": opts.model_version or source.kind, "result": results}
        if scores:
            prediction["score"] = round(sum(scores) / len(scores), 4)
        out.append({"data": data, "predictions": [prediction]})
    return out


def schema_toml(schema: KeypointSchema) -> dict:
    """The schema as a schema file (shards/schema.py's keys) that rebuilds it exactly."""
    pairs = [[schema.names[i], schema.names[j]] for i, j in enumerate(schema.flip_index) if i < j]
    out = {"name": schema.name, "names": list(schema.names), "flip_pairs": pairs,
           "skeleton": [[schema.names[a], schema.names[b]] for a, b in schema.skeleton]}
    if schema.sigmas is not None:
        out["sigmas"] = list(schema.sigmas)
    if schema.weights is not None:
        out["weights"] = list(schema.weights)
    if schema.protocol != "auto":
        out["protocol"] = schema.protocol
    return out


def write_labelstudio(source: Source, out: str | Path, opts: TaskOptions) -> dict:
    """OUT/tasks.json, OUT/config.xml and OUT/schema.toml; returns what was written."""
    import tomli_w

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    made = tasks(source, opts)
    atomic.write_json(out / "tasks.json", made)
    atomic.write_text(out / "config.xml", labelling_config(source.schema, source.categories))
    atomic.write_text(out / "schema.toml", tomli_w.dumps(schema_toml(source.schema)))
    regions = [r for t in made for r in t["predictions"][0]["result"]]
    return {"tasks": len(made), "persons": sum(r["type"] == "rectanglelabels" for r in regions),
            "keypoints": sum(r["type"] == "keypointlabels" for r in regions),
            "occluded": sum(r["type"] == "choices" for r in regions),
            "suspects": sum(t["data"]["suspects"] for t in made),
            "files": [str(out / n) for n in ("tasks.json", "config.xml", "schema.toml")],
            "person_ids_kept": sum(r["type"] == "rectanglelabels"
                                   and r["id"].startswith(ANN_PREFIX) for r in regions)}
