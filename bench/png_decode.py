"""PNG decoders on the shard crops: OpenCV (what the reader used) vs libspng (pyspng, what it
uses now), interleaved in one run on the same bytes, one thread.

    .venv/bin/python bench/png_decode.py [--coco ../shared/data/coco-sample] [--json]

The crops are the real COCO sample's val2017 persons cut as `shg shards build` cuts them (256
px), stored at PNG level 1 (the default) and level 0. Prints microseconds per crop (best of 5
rounds) for each decoder and level, and the speed-up; `--json`: one JSON object last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def crops(coco: Path, level: int, work: Path) -> list[bytes]:
    from shards.build import BuildOptions, build
    from shards.manifest import read_manifest
    from shards.reader import read_shard

    out = work / f"level{level}"
    build(BuildOptions(coco_root=str(coco), split="val2017", out=str(out), png_level=level,
                       progress=False, workers=1), log=lambda *a: None)
    return [raw["png"] for s in read_manifest(out)["splits"]["val2017"]["shards"]
            for raw in read_shard(out / s["file"], None)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--coco", default=str(REPO.parent / "shared" / "data" / "coco-sample"))
    p.add_argument("--json", action="store_true")
    a = p.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.path.insert(0, str(REPO))
    import cv2
    import numpy as np
    import pyspng

    cv2.setNumThreads(1)
    decoders = {"opencv": lambda d: cv2.imdecode(np.frombuffer(d, np.uint8),
                                                 cv2.IMREAD_COLOR_RGB),
                "libspng": pyspng.load}
    result = {}
    with tempfile.TemporaryDirectory() as tmp:
        for level in (1, 0):
            data = crops(Path(a.coco), level, Path(tmp))
            for d in data[:10]:
                assert np.array_equal(decoders["opencv"](d), decoders["libspng"](d))
            best = {name: float("inf") for name in decoders}
            for _ in range(5):
                for name, decode in decoders.items():
                    t0 = time.perf_counter()
                    for d in data:
                        decode(d)
                    best[name] = min(best[name], (time.perf_counter() - t0) / len(data))
            result[f"level{level}"] = {
                "crops": len(data), "mean_bytes": int(sum(map(len, data)) / len(data)),
                **{f"{n}_us": round(v * 1e6, 1) for n, v in best.items()},
                "speedup": round(best["opencv"] / best["libspng"], 2)}
            if not a.json:
                print(f"level {level}: {result[f'level{level}']}")
    if a.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
