"""`shg labels export`: persons for people to correct in a labelling tool (Label Studio tasks
with pre-annotations and their labelling config, or a COCO Keypoints 1.0 file for CVAT);
`shg shards build --format labelstudio` reads Label Studio's export back (data.py)."""

from __future__ import annotations

import argparse

from . import render
from .base import add_command, add_group


def add_labels(sub) -> None:
    lsub = add_group(sub, "labels", "exports for labelling tools (Label Studio, CVAT)",
                     "labels_command", "ACTION")
    add_command(lsub, "export", "annotations or predictions as pre-annotations to correct",
                _export_args, labels_export)


def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--to", choices=["labelstudio", "cvat"], default="labelstudio",
                   help="labelstudio: OUT/tasks.json, config.xml, schema.toml; cvat: a COCO "
                   "Keypoints 1.0 file (OUT/person_keypoints_default.json, or OUT if .json)")
    p.add_argument("--out", required=True, help="output folder (or, --to cvat, a .json file)")
    p.add_argument("--images", help="the folder the images' file names are relative to")
    p.add_argument("--ann", help="a COCO keypoint annotation file: its annotations (with "
                   "--results: where the images and joint names come from)")
    p.add_argument("--results", help="a model's predictions: shg predict's results.jsonl or "
                   "results.json")
    p.add_argument("--audit", help="the label audit's audit.json: only the flagged "
                   "annotations' images, suspect joints marked")
    p.add_argument("--model", help="the weights that made --results (their joint names)")
    p.add_argument("--schema", help="a schema TOML correcting (or, for --results, naming) the "
                   "joints")
    p.add_argument("--category", help="the keypoint category of --ann to take, by name or id")
    p.add_argument("--image-url", default="", help="URL prefix of the images in Label Studio "
                   "(default: its local files, /data/local-files/?d=PATH)")
    p.add_argument("--document-root", default="", help="the server's "
                   "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT (default: --images)")
    p.add_argument("--min-keypoint-score", type=float, default=0.2,
                   help="a predicted joint is pre-annotated from this confidence (default 0.2)")
    p.add_argument("--min-score", type=float, default=0.0,
                   help="predicted persons scoring less are left out (default 0)")


def labels_export(args: argparse.Namespace) -> int:
    from ..labels import ExportOptions, export

    summary = export(ExportOptions(
        out=args.out, images=args.images or "", to=args.to, ann=args.ann or "",
        results=args.results or "", audit=args.audit or "", model=args.model or "",
        schema=args.schema or "", category=args.category or "", image_url=args.image_url,
        document_root=args.document_root, min_keypoint_score=args.min_keypoint_score,
        min_score=args.min_score))
    render.labels_exported(summary)
    return 0
