"""Evaluation entry point: `python -m shg.evaluate` under torchrun (what `shg eval --nproc N`
starts), with the same arguments as `shg eval`.

    shg eval --run RUN [--best | --step N] --shards DIR --split val2017 \\
             [--coco-ann FILE] --out OUT [--no-flip] [--oracle] [--decode dark]
    shg eval --run RUN --coco ROOT --split val2017 --boxes DETS.json --out OUT \\
             [--box-score-threshold 0] [--oks-nms 0.9|none] [--keypoint-threshold 0.2] \\
             [--flip-shift] [--enlarge E]
    shg eval --results RESULTS.json --ann ANN.json --out OUT [--schema S.toml] \\
             [--protocol auto|area|bbox]     (score any results file: no model)
    torchrun --standalone --nproc_per_node 2 -m shg.evaluate -- --run RUN ...
             (each rank reads its part, results are gathered without duplicates or losses;
             the `--` keeps torchrun from taking --run for its own --run-path)
    shg eval --nproc N writes its resolved options to OUT/eval_options.json and starts
    `python -m shg.evaluate --options OUT/eval_options.json` on every rank.

The evaluation itself lives in shg/evaluation/.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path

from shards.schema import OKS_PROTOCOLS

from .errors import EXIT_USAGE, USER_ERRORS, UserError, one_line
from .evaluation.protocol import Protocol


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(
        p, "run directory (its best/ model unless --step)",
        model_help="a .safetensors from `shg export` instead of --run",
        best_by_loss="the model with the lowest validation loss (to compare the rules)")
    p.add_argument("--shards", help="shard directory (persons = the ground-truth boxes)")
    p.add_argument("--boxes", help="a detector's boxes (COCO detection-results JSON) to "
                   "evaluate on instead of the ground-truth boxes; needs --coco")
    p.add_argument("--coco", help="COCO root with SPLIT/ images and annotations/ (for --boxes)")
    p.add_argument("--split", default="val2017")
    p.add_argument("--coco-ann", "--ann", dest="coco_ann",
                   help="COCO annotation json: also compute COCO keypoint AP")
    p.add_argument("--results", help="score this COCO keypoint results file against --ann "
                   "(no model; the data's schema and protocol)")
    p.add_argument("--schema", help="with --results: a schema file (TOML) correcting the "
                   "annotation file's (sigmas, protocol, ...)")
    p.add_argument("--category", help="with --results: the keypoint category (name or id)")
    p.add_argument("--protocol", choices=list(OKS_PROTOCOLS), default=None,
                   help="the OKS scale of COCO AP: " + "; ".join(
                       f"{k}: {v}" for k, v in OKS_PROTOCOLS.items())
                   + " (default: a schema file's protocol, else auto)")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-flip", action="store_true", help="no flip-test averaging")
    p.add_argument("--oracle", action="store_true",
                   help="decode the ground-truth heatmaps (pipeline upper bound)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-samples", type=int, default=0, help="0 = all")
    p.add_argument("--workers", type=int, default=1, help="loader processes")
    p.add_argument("--decode", choices=["quarter", "dark", "none"], default="quarter",
                   help="heatmap refinement (default: quarter-cell shift)")
    add_device_arguments(p)
    add_protocol_arguments(p)


MODEL_RULES = {"best": "the best-by-PCK model (default)", "step": "the checkpoint of this step",
               "best_by_loss": "the model with the lowest validation loss"}
"""Which model of a run: its best/ (the default), a checkpoint, or its best_by_loss/."""


def add_model_arguments(p: argparse.ArgumentParser, run_help: str, *, run_required: bool = False,
                        model_help: str | None = None, rules: tuple[str, ...] = tuple(MODEL_RULES),
                        **helps: str | None) -> None:
    """The model a command runs (shg eval, export and analyze; python -m shg.evaluate): --run
    RUN, which of its models as one of --best | --step N | --best-by-loss (`rules`: those
    offered; `helps`: a rule's own help text, by its name), and --model FILE instead of a run
    where `model_help` is given. model_rule() reads the choice back."""
    p.add_argument("--run", required=run_required, help=run_help)
    g = p.add_mutually_exclusive_group()
    for rule in rules:
        text = helps.get(rule, MODEL_RULES[rule])
        if rule == "step":
            g.add_argument("--step", type=int, help=text)
        else:
            g.add_argument(f"--{rule.replace('_', '-')}", action="store_true", help=text)
    if model_help:
        p.add_argument("--model", help=model_help)


def model_rule(args: argparse.Namespace) -> str:
    """The run's model when no --step is given: "best_by_loss" with --best-by-loss, else
    "best"."""
    return "best_by_loss" if getattr(args, "best_by_loss", False) else "best"


def add_device_arguments(p: argparse.ArgumentParser) -> None:
    """Where a model runs and in which precision (shg eval and shg analyze)."""
    from .evaluation.core import PRECISIONS

    g = p.add_argument_group("device")
    g.add_argument("--device", default="auto",
                   help="auto (default: this rank's CUDA GPU when there is one, else the CPU), "
                   "cpu, cuda or cuda:N")
    g.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="autocast of the forward passes: auto (default: bf16 on a GPU that has "
                   "it, else fp16; fp32 on the CPU), fp32, bf16, fp16 (GPU only); decoding and "
                   "the metrics are fp32 either way")


def add_protocol_arguments(p: argparse.ArgumentParser) -> None:
    """The COCO protocol's options (shg eval and shg predict)."""
    d = Protocol()
    g = p.add_argument_group("protocol (defaults are the published ones)")
    g.add_argument("--box-score-threshold", type=float, default=d.box_score_threshold,
                   help=f"--boxes scored below this are not evaluated (default "
                   f"{d.box_score_threshold})")
    g.add_argument("--oks-nms", type=_threshold_or_none, default=d.oks_nms,
                   help=f"OKS-NMS threshold per image, or none (default {d.oks_nms})")
    g.add_argument("--keypoint-threshold", type=float, default=d.keypoint_threshold,
                   help="instance score = box score x mean keypoint confidence above this "
                   f"(default {d.keypoint_threshold})")
    g.add_argument("--flip-shift", action="store_true",
                   help="shift the flipped heatmaps one cell (HRNet/mmpose; off: exact here)")
    g.add_argument("--enlarge", type=float, default=d.enlarge,
                   help="crop square = longer box side x this, with boxes (default: as the "
                   "model's training crops, the thesis's 1.1; mmpose pads 1.25)")


def _threshold_or_none(text: str) -> float | None:
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a number in (0, 1] or none, not {text!r}") from None


def options(args: argparse.Namespace):
    from .evaluation.runner import EvalOptions

    if args.results:
        return _results_options(args)
    if args.schema or args.category:
        raise UserError("--schema and --category are for --results (a model is evaluated with "
                        "the schema it was trained with; --protocol sets the OKS scale)")
    if not args.oracle and not args.run and not args.model:
        raise UserError("give --run RUN (with --best or --step N), --model FILE, or --oracle")
    return EvalOptions(shards=args.shards, split=args.split, out=args.out, run=args.run,
                       step=args.step, model_file=args.model, coco_ann=args.coco_ann,
                       oracle=args.oracle, batch_size=args.batch_size,
                       max_samples=args.max_samples, num_workers=args.workers,
                       refine=args.decode, protocol=protocol_from(args), boxes=args.boxes,
                       coco_root=args.coco, device=args.device, precision=args.precision,
                       best=model_rule(args))


def _results_options(args: argparse.Namespace):
    from .evaluation.results_file import ResultsOptions

    others = [f"--{k.replace('_', '-')}" for k in ("run", "model", "shards", "boxes", "coco",
                                                   "oracle", "step") if getattr(args, k, None)]
    if others or getattr(args, "nproc", 1) > 1:
        raise UserError(f"--results scores a results file as it is: give it with --ann FILE "
                        f"--out DIR only, not {', '.join(others) or '--nproc'}")
    if not args.coco_ann:
        raise UserError("--results needs --ann FILE (the annotation file to score it against)")
    return ResultsOptions(results=args.results, ann=args.coco_ann, out=args.out,
                          schema_file=args.schema, category=args.category,
                          oks_scale=args.protocol)


def protocol_from(args: argparse.Namespace) -> Protocol:
    try:
        return Protocol(box_score_threshold=args.box_score_threshold, oks_nms=args.oks_nms,
                        keypoint_threshold=args.keypoint_threshold, flip=not args.no_flip,
                        flip_shift=args.flip_shift, enlarge=args.enlarge,
                        oks_scale=getattr(args, "protocol", None))
    except ValueError as exc:
        raise UserError(str(exc)) from None


OPTIONS_FILE = "eval_options.json"
"""The resolved options of an evaluation, written into its output directory."""


def evaluate(opts) -> int:
    """Evaluate `opts` (EvalOptions) in this process (one rank of a torchrun group, or alone);
    print the summary."""
    from .evaluation.results_file import ResultsOptions, print_results_summary, score_results
    from .evaluation.runner import print_summary, run_eval

    if isinstance(opts, ResultsOptions):
        summary = score_results(opts)
        print_results_summary(summary)
        print(f"report: {opts.out}/report.md")
        return 0
    summary = run_eval(opts)
    if summary:  # rank 0
        print_summary(summary)
        print(f"report: {opts.out}/report.md")
    return 0


def write_options(opts) -> Path:
    """OUT/eval_options.json: the resolved options, what every rank of `shg eval --nproc N`
    reads (one place parses the command line)."""
    from dataclasses import asdict

    from shards import atomic

    path = Path(opts.out) / OPTIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, asdict(opts), indent=1)
    return path


