"""The demo recipe: the whole pipeline on the project's own synthetic people, as library calls
(what `make demo` and `shg demo` run: `python -m shg.demo --out runs/demo`). Nothing imports it.

Each step is what the matching `shg` command does; the demo chains them under one folder and
skips the synthetic data when it is already there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from shards.build import BuildOptions, build

from . import ae_study
from .analysis.latent import LatentOptions, run_latent
from .analysis.skeletons import SkeletonOptions, run_skeletons
from .analysis.skips import SkipOptions, run_skips
from .errors import EXIT_USAGE, USER_ERRORS, UserError, one_line
from .evaluation.runner import EvalOptions, print_summary, run_eval
from .predict import predict
from .synth import SynthOptions, synthesize
from .training.launch import train_processes
from .weights import export

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"


def run_demo(out: str, train_images: int = 600, val_images: int = 100) -> None:
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def step(title: str) -> None:
        print(f"\n=== {title}  [{time.perf_counter() - start:.0f} s]", flush=True)

    coco, shards = root / "coco", root / "shards"
    val_ann = coco / "annotations" / "person_keypoints_val2017.json"
    step(f"synthetic COCO people -> {coco}")
    if not val_ann.exists():
        synthesize(SynthOptions(out=str(coco), train=train_images, val=val_images, seed=0))
    else:
        print("already there")
    step(f"thesis crops -> WebDataset shards in {shards}")
    for split in ("train2017", "val2017"):
        summary = build(BuildOptions(coco_root=str(coco), split=split, out=str(shards),
                                     shard_size=200, workers=2, progress=False))
        print(f"{split}: {summary['manifest']['num_samples']} crops")
    run = root / "train"
    step(f"train a 2-stack SHG (configs/demo.toml) -> {run}")
    _trained(train_processes(["--config", str(CONFIG), f"run_dir={run}",
                              f"data.shards={shards}"]))
    step("export the best-by-PCK model")
    model = export(run, root / "model.safetensors")
    step("evaluate the best model on the validation split (PCK, COCO AP, report)")
    print_summary(run_eval(EvalOptions(shards=str(shards), split="val2017",
                                       out=str(root / "eval"), run=str(run),
                                       coco_ann=str(val_ann))))
    step("predict one validation image")
    image = sorted((coco / "val2017").glob("*.jpg"))[0]
    predict(str(model), str(image), out=str(root / "predict.png"))
    analysis = root / "analysis"
    step("latent analysis: PCA of the bottleneck, walks with nearest real samples")
    run_latent(LatentOptions(shards=str(shards), split="train2017", out=str(analysis / "latent"),
                             run=str(run), limit=600))
    step("skeleton clusters: K-means + silhouette, all vs full skeletons")
    run_skeletons(SkeletonOptions(shards=str(shards), split="train2017",
                                  out=str(analysis / "skeletons")))
    step("skip-connection ablation on perfectly predicted samples")
    run_skips(SkipOptions(shards=str(shards), split="train2017", out=str(analysis / "skips"),
                          run=str(run), limit=300))
    short = ["eval.every_steps=75", "checkpoint.every_steps=75", "optim.schedule=constant",
             "optim.warmup_steps=0"]
    step("bottleneck autoencoder, phase 1: denoising AE on the frozen SHG's latents")
    ae_study.phase1(str(run), ["train.max_steps=150", "optim.lr=1e-3", *short])
    step("phase 2 (SHG + AE) vs the plain SHG trained as long: the fair comparison")
    ae_study.compare(str(run), f"{run}-ae", str(root / "ae_compare"),
                     ["train.max_steps=150", "optim.lr=2.5e-4", *short])
    step("done")
    print(f"everything is under {root}/:")
    print(f"  evaluation report  {root / 'eval' / 'report.md'} (+ PNG plots beside it)")
    print(f"  training curves    {run / 'metrics.jsonl'}, tensorboard --logdir {run / 'tb'}")
    print(f"  exported model     {model}")
    print(f"  a prediction       {root / 'predict.png'}")
    print(f"  analyses (PNG+JSON) {analysis}/latent, {analysis}/skeletons, {analysis}/skips")
    print(f"  AE vs longer training {root / 'ae_compare' / 'compare.md'}")


def _trained(code: int) -> None:
    if code:
        raise UserError(f"demo training failed (exit {code}); see the output above")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shg demo", description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--train", type=int, default=600, help="synthetic training images")
    parser.add_argument("--val", type=int, default=100, help="synthetic validation images")
    args = parser.parse_args(argv)
    try:
        run_demo(args.out, args.train, args.val)
    except USER_ERRORS as exc:
        print(f"shg demo: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    sys.exit(main())
