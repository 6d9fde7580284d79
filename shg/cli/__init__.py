"""The `shg` command line: the top layer (it imports shg, launcher and shards; nothing imports
it). This module holds what every command shares: the top-level parser and its options
(-v/-q), the table of commands in the order `shg --help` lists them, and the error handling (a
user error, UserError or DataError, prints one line and exits 2; anything else keeps its
traceback).

Each command group is a module with its commands' arguments and handlers: data (synth, shards),
labels (labels export), train (train, ae), evaluate (eval), predict (export, predict,
detector), analyze, submit (submit, study), status (status, info), demo. A handler turns the
arguments into the library's options, calls the library and hands the result to render, the
one module that prints results. Commands import their heavy modules when they run, so
`shg --help` is fast."""

from __future__ import annotations

import argparse
import sys

from ..errors import EXIT_USAGE, USER_ERRORS, one_line
from . import analyze, data, demo, evaluate, labels, predict, status, submit, train

COMMANDS = (data.add_synth, data.add_shards, labels.add_labels, train.add_train,
            predict.add_export, evaluate.add_eval, predict.add_predict, analyze.add_analyze,
            train.add_ae, submit.add_submit, submit.add_study, predict.add_detector,
            status.add_status, status.add_info, demo.add_demo)
"""Each adds its command (and subcommands) to the top level, in this order."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shg", description="Stacked Hourglass pose estimation toolkit (COCO keypoints).")
    volume = parser.add_mutually_exclusive_group()
    volume.add_argument("-v", "--verbose", action="store_true", help="debug messages too")
    volume.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in COMMANDS:
        add(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["demo"]:  # the recipe parses its own arguments, --help included
        return demo.demo(argparse.Namespace(args=argv[1:]))
    args = build_parser().parse_args(argv)
    from ..logs import setup_logging

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
    from ..exit import run_main

    run_main(main)
