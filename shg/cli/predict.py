"""`shg export`, `shg predict` and `shg detector fetch`: a trained model put to use."""

from __future__ import annotations

import argparse

from .. import evaluate as evaluate_entry
from . import render
from .base import add_command, add_group


def add_export(sub) -> None:
    add_command(sub, "export", "write a run's weights as plain safetensors, or the network as "
                "ONNX", _export_args, export)


def add_predict(sub) -> None:
    add_command(sub, "predict", "keypoints of every person in images, videos or a camera, "
                "drawn, as COCO results", _predict_args, predict)


def add_detector(sub) -> None:
    dsub = add_group(sub, "detector", "the person detectors of `shg predict`",
                     "detector_command", "ACTION")
    add_command(dsub, "fetch", "download a detector's weights (on a machine with internet)",
                _fetch_args, detector_fetch)


# ----------------------------------------------------------------------------- export
def _export_args(p: argparse.ArgumentParser) -> None:
    evaluate_entry.add_model_arguments(p, "run directory", run_required=True)
    p.add_argument("--out", required=True, help="output .safetensors (or .onnx)")
    p.add_argument("--format", choices=["safetensors", "onnx"], default="safetensors",
                   help="onnx: the network (dynamic batch, opset 18) + OUT.json for decoders")
    p.add_argument("--input", choices=["float", "uint8"], default="float",
                   help="onnx: float32 NCHW model input, or uint8 NHWC RGB crops with the mean "
                   "subtraction in the graph")
    p.add_argument("--decode", action="store_true",
                   help="onnx: also output keypoints (crop pixels) and scores, decoded in the "
                   "graph")


def export(args: argparse.Namespace) -> int:
    best = evaluate_entry.model_rule(args)
    if args.format == "onnx":
        from ..inference.onnx_export import export_onnx

        out = export_onnx(args.run, args.out, step=args.step, best=best,
                          input_kind=args.input, decode=args.decode)
    else:
        from ..weights import export

        out = export(args.run, args.out, step=args.step, best=best)
    render.exported(out, onnx=args.format == "onnx")
    return 0


# ----------------------------------------------------------------------------- predict
def _predict_args(p: argparse.ArgumentParser) -> None:
    from ..inference.detector import DEFAULT_DETECTOR, DEFAULT_SCORE, DETECTORS

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


def predict(args: argparse.Namespace) -> int:
    from ..inference.command import PredictOptions, print_skips, run_predict
    from ..inference.detector import DetectorOptions

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
        render.persons_from_detector(args.detector, args.detector_score)
    summary = run_predict(opts)
    render.predicted(summary)
    if "frames" not in summary:
        print_skips(summary)  # warnings (logged), as the library counts them
    return 0


# ----------------------------------------------------------------------------- detector
def _fetch_args(p: argparse.ArgumentParser) -> None:
    from ..inference.detector import DEFAULT_DETECTOR, DETECTORS

    p.add_argument("name", nargs="?", default=DEFAULT_DETECTOR, choices=list(DETECTORS))
    p.add_argument("--out", help="also save the state dict here (for --detector-weights)")


def detector_fetch(args: argparse.Namespace) -> int:
    from ..inference.detector import fetch

    render.detector_fetched(args.name, fetch(args.name, args.out))
    return 0
