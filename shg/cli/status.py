"""`shg status` and `shg info`: how far runs are, and what a network costs."""

from __future__ import annotations

import argparse

from . import render
from .base import add_command


def add_status(sub) -> None:
    add_command(sub, "status", "how far training runs are: step, img/s, ETA, metric, stalled",
                _status_args, status)


def add_info(sub) -> None:
    add_command(sub, "info", "parameters and FLOPs of an SHG", _info_args, info)


# ----------------------------------------------------------------------------- status
def _status_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories")


def status(args: argparse.Namespace) -> int:
    from ..run_status import run_progress

    render.run_progress(args.runs, (run_progress(run) for run in args.runs))
    return 0


# ----------------------------------------------------------------------------- info
def _info_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="a weights file (or run directory): its network, crops and "
                   "keypoint schema")
    p.add_argument("--stacks", type=int, default=8)
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--joints", type=int, default=17)
    p.add_argument("--size", type=int, default=256, help="input side in pixels")


def info(args: argparse.Namespace) -> int:
    from ..models import StackedHourglass, count_parameters, forward_flops

    model = None
    if args.model:
        shg, model = _weights_file(args.model, args.size)
        size = model["size"]
    else:
        shg = StackedHourglass(args.stacks, args.features, args.joints)
        size = args.size
    render.network({"stacks": shg.stacks, "features": shg.features, "joints": shg.joints,
                    "parameters": count_parameters(shg), "flops": forward_flops(shg, size),
                    "size": size}, model)
    return 0


def _weights_file(source: str, size: int):
    """The StackedHourglass of a weights file (or run) and what render.network shows of it."""
    from shards.schema import stored

    from ..weights import load_model

    model, meta, path = load_model(source, poses=False)
    return getattr(model, "shg", model), {
        "path": path, "class": type(model).__name__, "meta": meta, "schema": stored(meta),
        "size": int(meta.get("crop_size", size))}
