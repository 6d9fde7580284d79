"""The `shg` command line: the top layer. Each command owns its arguments (`_X_args`) and its
run function (`_X`), side by side; the table at the end names them. Commands import their
heavy modules when they run, so `shg --help` is fast. A user error (UserError, DataError)
prints one line and exits 2; anything else keeps its traceback."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from . import evaluate as evaluate_entry
from . import train as train_entry
from .errors import EXIT_USAGE, USER_ERRORS, one_line


# ----------------------------------------------------------------------------- data
def _synth_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output root (annotations/, train2017/, val2017/)")
    p.add_argument("--train", type=int, default=600, help="training images (default 600)")
    p.add_argument("--val", type=int, default=120, help="validation images (default 120)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-people", type=int, default=3, help="people per image, at most")


def _synth(args: argparse.Namespace) -> int:
    from .synth import SynthOptions, synthesize

    counts = synthesize(SynthOptions(out=args.out, train=args.train, val=args.val,
                                     seed=args.seed, max_people=args.max_people))
    for split, c in counts.items():
        print(f"{split}: {c['images']} images, {c['persons']} persons -> {args.out}/{split}")
    return 0


def _print_skips(entry: dict, name: str) -> None:
    for title, key in (("not eligible", "filtered"), ("keypoints dropped", "dropped_keypoints"),
                       ("SKIPPED persons (bad input)", "skipped")):
        counts = entry.get(key) or {}
        if counts:
            print(f"  {name} {title}: " + ", ".join(f"{k}={v}" for k, v in counts.items()))


def _shards_build_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--coco", help="COCO root holding annotations/person_keypoints_SPLIT.json "
                   "and SPLIT/ (or --ann with --images)")
    p.add_argument("--ann", help="an annotation file of any keypoint layout (COCO format, or "
                   "MPII's JSON with --format mpii)")
    p.add_argument("--images", help="the folder its image file names are relative to")
    p.add_argument("--format", choices=["coco", "mpii"], default="coco")
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


def _shards_build(args: argparse.Namespace) -> int:
    from shards.build import BuildOptions, build

    summary = build(BuildOptions(
        coco_root=args.coco or "", ann=args.ann or "", images=args.images or "",
        format=args.format, category=args.category or "", schema=args.schema or "",
        split=args.split, out=args.out, shard_size=args.shard_size,
        workers=args.workers, task_index=args.task_index, num_tasks=args.num_tasks,
        min_keypoints=args.min_keypoints, strict=args.strict, progress=not args.quiet,
        png_level=args.png_level, crop_size=args.crop_size, enlarge=args.enlarge))
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
        _print_skips(m, args.split)
    else:
        print(f"  run `shg shards finalize {args.out} --split {args.split}` once all tasks end")
    return 0


def _schema_line(entry: dict) -> str:
    from shards.schema import stored

    schema = stored(entry)
    return (f"{schema.describe()}; {schema.source}"
            + ("" if schema.sigmas else "; no OKS sigmas (COCO AP unavailable)"))


def _shards_finalize_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir")
    p.add_argument("--split", required=True)


def _shards_finalize(args: argparse.Namespace) -> int:
    from shards.build import finalize

    m = finalize(args.dir, args.split)
    print(f"{args.split}: {m['num_samples']} samples in {len(m['shards'])} shards, "
          f"mean RGB {m['mean_rgb']}")
    _print_skips(m, args.split)
    return 0


def _shards_info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="print the whole manifest")


def _shards_info(args: argparse.Namespace) -> int:
    from shards.manifest import read_manifest

    manifest = read_manifest(args.dir)
    if args.json:
        print(json.dumps(manifest, indent=1))
        return 0
    for split, m in manifest["splits"].items():
        print(f"{split}: {m['num_samples']} samples, {len(m['shards'])} shards, "
              f"mean RGB {m['mean_rgb']}, source {m['source']['annotation_file']}")
        print(f"  keypoints: {_schema_line(m)}")
        _print_skips(m, split)
    return 0


# ----------------------------------------------------------------------------- training
def _train_args(p: argparse.ArgumentParser) -> None:
    train_entry.add_arguments(p)
    p.add_argument("--nproc", type=int, default=1,
                   help="processes on this machine (stop signals are forwarded to all)")


def _train(args: argparse.Namespace) -> int:
    forwarded = (["--config", args.config] if args.config else []) + train_entry.overrides_of(args)
    if args.nproc > 1:
        from .training.launch import train_processes

        return train_processes(forwarded, args.nproc)
    return train_entry.main(forwarded)


def _ae_args(p: argparse.ArgumentParser, phase: str) -> None:
    p.add_argument("--run", required=True, help="the trained SHG run directory")
    if phase != "train":
        p.add_argument("--ae", required=True, help="the phase-1 run directory")
    if phase == "compare":
        p.add_argument("--out", required=True, help="where the table and plot go")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("overrides", nargs="*", metavar="section.key=value")


def _ae(args: argparse.Namespace) -> int:
    from . import ae_study

    if args.ae_command == "train":
        out = ae_study.phase1(args.run, args.overrides, args.nproc)
    elif args.ae_command == "finetune":
        out = ae_study.phase2(args.run, args.ae, args.overrides, args.nproc)
    else:
        ae_study.compare(args.run, args.ae, args.out, args.overrides, args.nproc)
        out = args.out
    print(f"written to {out}")
    return 0


# ----------------------------------------------------------------------------- models
def _export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--best", action="store_true", help="the best-by-PCK model (default)")
    g.add_argument("--step", type=int, help="the checkpoint of this step")
    g.add_argument("--best-by-loss", action="store_true",
                   help="the model with the lowest validation loss")
    p.add_argument("--out", required=True, help="output .safetensors (or .onnx)")
    p.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors",
                   help="onnx: the network (dynamic batch, opset 18) + OUT.json for decoders")
    p.add_argument("--input", choices=["float", "uint8"], default="float",
                   help="onnx: float32 NCHW model input, or uint8 NHWC RGB crops with the mean "
                   "subtraction in the graph")
    p.add_argument("--decode", action="store_true",
                   help="onnx: also output keypoints (crop pixels) and scores, decoded in the "
                   "graph")


def _export(args: argparse.Namespace) -> int:
    best = "best_by_loss" if args.best_by_loss else "best"
    if args.format == "onnx":
        from .inference.onnx_export import export_onnx

        out = export_onnx(args.run, args.out, step=args.step, best=best,
                          input_kind=args.input, decode=args.decode)
        print(f"wrote {out} and {out.with_suffix('.json')}")
        return 0
    from .weights import export

    print(f"wrote {export(args.run, args.out, step=args.step, best=best)}")
    return 0


def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="a weights file (or run directory): its network, crops and "
                   "keypoint schema")
    p.add_argument("--stacks", type=int, default=8)
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--joints", type=int, default=17)
    p.add_argument("--size", type=int, default=256, help="input side in pixels")


def _info(args: argparse.Namespace) -> int:
    from .models import StackedHourglass, count_parameters, forward_flops

    if args.model:
        from shards.schema import stored

        from .weights import load_model

        model, meta, path = load_model(args.model, poses=False)
        shg = getattr(model, "shg", model)
        size = int(meta.get("crop_size", args.size))
        schema = stored(meta)
        print(f"{path}: {type(model).__name__}, {size} px crops (x{meta.get('crop_enlarge')} "
              f"boxes), sigma {meta.get('sigma', 1.0)}, trained to step {meta.get('step', '?')}")
        print(f"  keypoints: {schema.describe()}; {schema.source}")
        print(f"  joints: {', '.join(schema.names)}")
        pairs = [f"{schema.names[i]}<->{schema.names[j]}" for i, j in
                 enumerate(schema.flip_index) if i < j]
        print(f"  mirrored pairs: {', '.join(pairs) or 'none'}")
        print(f"  OKS sigmas: {'yes' if schema.sigmas else 'none (COCO AP unavailable)'}")
    else:
        shg = StackedHourglass(args.stacks, args.features, args.joints)
        size = args.size
    flops = forward_flops(shg, size)
    print(f"StackedHourglass(stacks={shg.stacks}, features={shg.features}, "
          f"joints={shg.joints})")
    print(f"  parameters: {count_parameters(shg):,}")
    print(f"  forward: {flops / 1e9:.2f} GFLOPs per {size}x{size} image "
          f"(training step ~{3 * flops / 1e9:.1f} GFLOPs per image)")
    return 0


# ----------------------------------------------------------------------------- evaluation
def _eval_args(p: argparse.ArgumentParser) -> None:
    evaluate_entry.add_arguments(p)
    p.add_argument("--nproc", type=int, default=1, help="processes (through torchrun)")


def _eval(args: argparse.Namespace) -> int:
    opts = evaluate_entry.options(args)  # argument errors here, before starting processes
    if args.nproc > 1:
        return evaluate_entry.torchrun(opts, args.nproc)
    return evaluate_entry.evaluate(opts)


def _predict_args(p: argparse.ArgumentParser) -> None:
    from .inference.detector import DEFAULT_DETECTOR, DEFAULT_SCORE, DETECTORS

    p.add_argument("--model", required=True, help=".safetensors from `shg export`")
    p.add_argument("inputs", metavar="IMAGE|FOLDER|VIDEO", nargs="?",
                   help="an image, a folder of images, or a video file (.mp4 .avi .mov .mkv "
                   ".webm)")
    p.add_argument("--camera", help="a camera index (0) or a stream URL, instead of a file")
    p.add_argument("--max-frames", type=int, help="video/camera: stop after this many frames")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--boxes", help="person boxes (COCO detection-results JSON; images named "
                   "by COCO id)")
    g.add_argument("--bbox", help="x,y,w,h of one person in every image/frame")
    g.add_argument("--whole-image", action="store_true",
                   help="each image/frame is one person (no detector)")
    p.add_argument("--detector", default=DEFAULT_DETECTOR, choices=list(DETECTORS),
                   help="torchvision COCO detector used without --boxes/--bbox/--whole-image "
                   f"(default {DEFAULT_DETECTOR}; ssdlite320_mobilenet_v3_large for CPUs)")
    p.add_argument("--detector-weights", help="a state dict file of that detector (for "
                   "machines without internet; `shg detector fetch NAME --out FILE` writes one)")
    p.add_argument("--detector-score", type=float, default=DEFAULT_SCORE,
                   help=f"keep person boxes scoring at least this (default {DEFAULT_SCORE}, as "
                   "mmpose's top-down demos)")
    p.add_argument("--max-persons", type=int, default=100, help="most boxes kept per image")
    p.add_argument("--out", help="folder for drawn images/video, results.jsonl (written as "
                   "predicted) and results.json (one image or video: a .png/.mp4 name, results "
                   "beside it)")
    p.add_argument("--no-draw", action="store_true",
                   help="with --out: the results alone, no drawn images or video")
    p.add_argument("--no-flip", action="store_true")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=2,
                   help="processes decoding images and cutting crops (default 2; 0: none)")
    p.add_argument("--no-track", action="store_true", help="video: no track ids")
    p.add_argument("--smooth", action="store_true",
                   help="video: One-Euro smoothing of each track's keypoints")
    p.add_argument("--smooth-min-cutoff", type=float, default=1.0, help="One-Euro min cutoff (Hz)")
    p.add_argument("--smooth-beta", type=float, default=0.01, help="One-Euro speed coefficient")
    evaluate_entry.add_protocol_arguments(p)


def _predict(args: argparse.Namespace) -> int:
    from .inference.command import PredictOptions, print_skips, run_predict
    from .inference.detector import DetectorOptions

    opts = PredictOptions(
        args.model, args.inputs, out=args.out, boxes=args.boxes, bbox=args.bbox,
        whole_image=args.whole_image,
        detector=DetectorOptions(args.detector, args.detector_weights, args.detector_score,
                                 args.max_persons),
        protocol=evaluate_entry.protocol_from(args), batch_size=args.batch_size,
        num_workers=args.workers, camera=args.camera, max_frames=args.max_frames,
        track=not args.no_track, smooth=args.smooth, smooth_min_cutoff=args.smooth_min_cutoff,
        smooth_beta=args.smooth_beta, draw=not args.no_draw)
    if opts.persons_from == "detector":
        print(f"persons from the detector {args.detector} (score >= {args.detector_score}); "
              "--boxes, --bbox or --whole-image to choose them yourself", file=sys.stderr)
    summary = run_predict(opts)
    if "frames" in summary:  # a video or a camera
        print(f"{summary['persons']} persons in {summary['frames']} frames of {summary['source']}"
              f" ({summary['frames_per_s']} frames/s, {summary['tracks']} tracks, "
              f"{summary['undecodable_frames']} undecodable frames)")
        for key in ("video_file", "results_file", "stream_file"):
            if key in summary:
                print(f"{key.split('_')[0]}: {summary[key]}")
        return 0
    if "single" in summary:  # one image: its persons
        print(json.dumps(summary["single"], indent=1))
    else:
        poses = summary["poses"]
        print(f"{summary['persons']} persons in {summary['images']} images ({poses['poses']} "
              f"boxes, {poses['suppressed_by_oks_nms']} suppressed by OKS-NMS)")
    if "results_file" in summary:
        print(f"results: {summary['results_file']} (stream: {summary['stream_file']}); drawn: "
              f"{summary['drawn'] or 'no (--no-draw)'}")
    print_skips(summary)
    return 0


# ----------------------------------------------------------------------------- analysis
def _analyze_args(p: argparse.ArgumentParser, name: str) -> None:
    if name != "skeletons":
        p.add_argument("--run", help="run directory (best/ unless --step)")
        p.add_argument("--step", type=int)
        p.add_argument("--model", help=".safetensors instead of --run")
        p.add_argument("--max-samples", type=int, default=0, help="0 = the whole split")
        p.add_argument("--batch-size", type=int, default=32)
        p.add_argument("--workers", type=int, default=None,
                       help="loader processes per rank (default: the CPUs this process may "
                       "use, less one, at most 8; 0: read in the process itself)")
        p.add_argument("--nproc", type=int, default=1,
                       help="processes (through torchrun, as shg eval --nproc), each over its "
                       "share of the split")
        evaluate_entry.add_device_arguments(p)
    p.add_argument("--shards", required=True)
    # (skips: the training split by default, as the thesis - what has the model learned?)
    p.add_argument("--split", default="train2017")
    p.add_argument("--out", required=True)
    if name == "latent":
        p.add_argument("--stack", type=int, default=-1, help="which stack (-1: last)")
        p.add_argument("--components", type=int, default=5, help="components to walk")
        p.add_argument("--walk", default="-3,-2,-1,0,1,2,3",
                       help="steps in standard deviations (write --walk=-3,0,3)")
    elif name == "skeletons":
        p.add_argument("--k-min", type=int, default=2)
        p.add_argument("--k-max", type=int, default=10)
    else:
        p.add_argument("--norm", choices=["constant", "bbox"], default="bbox",
                       help="PCK that defines a perfect sample (default bbox@0.2)")
        p.add_argument("--threshold", type=float, default=0.2)
        p.add_argument("--max-perfect", type=int, default=256,
                       help="ablate on the first this many perfect samples; reading stops "
                       "there (default 256)")


def _analyze(args: argparse.Namespace) -> int:
    from .analysis import entry

    what = args.analysis
    if what == "skeletons":
        from .analysis.skeletons import SkeletonOptions

        return entry.analyze(what, SkeletonOptions(shards=args.shards, split=args.split,
                                                   out=args.out, k_min=args.k_min,
                                                   k_max=args.k_max))
    model = {"shards": args.shards, "split": args.split, "out": args.out, "run": args.run,
             "step": args.step, "model_file": args.model, "limit": args.max_samples,
             "batch_size": args.batch_size, "num_workers": args.workers,
             "device": args.device, "precision": args.precision}
    if what == "latent":
        from .analysis.latent import LatentOptions

        opts = LatentOptions(**model, stack=args.stack, components=args.components,
                             steps=[float(v) for v in args.walk.split(",")])
    else:
        from .analysis.skips import SkipOptions

        opts = SkipOptions(**model, norm=args.norm, threshold=args.threshold,
                           max_perfect=args.max_perfect)
    return entry.analyze(what, opts, args.nproc)


# ----------------------------------------------------------------------------- Slurm
def _submit_args(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--profile", required=True, help="slurm/profiles/NAME.toml")
    p.add_argument("--set", dest="profile_set", action="append", metavar="KEY=VALUE",
                   help="override a profile key (repeatable)")
    p.add_argument("--executor", choices=["slurm", "local", "debug"], default="slurm")
    p.add_argument("--dry-run", action="store_true", help="print the sbatch scripts only")
    p.add_argument("--no-snapshot", action="store_true",
                   help="jobs import the live checkout instead of a copy made at submission")
    if name != "ae":
        p.add_argument("--shards", help="shard directory (shared filesystem)")
    if name in ("pipeline", "prepare", "study"):
        p.add_argument("--coco", help="COCO root" + (" (optional: also build the shards first)"
                                                     if name == "study" else ""))
        p.add_argument("--shard-size", type=int, default=1000)
        p.add_argument("--crop-size", type=int, default=256,
                       help="side of the crops the shards hold, a multiple of 64 (default 256)")
    if name in ("pipeline", "train", "study"):
        p.add_argument("--config", help="training TOML" + (" every variant starts from"
                                                           if name == "study" else ""))
    if name == "study":
        p.add_argument("--study", required=True, help="study TOML: [grid] and/or [variants.X]")
        p.add_argument("--run", help="study directory: a run per variant and the leaderboard "
                                     "(default runs/studies/NAME)")
    elif name != "prepare":
        p.add_argument("--run", help="run directory")
    if name in ("pipeline", "eval", "study"):
        p.add_argument("--boxes", help="detection-results JSON: the evaluation jobs evaluate "
                       "on its person boxes (COCO AP on detections)")
        p.add_argument("--images", help="with --boxes: the COCO root holding val2017/ (default "
                       "--coco, else the root of the shards' annotation file)")
    if name == "pipeline":
        p.add_argument("--ae", action="store_true",
                       help="also queue the bottleneck-AE phases after training")
    p.add_argument("overrides", nargs="*", metavar="section.key=value",
                   help="training config overrides")
    p.set_defaults(coco=None, shards=None, config=None, run=None, shard_size=1000,
                   crop_size=256, ae=False,
                   study=None, boxes=None, images=None)


def _submit(args: argparse.Namespace) -> int:
    from launcher.profile import load_profile
    from launcher.study import submit_study
    from launcher.submit import SubmitRequest, submit_request

    request = SubmitRequest(stage=args.stage, coco=args.coco, shards=args.shards,
                            config=args.config, run=args.run, shard_size=args.shard_size,
                            crop_size=args.crop_size,
                            ae=args.ae, overrides=list(args.overrides), study=args.study,
                            boxes=args.boxes, images=args.images)
    how = submit_study if args.stage == "study" else submit_request
    how(request, load_profile(args.profile, args.profile_set or []), args.executor,
        dry_run=args.dry_run, snapshot=not args.no_snapshot)
    return 0


def _submit_status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("folder", help="the profile folder / run name printed at submission")


def _submit_status(args: argparse.Namespace) -> int:
    from launcher.status import status

    status(args.folder)
    return 0


def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")


def _status(args: argparse.Namespace) -> int:
    from .run_status import run_progress

    width = max(len(r) for r in args.runs)
    for run in args.runs:
        progress = run_progress(run)
        line = progress.line() if progress.state != "not started" else \
            "not started (no metrics.jsonl)"
        print(f"{run:<{width}}  {line}")
    return 0


def _study_report_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("study_dir", help="the study directory (holds study.json)")


def _study_report(args: argparse.Namespace) -> int:
    from launcher.study_report import report

    report(args.study_dir)
    return 0


# ----------------------------------------------------------------------------- detector
def _detector_fetch_args(p: argparse.ArgumentParser) -> None:
    from .inference.detector import DEFAULT_DETECTOR, DETECTORS

    p.add_argument("name", nargs="?", default=DEFAULT_DETECTOR, choices=list(DETECTORS))
    p.add_argument("--out", help="also save the state dict here (for --detector-weights)")


def _detector_fetch(args: argparse.Namespace) -> int:
    from .inference.detector import fetch

    print(f"{args.name}: {fetch(args.name, args.out)}")
    return 0


# ----------------------------------------------------------------------------- demo
def _demo_args(p: argparse.ArgumentParser) -> None:
    # everything (--help too) goes to the recipe's own parser: its options live there alone
    p.add_argument("args", nargs=argparse.REMAINDER,
                   help="see `shg demo --help` (--out, --train, --val, --ae-steps, key=value)")


def _demo(args: argparse.Namespace) -> int:
    # The demo is a recipe of library calls (shg/demo.py) that nothing imports: run it.
    return subprocess.call([sys.executable, "-m", "shg.demo", *args.args])


# ----------------------------------------------------------------------------- the table
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shg", description="Stacked Hourglass pose estimation toolkit (COCO keypoints).")
    volume = parser.add_mutually_exclusive_group()
    volume.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    volume.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(group, name: str, help: str, args_fn, run_fn, **defaults):
        p = group.add_parser(name, help=help)
        args_fn(p)
        p.set_defaults(func=run_fn, **defaults)
        return p

    add(sub, "synth", "write a synthetic COCO-format people dataset", _synth_args, _synth)
    shards = sub.add_parser("shards", help="build and inspect WebDataset crop shards")
    ssub = shards.add_subparsers(dest="shards_command", metavar="ACTION", required=True)
    add(ssub, "build", "crop persons of a COCO split into tar shards", _shards_build_args,
        _shards_build)
    add(ssub, "finalize", "merge per-task statistics into manifest.json",
        _shards_finalize_args, _shards_finalize)
    add(ssub, "info", "summarise a shard directory's manifest", _shards_info_args, _shards_info)
    add(sub, "train", "train a Stacked Hourglass (Accelerate; DDP/DeepSpeed)", _train_args,
        _train)
    add(sub, "export", "write a run's weights as plain safetensors, or the network as ONNX",
        _export_args, _export)
    add(sub, "eval", "PCK, COCO AP and a report for a trained run", _eval_args, _eval)
    add(sub, "predict", "keypoints of every person in images, videos or a camera, drawn, as "
        "COCO results",
        _predict_args, _predict)
    analyze = sub.add_parser("analyze", help="latent PCA walks, skeleton clusters, skip ablation")
    asub = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    for name, text in (("latent", "PCA of the bottleneck latents with nearest real samples"),
                       ("skeletons", "K-means on skeletons (all vs full) with silhouettes"),
                       ("skips", "switch hourglass skip connections off on perfect samples")):
        add(asub, name, text, lambda p, n=name: _analyze_args(p, n), _analyze)
    ae = sub.add_parser("ae", help="denoising autoencoder at the hourglass bottleneck")
    aesub = ae.add_subparsers(dest="ae_command", metavar="PHASE", required=True)
    for name, text in (("train", "phase 1: train the AE on a frozen SHG's bottleneck latents"),
                       ("finetune", "phase 2: the SHG with the AE inserted, pose loss"),
                       ("compare", "phase 2 vs the SHG trained as long without AE")):
        add(aesub, name, text, lambda p, n=name: _ae_args(p, n), _ae)
    submit = sub.add_parser("submit", help="queue the pipeline as Slurm jobs (submitit)")
    ssub2 = submit.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, text in (("pipeline", "prepare -> finalize -> train -> eval + analyze [+ ae]"),
                       ("prepare", "shard building as a job array, then finalize"),
                       ("train", "the training job (nodes x tasks per node)"),
                       ("eval", "the evaluation job"), ("analyze", "the analysis jobs"),
                       ("ae", "bottleneck-AE phases 1 and 2, the baseline, the comparison"),
                       ("study", "a grid/list of training variants: one job array, "
                                 "evaluations, a leaderboard")):
        add(ssub2, name, text, lambda p, n=name: _submit_args(p, n), _submit)
    add(ssub2, "status", "state of a submitted pipeline's jobs", _submit_status_args,
        _submit_status)
    study = sub.add_parser("study", help="a study's leaderboard (shg submit study queues one)")
    stsub = study.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    add(stsub, "report", "rebuild leaderboard.md/json and plots from the runs and jobs",
        _study_report_args, _study_report)
    detector = sub.add_parser("detector", help="the person detectors of `shg predict`")
    dsub = detector.add_subparsers(dest="detector_command", metavar="ACTION", required=True)
    add(dsub, "fetch", "download a detector's weights (on a machine with internet)",
        _detector_fetch_args, _detector_fetch)
    add(sub, "status", "how far training runs are: step, img/s, ETA, metric, stalled",
        _status_args, _status)
    add(sub, "info", "parameters and FLOPs of an SHG", _info_args, _info)
    demo = sub.add_parser("demo", help="run the whole pipeline on synthetic data (make demo)",
                          add_help=False)
    _demo_args(demo)
    demo.set_defaults(func=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # the recipe parses its own arguments, --help included
        return _demo(argparse.Namespace(args=argv[1:]))
    args = build_parser().parse_args(argv)
    from .logs import setup_logging

    setup_logging(1 if args.verbose else -1 if args.quiet else 0)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"shg {args.command}: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def run() -> None:
    """The `shg` command: main() as the process's exit status (shg.exit: no slow teardown)."""
    from .exit import run_main

    run_main(main)


if __name__ == "__main__":
    run()
