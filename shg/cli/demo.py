"""`shg demo`: the whole pipeline on synthetic data. The demo is a recipe of library calls
(shg/demo.py) that nothing imports: it runs as its own process, with its own arguments."""

from __future__ import annotations

import argparse
import subprocess
import sys


def add_demo(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on synthetic data (make demo)",
                       add_help=False)
    # everything (--help too) goes to the recipe's own parser: its options live there alone
    p.add_argument("args", nargs=argparse.REMAINDER,
                   help="see `shg demo --help` (--out, --train, --val, --ae-steps, key=value)")
    p.set_defaults(func=demo)


def demo(args: argparse.Namespace) -> int:
    return subprocess.call([sys.executable, "-m", "shg.demo", *args.args])
