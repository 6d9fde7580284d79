"""Everything the commands print about their results: each handler gets a result from the
library and hands it to one function here (errors and the top-level messages are main()'s).
Nothing here computes; it formats what it is given."""

from __future__ import annotations

import json
import sys
from pathlib import Path


# ----------------------------------------------------------------------------- data
def synthesized(counts: dict, out: str) -> None:
    for split, c in counts.items():
        print(f"{split}: {c['images']} images, {c['persons']} persons -> {out}/{split}")


def shards_built(summary: dict, out: str, split: str) -> None:
    print(f"{summary['split']}: task {summary['task_index']}/{summary['num_tasks']}: "
          f"{summary['shards_built']} shards, {summary['crops_written']} crops in "
          f"{summary['seconds']} s ({summary['crops_per_second']} crops/s)")
    if summary["skipped_this_task"]:
        print("  skipped in this task: " + ", ".join(
            f"{k}={v}" for k, v in summary["skipped_this_task"].items())
            + f" (first: {summary['first_offender']})")
    if "manifest" in summary:
        m = summary["manifest"]
        print(f"  manifest: {m['num_samples']} samples in {len(m['shards'])} shards, "
              f"mean RGB {m['mean_rgb']}")
        print(f"  keypoints: {_schema_line(m)}")
        _skips(m, split)
    else:
        print(f"  run `shg shards finalize {out} --split {split}` once all tasks end")


def shards_finalized(m: dict, split: str) -> None:
    print(f"{split}: {m['num_samples']} samples in {len(m['shards'])} shards, "
          f"mean RGB {m['mean_rgb']}")
    _skips(m, split)


def shards_info(manifest: dict, whole: bool = False) -> None:
    if whole:
        print(json.dumps(manifest, indent=1))
        return
    for split, m in manifest["splits"].items():
        print(f"{split}: {m['num_samples']} samples, {len(m['shards'])} shards, "
              f"mean RGB {m['mean_rgb']}, source {m['source']['annotation_file']}")
        print(f"  keypoints: {_schema_line(m)}")
        _skips(m, split)


def labels_exported(s: dict) -> None:
    """`shg labels export`: what was written, from what, and what was not taken."""
    if s["to"] == "labelstudio":
        print(f"{s['tasks']} Label Studio tasks: {s['persons']} persons, {s['keypoints']} "
              f"keypoints ({s['occluded']} occluded) from the {s['kind']} of {s['source']}")
        print("  " + ", ".join(s["files"]))
    else:
        print(f"COCO Keypoints 1.0 for CVAT: {s['annotations']} annotations of {s['images']} "
              f"images from the {s['kind']} of {s['source']} -> {s['file']}")
    print(f"  keypoints: {s['schema']}")
    if "suspects_marked" in s:
        print(f"  audit: {s['suspects_marked']} suspects marked")
    if s["not_taken"]:
        print("  not taken: " + ", ".join(f"{k}={v}" for k, v in s["not_taken"].items())
              + (f" (first: {s['first_offender']})" if s["first_offender"] else ""))


def _skips(entry: dict, name: str) -> None:
    for title, key in (("not eligible", "filtered"), ("keypoints dropped", "dropped_keypoints"),
                       ("SKIPPED persons (bad input)", "skipped")):
        counts = entry.get(key) or {}
        if counts:
            print(f"  {name} {title}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


def _schema_line(entry: dict) -> str:
    from shards.schema import stored

    schema = stored(entry)
    return (f"{schema.describe()}; {schema.source}"
            + ("" if schema.sigmas else "; no OKS sigmas (COCO AP unavailable)"))


# ----------------------------------------------------------------------------- training
def written_to(out: str | Path) -> None:
    print(f"written to {out}")


# ----------------------------------------------------------------------------- models
def exported(path: Path, onnx: bool) -> None:
    print(f"wrote {path} and {path.with_suffix('.json')}" if onnx else f"wrote {path}")


def network(net: dict, model: dict | None = None) -> None:
    """`shg info`: a weights file's model (`model`: path, class, meta, schema, size) and the
    network's figures (`net`: stacks, features, joints, parameters, flops, size)."""
    if model:
        meta, schema = model["meta"], model["schema"]
        print(f"{model['path']}: {model['class']}, {model['size']} px crops "
              f"(x{meta.get('crop_enlarge')} boxes), sigma {meta.get('sigma', 1.0)}, trained to "
              f"step {meta.get('step', '?')}")
        print(f"  keypoints: {schema.describe()}; {schema.source}")
        print(f"  joints: {', '.join(schema.names)}")
        pairs = [f"{schema.names[i]}<->{schema.names[j]}" for i, j in
                 enumerate(schema.flip_index) if i < j]
        print(f"  mirrored pairs: {', '.join(pairs) or 'none'}")
        print(f"  OKS sigmas: {'yes' if schema.sigmas else 'none (COCO AP unavailable)'}")
    flops, size = net["flops"], net["size"]
    print(f"StackedHourglass(stacks={net['stacks']}, features={net['features']}, "
          f"joints={net['joints']})")
    print(f"  parameters: {net['parameters']:,}")
    print(f"  forward: {flops / 1e9:.2f} GFLOPs per {size}x{size} image "
          f"(training step ~{3 * flops / 1e9:.1f} GFLOPs per image)")


# ----------------------------------------------------------------------------- prediction
def persons_from_detector(detector: str, score: float) -> None:
    print(f"persons from the detector {detector} (score >= {score}); "
          "--boxes, --bbox or --whole-image to choose them yourself", file=sys.stderr)


def predicted(summary: dict) -> None:
    if "frames" in summary:  # a video or a camera
        print(f"{summary['persons']} persons in {summary['frames']} frames of {summary['source']}"
              f" ({summary['frames_per_s']} frames/s, {summary['tracks']} tracks, "
              f"{summary['undecodable_frames']} undecodable frames)")
        for key in ("video_file", "results_file", "stream_file"):
            if key in summary:
                print(f"{key.split('_')[0]}: {summary[key]}")
        return
    if "single" in summary:  # one image: its persons
        print(json.dumps(summary["single"], indent=1))
    else:
        poses = summary["poses"]
        print(f"{summary['persons']} persons in {summary['images']} images ({poses['poses']} "
              f"boxes, {poses['suppressed_by_oks_nms']} suppressed by OKS-NMS)")
    if "results_file" in summary:
        print(f"results: {summary['results_file']} (stream: {summary['stream_file']}); drawn: "
              f"{summary['drawn'] or 'no (--no-draw)'}")


def detector_fetched(name: str, where) -> None:
    print(f"{name}: {where}")


# ----------------------------------------------------------------------------- status
def run_progress(runs: list[str], progresses) -> None:
    """`shg status`: a line per run directory, with its RunProgress (`progresses`, in the same
    order, may be a generator: each line is printed as its run is read)."""
    width = max(len(run) for run in runs)
    for run, progress in zip(runs, progresses):
        line = progress.line() if progress.state != "not started" else \
            "not started (no metrics.jsonl)"
        print(f"{run:<{width}}  {line}")
