"""Training entry point: `python -m shg.train` under any launcher.

    shg train --config configs/tiny.toml data.shards=runs/demo/shards         # one process
    shg train --config configs/tiny.toml --nproc 2                             # 2 processes
    torchrun --standalone --nproc_per_node 2 -m shg.train --config configs/tiny.toml
    ACCELERATE_USE_CPU=true accelerate launch --multi_gpu --num_processes 2 -m shg.train ...
    accelerate launch --num_processes 8 -m shg.train --config configs/coco.toml \\
        distributed.deepspeed_config=configs/deepspeed_zero2.json              # DeepSpeed ZeRO-2

Re-running the same command on a run directory with checkpoints resumes from the newest complete
one (checkpoint.resume=none starts over). The training itself lives in shg/training/.
"""

from __future__ import annotations

import argparse
import sys

from .config import ConfigError, load_config
from .errors import EXIT_USAGE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="TOML config, e.g. configs/tiny.toml")
    parser.add_argument("--resume", choices=["auto", "none"],
                        help="auto (default): continue from the newest checkpoint; none: start "
                             "over (same as checkpoint.resume=...)")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value")


def overrides_of(args: argparse.Namespace) -> list[str]:
    return list(args.overrides) + ([f"checkpoint.resume={args.resume}"] if args.resume else [])


def main(argv: list[str] | None = None) -> int:
    from .training import run

    parser = argparse.ArgumentParser(prog="shg.train", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, overrides_of(args))
    except ConfigError as exc:
        print(f"shg train: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    return run(cfg)


if __name__ == "__main__":
    from .exit import run_main

    run_main(main)
