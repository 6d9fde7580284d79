"""`shg analyze latent|skeletons|skips`: the thesis's analyses (shg/analysis/; its entry prints
the summary, on rank 0 of a torchrun group too)."""

from __future__ import annotations

import argparse

from .. import evaluate as evaluate_entry
from .base import add_command, add_group

ANALYSES = (("latent", "PCA of the bottleneck latents with nearest real samples"),
            ("skeletons", "K-means on skeletons (all vs full) with silhouettes"),
            ("skips", "switch hourglass skip connections off on perfect samples"))


def add_analyze(sub) -> None:
    asub = add_group(sub, "analyze", "latent PCA walks, skeleton clusters, skip ablation",
                     "analysis", "ANALYSIS")
    for name, text in ANALYSES:
        add_command(asub, name, text, lambda p, n=name: _analyze_args(p, n), analyze)


def _analyze_args(p: argparse.ArgumentParser, name: str) -> None:
    if name != "skeletons":
        evaluate_entry.add_model_arguments(p, "run directory (best/ unless --step)",
                                           model_help=".safetensors instead of --run",
                                           rules=("step",), step=None)
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


def analyze(args: argparse.Namespace) -> int:
    from ..analysis import entry

    return entry.analyze(args.analysis, _options(args), getattr(args, "nproc", 1))


def _options(args: argparse.Namespace):
    """The options object of the analysis the arguments name."""
    if args.analysis == "skeletons":
        from ..analysis.skeletons import SkeletonOptions

        return SkeletonOptions(shards=args.shards, split=args.split, out=args.out,
                               k_min=args.k_min, k_max=args.k_max)
    model = {"shards": args.shards, "split": args.split, "out": args.out, "run": args.run,
             "step": args.step, "model_file": args.model, "limit": args.max_samples,
             "batch_size": args.batch_size, "num_workers": args.workers,
             "device": args.device, "precision": args.precision}
    if args.analysis == "latent":
        from ..analysis.latent import LatentOptions

        return LatentOptions(**model, stack=args.stack, components=args.components,
                             steps=[float(v) for v in args.walk.split(",")])
    from ..analysis.skips import SkipOptions

    return SkipOptions(**model, norm=args.norm, threshold=args.threshold,
                       max_perfect=args.max_perfect)