def read_options(path: str | Path):
    from .evaluation.runner import EvalOptions

    values = json.loads(Path(path).read_text())
    return EvalOptions(**{**values, "protocol": Protocol(**values["protocol"])})


def torchrun(opts, nproc: int) -> int:
    """Evaluate `opts` on `nproc` ranks of this machine through torchrun."""
    return torchrun_module("shg.evaluate", write_options(opts), nproc)


def torchrun_module(module: str, options: Path, nproc: int) -> int:
    """`python -m MODULE --options OPTIONS` on `nproc` ranks of this machine through torchrun
    (`shg eval --nproc N`, `shg analyze ... --nproc N`); its exit status."""
    return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                            f"--nproc_per_node={nproc}", "-m", module, "--options",
                            str(options)])


@contextlib.contextmanager
def process_group():
    """The gloo group of the ranks torchrun started (WORLD_SIZE > 1 and none yet), for the
    body's collectives; nothing in a lone process."""
    import torch

    grouped = int(os.environ.get("WORLD_SIZE", "1")) > 1 and not torch.distributed.is_initialized()
    if grouped:
        torch.distributed.init_process_group("gloo")
    try:
        yield
    finally:
        if grouped:
            # ended here, not by the interpreter's teardown, where gloo's threads can abort
            # the process ("terminate called without an active exception") after the work
            torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="shg.evaluate", description=__doc__.split("\n")[0])
    if argv[:1] == ["--options"]:  # from `shg eval --nproc N`
        parser.add_argument("--options", required=True, help=f"an {OPTIONS_FILE}")
    else:
        add_arguments(parser)
    args = parser.parse_args(argv)
    from .logs import setup_logging

    setup_logging()
    try:
        with process_group():
            return evaluate(read_options(args.options) if "options" in args else options(args))
    except USER_ERRORS as exc:
        print(f"shg eval: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    from .exit import run_main

    run_main(main)
