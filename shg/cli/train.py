"""`shg train` and `shg ae train|finetune|compare`: training."""

from __future__ import annotations

import argparse

from .. import train as train_entry
from . import render
from .base import add_command, add_group

AE_PHASES = (("train", "phase 1: train the AE on a frozen SHG's bottleneck latents"),
             ("finetune", "phase 2: the SHG with the AE inserted, pose loss"),
             ("compare", "phase 2 vs the SHG trained as long without AE"))


def add_train(sub) -> None:
    add_command(sub, "train", "train a Stacked Hourglass (Accelerate; DDP/DeepSpeed)",
                _train_args, train)


def add_ae(sub) -> None:
    aesub = add_group(sub, "ae", "denoising autoencoder at the hourglass bottleneck",
                      "ae_command", "PHASE")
    for name, text in AE_PHASES:
        add_command(aesub, name, text, lambda p, n=name: _ae_args(p, n), ae)


# ----------------------------------------------------------------------------- train
def _train_args(p: argparse.ArgumentParser) -> None:
    train_entry.add_arguments(p)
    p.add_argument("--nproc", type=int, default=1,
                   help="processes on this machine (stop signals are forwarded to all)")


def train(args: argparse.Namespace) -> int:
    forwarded = (["--config", args.config] if args.config else []) + train_entry.overrides_of(args)
    if args.nproc > 1:
        from ..training.launch import train_processes

        return train_processes(forwarded, args.nproc)
    return train_entry.main(forwarded)


# ----------------------------------------------------------------------------- ae
def _ae_args(p: argparse.ArgumentParser, phase: str) -> None:
    p.add_argument("--run", required=True, help="the trained SHG run directory")
    if phase != "train":
        p.add_argument("--ae", required=True, help="the phase-1 run directory")
    if phase == "compare":
        p.add_argument("--out", required=True, help="where the table and plot go")
    p.add_argument("--nproc", type=int, default=1)
    p.add_argument("overrides", nargs="*", metavar="section.key=value")


def ae(args: argparse.Namespace) -> int:
    from ..studies import ae_compare

    if args.ae_command == "train":
        out = ae_compare.phase1(args.run, args.overrides, args.nproc)
    elif args.ae_command == "finetune":
        out = ae_compare.phase2(args.run, args.ae, args.overrides, args.nproc)
    else:
        ae_compare.compare(args.run, args.ae, args.out, args.overrides, args.nproc)
        out = args.out
    render.written_to(out)
    return 0
