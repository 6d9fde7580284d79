"""`shg eval --results FILE --ann FILE --out OUT`: COCO keypoint AP of any results file (this
toolkit's `coco_results.json`, another toolkit's predictions) against an annotation file, with
the data's keypoint schema (its OKS sigmas; `--schema S.toml` corrects it) and protocol (the OKS
scale, crowd index classes: coco.py), through the same coco_eval as every other evaluation. No
model: the results are scored as they are (no rescoring, no OKS-NMS).

Every image of the annotation file counts (a person without a result is a miss), as xtcocotools
and pycocotools score a results file. A results file is a JSON list of {image_id, category_id,
keypoints [x, y, score] x joints, score}; an entry that cannot be scored is counted by reason
with its first case, never dropped silently: malformed (not an object, a key missing, a value
not a number), keypoints of another length than the schema's 3 x joints, an image_id not in the
annotation file, a category the annotation file does not have. A file that is not JSON, not a
list, or none of whose entries can be scored is a one-line error naming it.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from shards import atomic
from shards.manifest import DataError, read_json_file

from . import protocol as post
from .coco import ap_text, coco_eval, scale_text

REASONS = ("malformed", "keypoints_length", "unknown_image", "other_category")


@dataclass
class ResultsOptions:
    results: str
    ann: str
    out: str
    schema_file: str | None = None
    """A schema file (TOML) correcting the annotation file's schema (sigmas, protocol, ...)."""
    category: str | None = None
    """The keypoint category (name or id) when the file has several keypoint lists."""
    oks_scale: str | None = None
    """--protocol: None = the schema's, else auto (coco.py)."""


def score_results(opts: ResultsOptions) -> dict:
    """Score the results file; writes OUT/coco_eval.json, coco_eval.txt, summary.json and
    report.md; returns the summary."""
    from shards.coco import load_coco, plan_schema

    coco, _ = load_coco(opts.ann)
    schema = plan_schema(coco.dataset, Path(opts.ann), opts.category, opts.schema_file)
    if schema.sigmas is None:
        raise DataError(f"{opts.ann}: its keypoint schema ({schema.describe()}) has no OKS "
                        "sigmas, which COCO AP needs: give them in a schema file (--schema "
                        "S.toml with sigmas = [...])")
    entries, counts = read_results(opts.results, set(coco.getImgIds()), set(coco.getCatIds()),
                                   schema.num_joints)
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    about = {"results_file": str(opts.results), "results": counts}
    stats = coco_eval(opts.ann, entries, out, about, sorted(coco.getImgIds()), schema.sigmas,
                      post.oks_scale_choice(post.Protocol(oks_scale=opts.oks_scale), schema),
                      gt=coco)
    summary = {"results_file": str(opts.results), "annotation_file": str(opts.ann),
               "keypoints": schema.describe(), "results": counts, "coco": stats}
    _write_report(summary, out)
    atomic.write_json(out / "summary.json", summary, indent=1)
    return summary


def read_results(path: str, image_ids: set, category_ids: set, joints: int
                 ) -> tuple[list[dict], dict]:
    """(the entries that can be scored, {"in_file", "scored", "skipped": {reason: n},
    "examples": {reason: first case}})."""
    data, _ = read_json_file(path, "results file")
    if not isinstance(data, list):
        raise DataError(f"{path}: not a COCO keypoint results file (a JSON list of {{image_id, "
                        "category_id, keypoints, score}}), but a JSON "
                        f"{type(data).__name__}")
    kept, skipped, examples = [], Counter(), {}
    for i, entry in enumerate(data):
        reason = _problem(entry, image_ids, category_ids, joints)
        if reason is None:
            kept.append(entry)
            continue
        skipped[reason] += 1
        if reason not in examples:
            shown = {k: entry.get(k) for k in ("image_id", "category_id")} \
                if isinstance(entry, dict) else entry
            examples[reason] = f"entry {i}: {_short(shown)}" + (
                f" has {len(entry['keypoints'])} keypoint values, the schema's {joints} joints "
                f"need {3 * joints}" if reason == "keypoints_length" else "")
    if data and not kept:
        reason, n = skipped.most_common(1)[0]
        raise DataError(f"{path}: none of its {len(data)} results can be scored against "
                        f"the annotation file ({n} {reason}; {examples[reason]})")
    return kept, {"in_file": len(data), "scored": len(kept), "skipped": dict(skipped),
                  "examples": examples}


def _problem(entry, image_ids: set, category_ids: set, joints: int) -> str | None:
    if not isinstance(entry, dict) or not all(k in entry for k in (
            "image_id", "category_id", "keypoints", "score")):
        return "malformed"
    kps, score = entry["keypoints"], entry["score"]
    if not all(isinstance(entry[k], int) and not isinstance(entry[k], bool)
               for k in ("image_id", "category_id")) or not isinstance(kps, list) \
            or not _number(score) or not all(_number(v) for v in kps):
        return "malformed"
    if len(kps) != 3 * joints:
        return "keypoints_length"
    if entry["image_id"] not in image_ids:
        return "unknown_image"
    if entry["category_id"] not in category_ids:
        return "other_category"
    return None


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _short(value, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _write_report(summary: dict, out: Path) -> None:
    c, counts = summary["coco"], summary["results"]
    lines = [f"# COCO keypoint AP of `{summary['results_file']}`", "",
             f"Against `{summary['annotation_file']}` ({summary['keypoints']}); every image of "
             "it counts. The results are scored as they are (no rescoring, no OKS-NMS).", "",
             f"Results: {counts['scored']} of {counts['in_file']} scored.", ""]
    if counts["skipped"]:
        lines += ["| not scored | results | first case |", "|---|---|---|"]
        lines += [f"| {reason} | {n} | {counts['examples'][reason]} |"
                  for reason, n in sorted(counts["skipped"].items())]
        lines.append("")
    lines += [f"COCO keypoint AP over {c['images']} images: {ap_text(c)}.", "", scale_text(c),
              ""]
    atomic.write_text(out / "report.md", "\n".join(lines))


def print_results_summary(summary: dict) -> None:
    counts, c = summary["results"], summary["coco"]
    skipped = ", ".join(f"{n} {r}" for r, n in sorted(counts["skipped"].items()))
    print(f"{counts['scored']} of {counts['in_file']} results scored"
          + (f" (not: {skipped})" if skipped else "") + f" over {c['images']} images")
    print(f"COCO keypoints: {ap_text(c)}")
    print(scale_text(c))
