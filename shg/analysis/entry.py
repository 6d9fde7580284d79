"""Analysis entry point: one analysis in this process (`shg analyze ...`), or on every rank of a
torchrun group (`shg analyze latent|skips --nproc N`, through the mechanism of `shg eval --nproc
N`: shg/evaluate.py's torchrun_module and process_group).

    shg analyze latent --run RUN --shards DIR --out OUT --nproc N [...]
    shg analyze skips --run RUN --shards DIR --out OUT --nproc N [...]
             write the resolved options to OUT/analysis_options.json and start
             `python -m shg.analysis.entry --options OUT/analysis_options.json` on every rank:
             each rank runs the model over its share of the split, rank 0 writes the results.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from ..errors import EXIT_USAGE, USER_ERRORS, UserError, one_line

OPTIONS_FILE = "analysis_options.json"
"""The resolved options of a multi-rank analysis, written into its output directory."""

DISTRIBUTED = ("latent", "skips")
"""The analyses that run a model, split over ranks with --nproc."""


def options_class(kind: str):
    if kind == "latent":
        from .latent import LatentOptions

        return LatentOptions
    if kind == "skips":
        from .skips import SkipOptions

        return SkipOptions
    if kind == "skeletons":
        from .skeletons import SkeletonOptions

        return SkeletonOptions
    raise ValueError(f"unknown analysis {kind!r}; valid: latent, skips, skeletons")


def run(kind: str, opts) -> dict:
    """Run analysis `kind` with its options in this process (one rank of a group, or alone);
    its result ({} on ranks other than 0)."""
    if kind == "latent":
        from .latent import run_latent

        return run_latent(opts)
    if kind == "skips":
        from .skips import run_skips

        return run_skips(opts)
    from .skeletons import run_skeletons

    return run_skeletons(opts)


def analyze(kind: str, opts, nproc: int = 1) -> int:
    """`shg analyze KIND`: run it here, or on `nproc` ranks through torchrun; the summary lines
    printed (by rank 0)."""
    if nproc > 1:
        if kind not in DISTRIBUTED:
            raise UserError(f"--nproc is for {' and '.join(DISTRIBUTED)}; shg analyze {kind} "
                            "runs in one process")
        from ..evaluate import torchrun_module
        from ..evaluation.core import placement

        # a wrong --device or --precision fails here, once, not on every rank (and without
        # starting CUDA in this parent: "auto" is resolved by each rank)
        placement(opts.device, "fp32" if opts.precision == "auto" else opts.precision)
        return torchrun_module("shg.analysis.entry", write_options(kind, opts), nproc)
    result = run(kind, opts)
    if result:
        print_result(kind, result)
        print(f"written to {opts.out}/")
    return 0


def print_result(kind: str, r: dict) -> None:
    if kind == "latent":
        ratios = r["explained_variance_ratio"]
        print(f"latent: {r['samples']} samples x {r['latent_dim']} dims; first components "
              "explain " + ", ".join(f"{v:.1%}" for v in ratios[:5])
              + f"; sample nearest the mean: {r['mean_nearest']['key']}")
    elif kind == "skeletons":
        for name, pop in r["populations"].items():
            best = pop["best_k"]
            score = pop["silhouette"].get(str(best)) if best else None
            print(f"skeletons ({name}): {pop['count']} skeletons, best k = {best}"
                  + (f" (silhouette {score:.3f})" if score is not None else ""))
    else:
        print(f"skips: {r['perfect']} of {r['samples_seen']} samples read perfectly predicted "
              f"(split: {r['split_samples']})")
        for name, s in r["settings"].items():
            print(f"  skips off: {name:<8} PCK {s['pck']:.3f}  heatmap change "
                  f"{s['heatmap_change']:.3f}")


def write_options(kind: str, opts) -> Path:
    """OUT/analysis_options.json: the analysis and its resolved options, what every rank reads
    (one place parses the command line)."""
    from shards import atomic

    path = Path(opts.out) / OPTIONS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, {"analysis": kind, "options": asdict(opts)}, indent=1)
    return path


def read_options(path: str | Path):
    """(analysis, its options) of an OUT/analysis_options.json."""
    values = json.loads(Path(path).read_text())
    return values["analysis"], options_class(values["analysis"])(**values["options"])


def main(argv: list[str] | None = None) -> int:
    from ..evaluate import process_group
    from ..logs import setup_logging

    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="shg.analysis.entry", description=__doc__.split("\n")[0])
    parser.add_argument("--options", required=True, help=f"an {OPTIONS_FILE}")
    args = parser.parse_args(argv)
    setup_logging()
    try:
        with process_group():
            return analyze(*read_options(args.options))
    except USER_ERRORS as exc:
        print(f"shg analyze: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    from ..exit import run_main

    run_main(main)
