"""`shg eval`: scores of a trained model, or of a results file (the arguments and the
evaluation are shg/evaluate.py's, shared with its torchrun ranks; it prints the summary)."""

from __future__ import annotations

import argparse

from .. import evaluate as evaluate_entry
from .base import add_command


def add_eval(sub) -> None:
    add_command(sub, "eval", "PCK, COCO AP and a report for a trained run", _eval_args, evaluate)


def _eval_args(p: argparse.ArgumentParser) -> None:
    evaluate_entry.add_arguments(p)
    p.add_argument("--nproc", type=int, default=1, help="processes (through torchrun)")


def evaluate(args: argparse.Namespace) -> int:
    opts = evaluate_entry.options(args)  # argument errors here, before starting processes
    if args.nproc > 1:
        return evaluate_entry.torchrun(opts, args.nproc)
    return evaluate_entry.evaluate(opts)
