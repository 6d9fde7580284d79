"""`shg synth` and `shg shards build|finalize|info`: the data."""

from __future__ import annotations

import argparse

from . import render
from .base import add_command, add_group


def add_synth(sub) -> None:
    add_command(sub, "synth", "write a synthetic COCO-format people dataset", _synth_args,
                synth)


def add_shards(sub) -> None:
    ssub = add_group(sub, "shards", "build and inspect WebDataset crop shards",
                     "shards_command", "ACTION")
    add_command(ssub, "build", "crop persons of a COCO split into tar shards", _build_args,
                shards_build)
    add_command(ssub, "finalize", "merge per-task statistics into manifest.json",
                _finalize_args, shards_finalize)
    add_command(ssub, "info", "summarise a shard directory's manifest", _info_args, shards_info)


# ----------------------------------------------------------------------------- synth
def _synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output root (annotations/, train2017/, val2017/)")
    p.add_argument("--train", type=int, default=600, help="training images (default 600)")
    p.add_argument("--val", type=int, default=120, help="validation images (default 120)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-people", type=int, default=3, help="people per image, at most")


def synth(args: argparse.Namespace) -> int:
    from ..synth import SynthOptions, synthesize

    counts = synthesize(SynthOptions(out=args.out, train=args.train, val=args.val,
                                     seed=args.seed, max_people=args.max_people))
    render.synthesized(counts, args.out)
    return 0


# ----------------------------------------------------------------------------- shards
def _build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coco", help="COCO root holding annotations/person_keypoints_SPLIT.json "
                   "and SPLIT/ (or --ann with --images)")
    p.add_argument("--ann", help="an annotation file of any keypoint layout (COCO format, "
                   "MPII's JSON with --format mpii, Label Studio's JSON export with --format "
                   "labelstudio)")
    p.add_argument("--images", help="the folder its image file names are relative to")
    p.add_argument("--format", choices=["coco", "mpii", "labelstudio"], default="coco")
    p.add_argument("--category", help="the keypoint category to take, by name or id (default: "
                   "every category with the file's keypoint list)")
    p.add_argument("--schema", help="a schema TOML: names, flip_pairs, skeleton, sigmas, "
                   "weights (see README, 'Your own keypoints')")
    p.add_argument("--split", required=True, help="the split's name, e.g. train2017 or val2017")
    p.add_argument("--out", required=True, help="shard directory (shared by splits)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--workers", type=int, default=0,
                   help="crop processes (default 0: one per CPU this process may use)")
    p.add_argument("--task-index", type=int, default=0, help="this task (Slurm array index)")
    p.add_argument("--num-tasks", type=int, default=1, help="tasks sharing the build")
    p.add_argument("--min-keypoints", type=int, default=1,
                   help="persons with fewer labelled keypoints are not used")
    p.add_argument("--strict", action="store_true",
                   help="fail on the first bad input instead of counting it as skipped")
    p.add_argument("--png-level", type=int, default=1,
                   help="zlib level 0-9 of the stored PNGs (0: ~2x disk, fastest reading)")
    p.add_argument("--crop-size", type=int, default=256,
                   help="side of the crops, a multiple of 64 (default 256, the thesis)")
    p.add_argument("--enlarge", type=float, default=1.1,
                   help="the square around each box is enlarged by this (default 1.1)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def shards_build(args: argparse.Namespace) -> int:
    from shards.build import BuildOptions, build

    summary = build(BuildOptions(
        coco_root=args.coco or "", ann=args.ann or "", images=args.images or "",
        format=args.format, category=args.category or "", schema=args.schema or "",
        split=args.split, out=args.out, shard_size=args.shard_size,
        workers=args.workers, task_index=args.task_index, num_tasks=args.num_tasks,
        min_keypoints=args.min_keypoints, strict=args.strict, progress=not args.quiet,
        png_level=args.png_level, crop_size=args.crop_size, enlarge=args.enlarge))
    render.shards_built(summary, args.out, args.split)
    return 0


def _finalize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir")
    p.add_argument("--split", required=True)


def shards_finalize(args: argparse.Namespace) -> int:
    from shards.build import finalize

    render.shards_finalized(finalize(args.dir, args.split), args.split)
    return 0


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="print the whole manifest")


def shards_info(args: argparse.Namespace) -> int:
    from shards.manifest import read_manifest

    render.shards_info(read_manifest(args.dir), whole=args.json)
    return 0
