"""The `shg` command line. Subcommands import their heavy modules lazily so `shg --help` is fast."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _cmd_synth(args: argparse.Namespace) -> int:
    from .synth import SynthOptions, synthesize

    counts = synthesize(SynthOptions(out=args.out, train=args.train, val=args.val,
                                     seed=args.seed, max_people=args.max_people))
    for split, c in counts.items():
        print(f"{split}: {c['images']} images, {c['persons']} persons -> {args.out}/{split}")
    return 0


def _print_skips(entry_or_summary: dict, name: str) -> None:
    skipped = entry_or_summary.get("skipped") or {}
    filtered = entry_or_summary.get("filtered") or {}
    dropped = entry_or_summary.get("dropped_keypoints") or {}
    if filtered:
        print(f"  {name} not eligible: " + ", ".join(f"{k}={v}" for k, v in filtered.items()))
    if dropped:
        print(f"  {name} keypoints dropped: " + ", ".join(f"{k}={v}" for k, v in dropped.items()))
    if skipped:
        print(f"  {name} SKIPPED persons (bad input): "
              + ", ".join(f"{k}={v}" for k, v in skipped.items()))


def _cmd_shards_build(args: argparse.Namespace) -> int:
    from shards.build import BuildOptions, build

    summary = build(BuildOptions(
        coco_root=args.coco, split=args.split, out=args.out, shard_size=args.shard_size,
        workers=args.workers, task_index=args.task_index, num_tasks=args.num_tasks,
        min_keypoints=args.min_keypoints, strict=args.strict, progress=not args.quiet,
        png_level=args.png_level))
    print(f"{summary['split']}: task {summary['task_index']}/{summary['num_tasks']}: "
          f"{summary['shards_built']} shards, {summary['crops_written']} crops in "
          f"{summary['seconds']} s ({summary['crops_per_second']} crops/s)")
    if summary["skipped_this_task"]:
        print("  skipped in this task: " + ", ".join(
            f"{k}={v}" for k, v in summary["skipped_this_task"].items())
            + f" (first: {summary['first_offender']})")
    if "manifest" in summary:
        m = summary["manifest"]
        print(f"  manifest: {m['num_samples']} samples in {len(m['shards'])} shards, "
              f"mean RGB {m['mean_rgb']}")
        _print_skips(m, args.split)
    else:
        print(f"  run `shg shards finalize {args.out} --split {args.split}` once all tasks end")
    return 0


def _cmd_shards_finalize(args: argparse.Namespace) -> int:
    from shards.build import finalize

    m = finalize(args.dir, args.split)
    print(f"{args.split}: {m['num_samples']} samples in {len(m['shards'])} shards, "
          f"mean RGB {m['mean_rgb']}")
    _print_skips(m, args.split)
    return 0


def _cmd_shards_info(args: argparse.Namespace) -> int:
    from shards.build import read_manifest

    manifest = read_manifest(args.dir)
    if args.json:
        print(json.dumps(manifest, indent=1))
        return 0
    for split, m in manifest["splits"].items():
        print(f"{split}: {m['num_samples']} samples, {len(m['shards'])} shards, "
              f"mean RGB {m['mean_rgb']}, source {m['source']['annotation_file']}")
        _print_skips(m, split)
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    forwarded = (["--config", args.config] if args.config else []) + list(args.overrides)
    if args.resume:
        forwarded.append(f"checkpoint.resume={args.resume}")
    if args.nproc > 1:
        from .launch import run_local

        return run_local(["-m", "shg.train", *forwarded], args.nproc)
    from .train import main as train_main

    return train_main(forwarded)


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    path = export(args.run, args.out, step=args.step)
    print(f"wrote {path}")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from .model import StackedHourglass, count_parameters, forward_flops

    model = StackedHourglass(args.stacks, args.features, args.joints)
    flops = forward_flops(model, args.size)
    print(f"StackedHourglass(stacks={args.stacks}, features={args.features}, "
          f"joints={args.joints})")
    print(f"  parameters: {count_parameters(model):,}")
    print(f"  forward: {flops / 1e9:.2f} GFLOPs per {args.size}x{args.size} image "
          f"(training step ~{3 * flops / 1e9:.1f} GFLOPs per image)")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluate import EvalOptions, print_summary, run_eval

    if not args.oracle and not args.run and not args.model:
        raise ValueError("give --run RUN (with --best or --step N), --model FILE, or --oracle")
    if args.nproc > 1:
        import subprocess

        argv = ["--shards", args.shards, "--split", args.split, "--out", args.out,
                "--batch-size", str(args.batch_size), "--max-samples", str(args.max_samples),
                "--workers", str(args.workers), "--decode", args.decode]
        for flag, value in (("--run", args.run), ("--step", args.step), ("--model", args.model),
                            ("--coco-ann", args.coco_ann)):
            if value is not None:
                argv += [flag, str(value)]
        argv += ["--no-flip"] * args.no_flip + ["--oracle"] * args.oracle
        # `--` keeps torchrun from reading --run as an abbreviation of its --run-path.
        return subprocess.call([sys.executable, "-m", "torch.distributed.run", "--standalone",
                                f"--nproc_per_node={args.nproc}", "-m", "shg.evaluate", "--",
                                *argv])
    summary = run_eval(EvalOptions(
        shards=args.shards, split=args.split, out=args.out, run=args.run, step=args.step,
        model_file=args.model, coco_ann=args.coco_ann, flip=not args.no_flip,
        oracle=args.oracle, batch_size=args.batch_size, max_samples=args.max_samples,
        num_workers=args.workers, refine=args.decode))
    if summary:  # rank 0
        print_summary(summary)
        print(f"report: {args.out}/report.md")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from .predict import predict

    result = predict(args.model, args.image, args.bbox, args.out, flip=not args.no_flip)
    print(json.dumps(result, indent=1))
    return 0


def _cmd_analyze(args: argparse.Namespace) -> int:
    what = args.analysis
    if what == "latent":
        from .analysis.latent import LatentOptions, run_latent

        r = run_latent(LatentOptions(shards=args.shards, split=args.split, out=args.out,
                                     run=args.run, step=args.step, model_file=args.model,
                                     stack=args.stack, components=args.components,
                                     steps=[float(v) for v in args.walk.split(",")],
                                     limit=args.max_samples))
        ratios = r["explained_variance_ratio"]
        print(f"latent: {r['samples']} samples x {r['latent_dim']} dims; first components "
              "explain " + ", ".join(f"{v:.1%}" for v in ratios[:5])
              + f"; sample nearest the mean: {r['mean_nearest']['key']}")
    elif what == "skeletons":
        from .analysis.skeletons import SkeletonOptions, run_skeletons

        r = run_skeletons(SkeletonOptions(shards=args.shards, split=args.split, out=args.out,
                                          k_min=args.k_min, k_max=args.k_max))
        for name, pop in r["populations"].items():
            best = pop["best_k"]
            score = pop["silhouette"].get(str(best)) if best else None
            print(f"skeletons ({name}): {pop['count']} skeletons, best k = {best}"
                  + (f" (silhouette {score:.3f})" if score is not None else ""))
    else:
        from .analysis.skips import SkipOptions, run_skips

        r = run_skips(SkipOptions(shards=args.shards, split=args.split, out=args.out,
                                  run=args.run, step=args.step, model_file=args.model,
                                  norm=args.norm, threshold=args.threshold,
                                  limit=args.max_samples))
        print(f"skips: {r['perfect']} of {r['samples_seen']} samples perfectly predicted")
        for name, s in r["settings"].items():
            print(f"  skips off: {name:<8} PCK {s['pck']:.3f}  heatmap change "
                  f"{s['heatmap_change']:.3f}")
    print(f"written to {args.out}/")
    return 0


def _cmd_ae(args: argparse.Namespace) -> int:
    from . import ae_jobs

    if args.ae_command == "train":
        out = ae_jobs.phase1(args.run, args.overrides, args.nproc)
    elif args.ae_command == "finetune":
        out = ae_jobs.phase2(args.run, args.ae, args.overrides, args.nproc)
    else:
        ae_jobs.compare(args.run, args.ae, args.out, args.overrides, args.nproc)
        out = args.out
    print(f"written to {out}")
    return 0


def _cmd_submit(args: argparse.Namespace) -> int:
    from launcher import submit as sub

    if args.stage == "status":
        sub.status(args.folder)
        return 0
    from launcher.profile import load_profile

    profile = load_profile(args.profile, args.profile_set or [])
    which = {"pipeline": sub.ALL_STAGES + (("ae",) if args.ae else ()),
             "prepare": ("prepare",), "train": ("train",), "eval": ("eval",),
             "analyze": ("analyze",), "ae": ("ae",)}[args.stage]
    needs = {"coco": "prepare" in which, "config": "train" in which,
             "shards": bool(set(which) & {"prepare", "train", "eval", "analyze"}),
             "run": bool(set(which) & {"train", "eval", "analyze", "ae"})}
    missing = [f"--{k}" for k, needed in needs.items() if needed and not getattr(args, k)]
    if missing:
        raise ValueError(f"shg submit {args.stage} needs {', '.join(missing)}")
    # Jobs start in another directory, maybe on another node: hand them absolute paths.
    coco, shards, config, run = (str(Path(p).absolute()) if p else p
                                 for p in (args.coco, args.shards, args.config, args.run))
    if config and not Path(config).is_file():
        raise FileNotFoundError(f"--config {args.config}: no such file")
    run_name = Path(run).name if run else "prepare"
    if args.stage == "ae":
        wait = args.executor == "slurm" and not args.dry_run and \
            sub.training_still_to_finish(profile, run_name)
        if not wait and not args.dry_run and not (Path(run) / "config.toml").is_file():
            raise FileNotFoundError(f"--run {args.run}: no config.toml (train the SHG first, "
                                    "or use `shg submit pipeline --ae` to queue both)")
        stages = sub.ae_stages(run, args.overrides, profile, after=["train"] if wait else [])
    else:
        stages = sub.pipeline_stages(coco, shards, config, run, args.overrides, profile,
                                     args.shard_size, which)
    result = sub.submit(stages, profile, args.executor, run_name, dry_run=args.dry_run,
                        snapshot=not args.no_snapshot)
    if not args.dry_run:
        if args.executor == "slurm":
            print()
            sub.status(str(result["folder"]))
        print(f"\nlater: shg submit status {result['folder']}")
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    return run_demo(args.out, args.train, args.val)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shg", description="Stacked Hourglass pose estimation toolkit (COCO keypoints).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("synth", help="write a synthetic COCO-format people dataset")
    p.add_argument("--out", required=True, help="output root (annotations/, train2017/, val2017/)")
    p.add_argument("--train", type=int, default=600, help="training images (default 600)")
    p.add_argument("--val", type=int, default=120, help="validation images (default 120)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-people", type=int, default=3, help="people per image, at most")
    p.set_defaults(func=_cmd_synth)

    shards = sub.add_parser("shards", help="build and inspect WebDataset crop shards")
    ssub = shards.add_subparsers(dest="shards_command", metavar="ACTION", required=True)
    p = ssub.add_parser("build", help="crop persons of a COCO split into tar shards")
    p.add_argument("--coco", required=True, help="COCO root holding annotations/ and SPLIT/")
    p.add_argument("--split", required=True, help="e.g. train2017 or val2017")
    p.add_argument("--out", required=True, help="shard directory (shared by splits)")
    p.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    p.add_argument("--workers", type=int, default=1, help="processes on this machine")
    p.add_argument("--task-index", type=int, default=0, help="this task (Slurm array index)")
    p.add_argument("--num-tasks", type=int, default=1, help="tasks sharing the build")
    p.add_argument("--min-keypoints", type=int, default=1,
                   help="persons with fewer labelled keypoints are not used")
    p.add_argument("--strict", action="store_true",
                   help="fail on the first bad input instead of counting it as skipped")
    p.add_argument("--png-level", type=int, default=1,
                   help="zlib level 0-9 of the stored PNGs (0: ~2x disk, fastest reading)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_shards_build)
    p = ssub.add_parser("finalize", help="merge per-task statistics into manifest.json")
    p.add_argument("dir")
    p.add_argument("--split", required=True)
    p.set_defaults(func=_cmd_shards_finalize)
    p = ssub.add_parser("info", help="summarise a shard directory's manifest")
    p.add_argument("dir")
    p.add_argument("--json", action="store_true", help="print the whole manifest")
    p.set_defaults(func=_cmd_shards_info)
    p = sub.add_parser("train", help="train a Stacked Hourglass (Accelerate; DDP/DeepSpeed)")
    p.add_argument("--config", help="TOML config, e.g. configs/tiny.toml")
    p.add_argument("--nproc", type=int, default=1,
                   help="processes on this machine (stop signals are forwarded to all)")
    p.add_argument("--resume", choices=["auto", "none"],
                   help="auto (default): continue from the newest checkpoint; none: start over")
    p.add_argument("overrides", nargs="*", metavar="section.key=value")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("export", help="write a run's weights as plain safetensors")
    p.add_argument("--run", required=True, help="run directory")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--best", action="store_true", help="the best-by-PCK model (default)")
    g.add_argument("--step", type=int, help="the checkpoint of this step")
    p.add_argument("--out", required=True, help="output .safetensors")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("eval", help="PCK, COCO AP and a report for a trained run")
    p.add_argument("--run", help="run directory (its best/ model unless --step)")
    g = p.add_mutually_exclusive_group()
    g.add_argument("--best", action="store_true", help="the best-by-PCK model (default)")
    g.add_argument("--step", type=int, help="the checkpoint of this step")
    p.add_argument("--model", help="a .safetensors from `shg export` instead of --run")
    p.add_argument("--shards", required=True, help="shard directory")
    p.add_argument("--split", default="val2017")
    p.add_argument("--coco-ann", help="COCO annotation json: also compute COCO keypoint AP")
    p.add_argument("--out", required=True, help="output directory")
    p.add_argument("--no-flip", action="store_true", help="no flip-test averaging")
    p.add_argument("--oracle", action="store_true",
                   help="decode the ground-truth heatmaps (pipeline upper bound)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-samples", type=int, default=0, help="0 = all")
    p.add_argument("--workers", type=int, default=1, help="loader processes")
    p.add_argument("--decode", choices=["quarter", "dark", "none"], default="quarter",
                   help="heatmap refinement (default: quarter-cell shift)")
    p.add_argument("--nproc", type=int, default=1, help="processes (through torchrun)")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("predict", help="keypoints of one person in one image")
    p.add_argument("--model", required=True, help=".safetensors from `shg export`")
    p.add_argument("image")
    p.add_argument("--bbox", help="x,y,w,h of the person (default: the whole image)")
    p.add_argument("--out", help="write the image with the skeleton drawn here")
    p.add_argument("--no-flip", action="store_true")
    p.set_defaults(func=_cmd_predict)

    analyze = sub.add_parser("analyze", help="latent PCA walks, skeleton clusters, skip ablation")
    asub = analyze.add_subparsers(dest="analysis", metavar="ANALYSIS", required=True)
    for name, text in (("latent", "PCA of the bottleneck latents with nearest real samples"),
                       ("skeletons", "K-means on skeletons (all vs full) with silhouettes"),
                       ("skips", "switch hourglass skip connections off on perfect samples")):
        p = asub.add_parser(name, help=text)
        if name != "skeletons":
            p.add_argument("--run", help="run directory (best/ unless --step)")
            p.add_argument("--step", type=int)
            p.add_argument("--model", help=".safetensors instead of --run")
            p.add_argument("--max-samples", type=int, default=0, help="0 = the whole split")
        p.add_argument("--shards", required=True)
        p.add_argument("--split", default="train2017" if name != "skips" else "val2017")
        p.add_argument("--out", required=True)
        p.set_defaults(func=_cmd_analyze)
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

    ae = sub.add_parser("ae", help="denoising autoencoder at the hourglass bottleneck")
    aesub = ae.add_subparsers(dest="ae_command", metavar="PHASE", required=True)
    for name, text in (("train", "phase 1: train the AE on a frozen SHG's bottleneck latents"),
                       ("finetune", "phase 2: the SHG with the AE inserted, pose loss"),
                       ("compare", "phase 2 vs the SHG trained as long without AE")):
        p = aesub.add_parser(name, help=text)
        p.add_argument("--run", required=True, help="the trained SHG run directory")
        if name != "train":
            p.add_argument("--ae", required=True, help="the phase-1 run directory")
        if name == "compare":
            p.add_argument("--out", required=True, help="where the table and plot go")
        p.add_argument("--nproc", type=int, default=1)
        p.add_argument("overrides", nargs="*", metavar="section.key=value")
        p.set_defaults(func=_cmd_ae)

    submit = sub.add_parser("submit", help="queue the pipeline as Slurm jobs (submitit)")
    ssub2 = submit.add_subparsers(dest="stage", metavar="STAGE", required=True)
    for name, text in (("pipeline", "prepare -> finalize -> train -> eval + analyze [+ ae]"),
                       ("prepare", "shard building as a job array, then finalize"),
                       ("train", "the training job (nodes x tasks per node)"),
                       ("eval", "the evaluation job"), ("analyze", "the analysis jobs"),
                       ("ae", "bottleneck-AE phases 1 and 2, the baseline, the comparison")):
        p = ssub2.add_parser(name, help=text)
        p.add_argument("--profile", required=True, help="slurm/profiles/NAME.toml")
        p.add_argument("--set", dest="profile_set", action="append", metavar="KEY=VALUE",
                       help="override a profile key (repeatable)")
        p.add_argument("--executor", choices=["slurm", "local", "debug"], default="slurm")
        p.add_argument("--dry-run", action="store_true", help="print the sbatch scripts only")
        p.add_argument("--no-snapshot", action="store_true",
                       help="jobs import the live checkout instead of a copy made at submission")
        if name != "ae":
            p.add_argument("--shards", help="shard directory (shared filesystem)")
        if name in ("pipeline", "prepare"):
            p.add_argument("--coco", help="COCO root")
            p.add_argument("--shard-size", type=int, default=1000)
        if name in ("pipeline", "train"):
            p.add_argument("--config", help="training TOML")
        if name != "prepare":
            p.add_argument("--run", help="run directory")
        if name == "pipeline":
            p.add_argument("--ae", action="store_true",
                           help="also queue the bottleneck-AE phases after training")
        p.add_argument("overrides", nargs="*", metavar="section.key=value",
                       help="training config overrides")
        p.set_defaults(func=_cmd_submit, coco=None, shards=None, config=None, run=None,
                       shard_size=1000, ae=False)
    p = ssub2.add_parser("status", help="state of a submitted pipeline's jobs")
    p.add_argument("folder", help="the profile folder / run name printed at submission")
    p.set_defaults(func=_cmd_submit)

    p = sub.add_parser("info", help="parameters and FLOPs of an SHG")
    p.add_argument("--stacks", type=int, default=8)
    p.add_argument("--features", type=int, default=256)
    p.add_argument("--joints", type=int, default=17)
    p.add_argument("--size", type=int, default=256, help="input side in pixels")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("demo", help="run the whole pipeline on synthetic data (make demo)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--train", type=int, default=600, help="synthetic training images")
    p.add_argument("--val", type=int, default=100, help="synthetic validation images")
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from shards.coco import DataError

    try:
        return args.func(args)
    except (DataError, ValueError, FileNotFoundError, RuntimeError) as exc:
        print(f"shg {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
