"""Labelling tools: exports for people to correct (`shg labels export`), read back as shards
(`shg shards build --format labelstudio`, shards/labelstudio.py).

    --to labelstudio   Label Studio tasks with pre-annotations, its labelling config and the
                       schema (labelstudio.py)
    --to cvat          a COCO Keypoints 1.0 file CVAT imports (cvat.py)

The persons come from a COCO annotation file (`ann`, optionally only the annotations a label
audit flagged, `audit`) or from a model's predictions (`results`, with the model or an
annotation file of the layout naming the joints); sources.py reads them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import UserError

TARGETS = ("labelstudio", "cvat")


@dataclass
class ExportOptions:
    out: str
    """A folder (labelstudio: tasks.json, config.xml, schema.toml; cvat:
    person_keypoints_default.json), or for cvat a .json file."""
    images: str = ""
    """The folder the images' file names are relative to."""
    to: str = "labelstudio"
    ann: str = ""
    """A COCO keypoint annotation file: its annotations (or, with results.json, its images and
    schema)."""
    results: str = ""
    """A model's predictions: shg predict's results.jsonl or results.json."""
    audit: str = ""
    """The label audit's audit.json: only the flagged annotations' images, suspects marked."""
    model: str = ""
    """The weights that made `results` (their keypoint schema)."""
    schema: str = ""
    """A schema file (TOML) correcting or naming the keypoints."""
    category: str = ""
    image_url: str = ""
    document_root: str = ""
    min_keypoint_score: float = 0.2
    min_score: float = 0.0

    def __post_init__(self) -> None:
        if self.to not in TARGETS:
            raise UserError(f"--to {self.to!r}; valid: {', '.join(TARGETS)}")
        if not self.ann and not self.results:
            raise UserError("give --ann FILE (annotations) or --results FILE (predictions)")
        if self.to == "labelstudio" and not self.images:
            raise UserError("--to labelstudio needs --images DIR (the tasks' image URLs)")
        if self.results and not self.images and not self.ann:
            raise UserError("--results needs --images DIR (or --ann naming its images)")
        if self.audit and self.results:
            raise UserError("--audit names annotations: give it with --ann, not --results")
        if not 0 <= self.min_keypoint_score <= 1:
            raise UserError("--min-keypoint-score must be in [0, 1]")


def export(opts: ExportOptions) -> dict:
    """Write the export; returns a summary (counts, files, what was not taken and why)."""
    from . import sources

    if opts.results:
        schema = sources.results_schema(opts.model, opts.ann, opts.schema, opts.results)
        source = sources.read_results(opts.results, opts.images or ".", schema,
                                      opts.ann or None, opts.min_keypoint_score, opts.min_score)
    else:
        source = sources.read_annotations(opts.ann, opts.category or None, opts.schema or None)
    suspects = sources.apply_audit(source, opts.audit) if opts.audit else None
    if opts.to == "labelstudio":
        from .labelstudio import TaskOptions, write_labelstudio

        try:
            written = write_labelstudio(source, opts.out, TaskOptions(
                image_url=opts.image_url, document_root=opts.document_root, images=opts.images,
                model_version=Path(opts.model).stem if opts.model else Path(source.path).name))
        except ValueError as exc:
            raise UserError(f"--document-root: {exc}") from None
    else:
        from .cvat import write_coco_keypoints

        written = write_coco_keypoints(source, opts.out)
    return {"to": opts.to, "source": source.path, "kind": source.kind,
            "schema": source.schema.describe(), **written,
            **({"suspects_marked": suspects} if suspects is not None else {}),
            "not_taken": dict(source.counts), "first_offender": source.first_offender}
