"""Data pipeline benchmark: shard building and reading, side by side with a folder of PNGs.

    .venv/bin/python bench/data.py [--images 200] [--batches 40] [--batch-size 8] [--json]

Measured in one run, one process each (= one loader worker):
- build: crops/s of `shg shards build` (PNG level 1, the default, and level 0);
- reader: samples/s the training process receives from one worker at the default settings
  (uint8 crops, augmentation and targets in the worker: augment_on = "loader", what "auto"
  picks on a CPU), and at PNG level 0;
- reader, device augmentation: samples/s of a worker that only decodes (augment_on =
  "device"), and samples/s of `device_augment` on this machine's CPU for the same batches
  (the work that moves to the GPU);
- decode only: PNG decoding alone (the floor of any reader of these shards);
- folder: the thesis's layout, one PNG + one JSON per crop in a folder, PIL decode, PIL
  affine warp, the same targets and uint8 output (the same work as the reader).
`--json` prints one JSON object with these rates (keys ending in _per_s) and the ratios.
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


def folder_reader(folder: Path, cfg, batches: int, batch_size: int) -> int:
    """The usual per-file loader: list the folder, PIL-decode each PNG, PIL-warp, same targets,
    uint8 CHW batches (as the shard reader ships)."""
    from shards.sample import augmentation_matrix, codec
    from shards.schema import COCO_PERSON

    files = sorted(folder.glob("*.png"))
    rng = np.random.default_rng(0)
    n = 0
    for b in range(batches):
        images, maps = [], []
        for i in range(batch_size):
            path = files[(b * batch_size + i) % len(files)]
            meta = json.loads(path.with_suffix(".json").read_text())
            image = Image.open(path).convert("RGB")
            kps = np.asarray(meta["keypoints"], dtype=np.float64).reshape(-1, 3)
            m, flipped = augmentation_matrix(rng, cfg, 256)
            inv = np.linalg.inv(np.vstack([m, [0, 0, 1]]))[:2].ravel()
            image = image.transform((256, 256), Image.Transform.AFFINE, tuple(inv),
                                    resample=Image.Resampling.BILINEAR)
            lab = kps[:, 2] > 0
            kps[lab, :2] = kps[lab, :2] @ m[:, :2].T + m[:, 2]
            if flipped:
                kps = kps[list(COCO_PERSON.flip_index)]
            target, _ = codec(cfg, 256).encode(kps, cfg.occluded_weight)
            images.append(np.asarray(image).transpose(2, 0, 1))
            maps.append(target)
        np.stack(images), np.stack(maps)
        n += batch_size
    return n


def timed(fn, *args) -> tuple[float, object]:
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import torch

    from shards.build import BuildOptions, build
    from shards.manifest import read_manifest
    from shards.reader import TrainStream, read_shard
    from shards.sample import SampleConfig, decode_png, device_augment
    from shards.schema import COCO_PERSON
    from shg.synth import SynthOptions, synthesize

    torch.set_num_threads(1)  # one worker's share of the machine, for every row
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(SynthOptions(out=str(tmp / "coco"), train=args.images, val=0, seed=1))
        built = {}
        for level in (1, 0):
            built[level] = build(BuildOptions(
                coco_root=str(tmp / "coco"), split="train2017", out=str(tmp / f"shards{level}"),
                shard_size=100, progress=False, png_level=level), log=lambda *a: None)
        man = read_manifest(tmp / "shards1")["splits"]["train2017"]
        raws = [raw for shard in man["shards"]
                for raw in read_shard(tmp / "shards1" / shard["file"], None)]
        # The thesis's layout: the same crops as PNG files (PIL's default compression).
        folder = tmp / "folder"
        folder.mkdir()
        for raw in raws:
            Image.open(io.BytesIO(raw["png"])).save(folder / f"{raw['__key__']}.png")
            (folder / f"{raw['__key__']}.json").write_bytes(raw["json"])
        n = args.batches * args.batch_size

        def reader(level: int, where: str) -> tuple[float, list]:
            stream = TrainStream(tmp / f"shards{level}", "train2017", args.batch_size, seed=0,
                                 rank=0, world=1, num_batches=args.batches + 2,
                                 cfg=SampleConfig(augment_on=where))
            it = iter(stream)
            next(it), next(it)  # warm-up: imports, first shard open
            seconds, batches = timed(lambda: [next(it) for _ in range(args.batches)])
            return n / seconds, batches

        folder_reader(folder, SampleConfig(), 2, args.batch_size)
        folder_s, _ = timed(folder_reader, folder, SampleConfig(), args.batches, args.batch_size)
        decode_s, _ = timed(lambda: [decode_png(raws[i % len(raws)]["png"]) for i in range(n)])
        rate1, _ = reader(1, "loader")
        rate0, _ = reader(0, "loader")
        device_reader, device_batches = reader(1, "device")
        cfg = SampleConfig(augment_on="device")
        device_augment(device_batches[0], cfg, "cpu", COCO_PERSON)
        aug_s, _ = timed(lambda: [device_augment(b, cfg, "cpu", COCO_PERSON)
                                  for b in device_batches])
        size1 = sum(p.stat().st_size for p in (tmp / "shards1").glob("*.tar"))
        size0 = sum(p.stat().st_size for p in (tmp / "shards0").glob("*.tar"))
        result = {
            "samples": man["num_samples"], "batch_size": args.batch_size,
            "build_crops_per_s": round(built[1]["crops_per_second"], 1),
            "build_level0_crops_per_s": round(built[0]["crops_per_second"], 1),
            "reader_samples_per_s": round(rate1, 1),
            "reader_level0_samples_per_s": round(rate0, 1),
            "reader_decode_only_worker_samples_per_s": round(device_reader, 1),
            "device_augment_cpu_samples_per_s": round(n / aug_s, 1),
            "decode_only_samples_per_s": round(n / decode_s, 1),
            "folder_samples_per_s": round(n / folder_s, 1),
            "ratio_reader_vs_folder": round(rate1 / (n / folder_s), 2),
            "ratio_level0_vs_folder": round(rate0 / (n / folder_s), 2),
            "bytes_per_crop_level1": round(size1 / man["num_samples"]),
            "bytes_per_crop_level0": round(size0 / man["num_samples"]),
        }
    if args.json:
        print(json.dumps(result))
        return
    print(f"samples: {result['samples']} crops from {args.images} synthetic images, "
          f"batch {args.batch_size}, one process each")
    rows = [("shards build, png level 1 (crops/s)", "build_crops_per_s"),
            ("shards build, png level 0 (crops/s)", "build_level0_crops_per_s"),
            ("folder of PNGs, PIL (samples/s)", "folder_samples_per_s"),
            ("PNG decode only (samples/s)", "decode_only_samples_per_s"),
            ("shard reader, level 1 (samples/s)", "reader_samples_per_s"),
            ("shard reader, level 0 (samples/s)", "reader_level0_samples_per_s"),
            ("worker, augment_on=device (samples/s)", "reader_decode_only_worker_samples_per_s"),
            ("device_augment on this CPU (samples/s)", "device_augment_cpu_samples_per_s")]
    print(f"{'what':<46}{'rate':>12}")
    for label, key in rows:
        print(f"{label:<46}{result[key]:>12.1f}")
    print(f"ratio shard reader / folder: level 1 {result['ratio_reader_vs_folder']:.2f}x, "
          f"level 0 {result['ratio_level0_vs_folder']:.2f}x; bytes per crop: level 1 "
          f"{result['bytes_per_crop_level1'] / 1024:.0f} KiB, level 0 "
          f"{result['bytes_per_crop_level0'] / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
