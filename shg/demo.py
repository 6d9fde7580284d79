"""The demo recipe: the whole pipeline on the project's own synthetic people, as library calls
(what `make demo` and `shg demo` run: `python -m shg.demo --out runs/demo`). Nothing imports it.

Each step is what the matching `shg` command does; the demo chains them under one folder, skips
the synthetic data when it is already there, and ends with the time each step took. The crops
are 128 px (the thesis: 256), so the demo trains its 2-stack SHG in minutes on a laptop CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from shards.build import BuildOptions, build

from .analysis.latent import LatentOptions, run_latent
from .analysis.skeletons import SkeletonOptions, run_skeletons
from .analysis.skips import SkipOptions, run_skips
from .config import load_config
from .errors import EXIT_USAGE, USER_ERRORS, UserError, one_line
from .evaluation.runner import EvalOptions, print_summary, run_eval
from .inference.command import PredictOptions, run_predict
from .studies import ae_compare
from .synth import SynthOptions, synthesize
from .training import run as run_training
from .weights import export

CONFIG = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
CROP_SIZE = 128


def annotated_boxes(annotations: Path, image_id: int, out: Path) -> Path:
    """The image's annotated person boxes as a detection-results file: the demo has no
    detector weights offline (`shg predict` without --boxes uses a detector)."""
    import json

    anns = json.loads(annotations.read_text())["annotations"]
    out.write_text(json.dumps([{"image_id": image_id, "category_id": 1, "bbox": a["bbox"],
                                "score": 1.0} for a in anns
                               if a["image_id"] == image_id and not a.get("iscrowd")]))
    return out


class Stages:
    """Prints each stage's title and keeps its wall time for the table at the end."""

    def __init__(self):
        self.times: list[tuple[str, float]] = []
        self._current: tuple[str, float] | None = None

    def __call__(self, name: str, what: str) -> None:
        self.end()
        print(f"\n=== {name}: {what}", flush=True)
        self._current = (name, time.perf_counter())

    def end(self) -> None:
        if self._current:
            title, started = self._current
            self.times.append((title, time.perf_counter() - started))
            self._current = None

    def table(self) -> str:
        width = max(len(t) for t, _ in self.times)
        rows = [f"  {t:<{width}}  {s:7.1f} s" for t, s in self.times]
        total = sum(s for _, s in self.times)
        return "\n".join(["time per stage:", *rows, f"  {'total':<{width}}  {total:7.1f} s"])


def run_demo(out: str, train_images: int = 600, val_images: int = 100,
             overrides: list[str] = (), ae_steps: int = 150) -> dict:
    """The whole pipeline under `out`; `overrides` apply to every training (configs/demo.toml
    first). Returns the evaluation summary and the stage times."""
    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    stage = Stages()
    coco, shards = root / "coco", root / "shards"
    val_ann = coco / "annotations" / "person_keypoints_val2017.json"
    stage("synthetic data", f"COCO-format synthetic people -> {coco}")
    if not val_ann.exists():
        synthesize(SynthOptions(out=str(coco), train=train_images, val=val_images, seed=0))
    else:
        print("already there")
    stage("shards", f"thesis crops ({CROP_SIZE} px) -> WebDataset shards in {shards}")
    for split in ("train2017", "val2017"):
        summary = build(BuildOptions(coco_root=str(coco), split=split, out=str(shards),
                                     shard_size=200, workers=2, progress=False,
                                     crop_size=CROP_SIZE))
        print(f"{split}: {summary['manifest']['num_samples']} crops")
    run = root / "train"
    stage("training", f"a 2-stack SHG (configs/demo.toml) -> {run}")
    _trained(run_training(load_config(CONFIG, [f"run_dir={run}", f"data.shards={shards}",
                                               *overrides]), hard_exit=False))
    stage("export", "the best-by-PCK model")
    model = export(run, root / "model.safetensors")
    stage("evaluation", "the best model on the validation split (PCK, COCO AP, report)")
    evaluation = run_eval(EvalOptions(shards=str(shards), split="val2017",
                                      out=str(root / "eval"), run=str(run),
                                      coco_ann=str(val_ann)))
    print_summary(evaluation)
    stage("predict", "every person of one validation image (its annotated boxes)")
    image = sorted((coco / "val2017").glob("*.jpg"))[0]
    boxes = annotated_boxes(val_ann, int(image.stem), root / "predict-boxes.json")
    run_predict(PredictOptions(str(model), str(image), out=str(root / "predict.png"),
                               boxes=str(boxes), progress=False))
    analysis = root / "analysis"
    stage("latent analysis", "PCA of the bottleneck, walks with nearest real samples")
    run_latent(LatentOptions(shards=str(shards), split="train2017", out=str(analysis / "latent"),
                             run=str(run), limit=600))
    stage("skeleton clusters", "K-means + silhouette, all vs full skeletons")
    run_skeletons(SkeletonOptions(shards=str(shards), split="train2017",
                                  out=str(analysis / "skeletons")))
    stage("skip ablation", "skip connections off on perfectly predicted samples")
    run_skips(SkipOptions(shards=str(shards), split="train2017", out=str(analysis / "skips"),
                          run=str(run), limit=300))
    every = max(1, ae_steps // 2)
    short = [f"eval.every_steps={every}", f"checkpoint.every_steps={every}",
             "optim.schedule=constant", "optim.warmup_steps=0"]
    stage("AE phase 1", "a denoising AE on the frozen SHG's bottleneck latents")
    ae_compare.phase1(str(run), [f"train.max_steps={ae_steps}", "optim.lr=1e-3", *short,
                                 *overrides])
    stage("AE phase 2 + baseline", "SHG + AE vs the plain SHG trained as long")
    ae_compare.compare(str(run), f"{run}-ae", str(root / "ae_compare"),
                       [f"train.max_steps={ae_steps}", "optim.lr=2.5e-4", *short, *overrides])
    stage.end()
    print("\n=== done")
    print(f"everything is under {root}/:")
    print(f"  evaluation report  {root / 'eval' / 'report.md'} (+ PNG plots beside it)")
    print(f"  training curves    {run / 'metrics.jsonl'}, tensorboard --logdir {run / 'tb'}")
    print(f"  exported model     {model}")
    print(f"  a prediction       {root / 'predict.png'}")
    print(f"  analyses (PNG+JSON) {analysis}/latent, {analysis}/skeletons, {analysis}/skips")
    print(f"  AE vs longer training {root / 'ae_compare' / 'compare.md'}")
    pck = evaluation["pck"]["bbox"]["0.2"]
    print(f"\nthe demo model: PCK@0.2 (bbox) {pck:.3f}, COCO AP {evaluation['coco']['AP']:.3f} "
          "on the synthetic validation split\n" + stage.table())
    return {"eval": evaluation, "stages": dict(stage.times)}


def _trained(code: int) -> None:
    if code:
        raise UserError(f"demo training failed (exit {code}); see the output above")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="runs/demo")
    parser.add_argument("--train", type=int, default=600, help="synthetic training images")
    parser.add_argument("--val", type=int, default=100, help="synthetic validation images")
    parser.add_argument("--ae-steps", type=int, default=150,
                        help="steps of each autoencoder phase and of the baseline")
    parser.add_argument("overrides", nargs="*", metavar="section.key=value",
                        help="for every training (e.g. train.max_steps=50 for a quick look)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="shg demo", description=__doc__.split("\n")[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        run_demo(args.out, args.train, args.val, args.overrides, args.ae_steps)
    except USER_ERRORS as exc:
        print(f"shg demo: error: {one_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    return 0


if __name__ == "__main__":
    from .exit import run_main

    run_main(main)
