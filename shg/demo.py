"""`shg demo`: the whole pipeline on the project's own synthetic people (what `make demo` runs).

Each step is the same command a user would type; the demo only chains them under one folder
(runs/demo by default) and skips steps whose output already exists.
"""

from __future__ import annotations

import time
from pathlib import Path


def run_demo(out: str, train_images: int = 600, val_images: int = 100) -> int:
    from .cli import main as shg

    root = Path(out)
    root.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def step(title: str) -> None:
        print(f"\n=== {title}  [{time.perf_counter() - start:.0f} s]", flush=True)

    coco, shards = root / "coco", root / "shards"
    step(f"synthetic COCO people -> {coco}")
    if not (coco / "annotations" / "person_keypoints_val2017.json").exists():
        _check(shg(["synth", "--out", str(coco), "--train", str(train_images),
                    "--val", str(val_images), "--seed", "0"]))
    else:
        print("already there")
    step(f"thesis crops -> WebDataset shards in {shards}")
    for split in ("train2017", "val2017"):
        _check(shg(["shards", "build", "--coco", str(coco), "--split", split,
                    "--out", str(shards), "--shard-size", "200", "--workers", "2", "--quiet"]))
    run = root / "train"
    step(f"train a 2-stack SHG (configs/demo.toml) -> {run}")
    config = Path(__file__).resolve().parents[1] / "configs" / "demo.toml"
    _check(shg(["train", "--config", str(config), f"run_dir={run}", f"data.shards={shards}"]))
    step("export the best-by-PCK model")
    _check(shg(["export", "--run", str(run), "--out", str(root / "model.safetensors")]))
    step("evaluate the best model on the validation split (PCK, COCO AP, report)")
    _check(shg(["eval", "--run", str(run), "--shards", str(shards), "--split", "val2017",
                "--coco-ann", str(coco / "annotations" / "person_keypoints_val2017.json"),
                "--out", str(root / "eval")]))
    step("predict one validation image")
    image = sorted((coco / "val2017").glob("*.jpg"))[0]
    import contextlib
    import io

    with contextlib.redirect_stdout(io.StringIO()):  # the JSON is long; the picture says it
        _check(shg(["predict", "--model", str(root / "model.safetensors"), str(image),
                    "--out", str(root / "predict.png")]))
    analysis = root / "analysis"
    step("latent analysis: PCA of the bottleneck, walks with nearest real samples")
    _check(shg(["analyze", "latent", "--run", str(run), "--shards", str(shards),
                "--split", "train2017", "--max-samples", "600", "--out", str(analysis / "latent")]))
    step("skeleton clusters: K-means + silhouette, all vs full skeletons")
    _check(shg(["analyze", "skeletons", "--shards", str(shards), "--split", "train2017",
                "--out", str(analysis / "skeletons")]))
    step("skip-connection ablation on perfectly predicted samples")
    _check(shg(["analyze", "skips", "--run", str(run), "--shards", str(shards),
                "--split", "val2017", "--out", str(analysis / "skips")]))
    short = ["eval.every_steps=75", "checkpoint.every_steps=75", "optim.schedule=constant",
             "optim.warmup_steps=0"]
    step("bottleneck autoencoder, phase 1: denoising AE on the frozen SHG's latents")
    _check(shg(["ae", "train", "--run", str(run), "train.max_steps=150", "optim.lr=1e-3",
                *short]))
    step("phase 2 (SHG + AE) vs the plain SHG trained as long: the fair comparison")
    _check(shg(["ae", "compare", "--run", str(run), "--ae", f"{run}-ae", "--out",
                str(root / "ae_compare"), "train.max_steps=150", "optim.lr=2.5e-4", *short]))
    step("done")
    print(f"everything is under {root}/:")
    print(f"  evaluation report  {root / 'eval' / 'report.md'} (+ PNG plots beside it)")
    print(f"  training curves    {run / 'metrics.jsonl'}, tensorboard --logdir {run / 'tb'}")
    print(f"  exported model     {root / 'model.safetensors'}")
    print(f"  a prediction       {root / 'predict.png'}")
    print(f"  analyses (PNG+JSON) {analysis}/latent, {analysis}/skeletons, {analysis}/skips")
    print(f"  AE vs longer training {root / 'ae_compare' / 'compare.md'}")
    return 0


def _check(code: int) -> None:
    if code:
        raise SystemExit(code)
