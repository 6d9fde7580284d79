"""Data pipeline benchmark: shard building and reading, side by side with a folder of PNGs.

    .venv/bin/python bench/data.py [--images 200] [--batches 40]

Prints crops/s of `shg shards build` (one process), samples/s of the shard reader (decode +
augment + targets, one process = one loader worker) and of the same work done the thesis's way
(one PNG file per crop in a folder, PIL decode and PIL affine warp), and the ratio.
"""

from __future__ import annotations

import argparse
import io
import json
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image


def folder_reader(folder: Path, mean: np.ndarray, cfg, batches: int, batch_size: int):
    """The usual per-file loader: list the folder, PIL-decode each PNG, PIL-warp, same targets."""
    from shards.sample import augmentation_matrix, heatmaps
    from shards.keypoints import FLIP_INDEX

    files = sorted(folder.glob("*.png"))
    rng = np.random.default_rng(0)
    n = 0
    for b in range(batches):
        images, maps = [], []
        for i in range(batch_size):
            path = files[(b * batch_size + i) % len(files)]
            meta = json.loads(path.with_suffix(".json").read_text())
            image = Image.open(path).convert("RGB")
            kps = np.asarray(meta["keypoints"], dtype=np.float64)
            m, flipped = augmentation_matrix(rng, cfg, 256)
            inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2].ravel()
            image = image.transform((256, 256), Image.Transform.AFFINE, tuple(inv),
                                    resample=Image.Resampling.BILINEAR)
            lab = kps[:, 2] > 0
            kps[lab, :2] = kps[lab, :2] @ m[:, :2].T + m[:, 2]
            if flipped:
                kps = kps[list(FLIP_INDEX)]
            target, _ = heatmaps(kps, 256, cfg)
            pixels = (np.asarray(image, dtype=np.float32) - mean) / 255.0
            images.append(pixels.transpose(2, 0, 1))
            maps.append(target)
        np.stack(images), np.stack(maps)
        n += batch_size
    return n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args()

    from shards.build import BuildOptions, build
    from shards.manifest import read_manifest
    from shards.reader import TrainStream, read_shard
    from shards.sample import SampleConfig
    from shg.synth import SynthOptions, synthesize

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(SynthOptions(out=str(tmp / "coco"), train=args.images, val=0, seed=1))
        results = {}
        for level in (1, 0):
            out = tmp / f"shards{level}"
            s = build(BuildOptions(coco_root=str(tmp / "coco"), split="train2017", out=str(out),
                                   shard_size=100, progress=False, png_level=level),
                      log=lambda *a: None)
            results[level] = s
        man = read_manifest(tmp / "shards1")["splits"]["train2017"]
        mean = np.asarray(man["mean_rgb"], dtype=np.float32)
        # The thesis's layout: the same crops as PNG files (PIL's default compression).
        folder = tmp / "folder"
        folder.mkdir()
        for shard in man["shards"]:
            for raw in read_shard(tmp / "shards1" / shard["file"], None):
                Image.open(io.BytesIO(raw["png"])).save(folder / f"{raw['__key__']}.png")
                (folder / f"{raw['__key__']}.json").write_bytes(raw["json"])
        cfg = SampleConfig()

        def shard_rate(level: int) -> float:
            stream = TrainStream(tmp / f"shards{level}", "train2017", args.batch_size, seed=0,
                                 rank=0, world=1, num_batches=args.batches + 2)
            it = iter(stream)
            next(it), next(it)  # warm-up: imports, first shard open
            t = time.perf_counter()
            for _ in range(args.batches):
                next(it)
            return args.batches * args.batch_size / (time.perf_counter() - t)

        folder_reader(folder, mean, cfg, 2, args.batch_size)
        t = time.perf_counter()
        n = folder_reader(folder, mean, cfg, args.batches, args.batch_size)
        folder_rate = n / (time.perf_counter() - t)
        rate1, rate0 = shard_rate(1), shard_rate(0)
        size1 = sum(p.stat().st_size for p in (tmp / "shards1").glob("*.tar"))
        size0 = sum(p.stat().st_size for p in (tmp / "shards0").glob("*.tar"))
        print(f"samples: {man['num_samples']} crops from {args.images} synthetic images")
        print(f"{'what':<46}{'rate':>12}")
        print(f"{'shards build, png level 1 (crops/s, 1 proc)':<46}"
              f"{results[1]['crops_per_second']:>12.1f}")
        print(f"{'shards build, png level 0 (crops/s, 1 proc)':<46}"
              f"{results[0]['crops_per_second']:>12.1f}")
        print(f"{'folder of PNGs, PIL (samples/s, 1 worker)':<46}{folder_rate:>12.1f}")
        print(f"{'shard reader, png level 1 (samples/s, 1 wkr)':<46}{rate1:>12.1f}")
        print(f"{'shard reader, png level 0 (samples/s, 1 wkr)':<46}{rate0:>12.1f}")
        print(f"ratio shard/folder: level 1 {rate1 / folder_rate:.2f}x, "
              f"level 0 {rate0 / folder_rate:.2f}x; "
              f"bytes per crop: level 1 {size1 / man['num_samples'] / 1024:.0f} KiB, "
              f"level 0 {size0 / man['num_samples'] / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
