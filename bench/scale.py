"""How every stage grows with the data: synthetic datasets of N persons, each stage timed as a
whole process, side by side in one run.

    .venv/bin/python bench/scale.py [--sizes 1000,4000] [--json] [--keep DIR]

For each N: a COCO-format dataset of N synthetic persons (small images, 64 px crops, a tiny
1-stack model: this measures growth, not model speed), then every stage as its own process:

  build          shg shards build (streamed planning, crops, shard indexes), 1 worker
  reader_pass    one training pass of the shard reader (TrainStream, one slot)
  resume_step0   time to the first batch at step 0 ...
  resume_deep    ... and at 50 passes deep (same process, alternated, best of 3)
  pass_bytes_sK  bytes one pass reads with K = 1, 4, 16 slots on 2 shards (vs the shards')
  eval_gt        shg eval on the ground-truth boxes (shards), with COCO AP
  eval_boxes     shg eval on a detections file of ~16 boxes per image
  latent         shg analyze latent
  skeletons      shg analyze skeletons
  skips          shg analyze skips (an untrained model: no perfect sample, so it reads all)
  predict_folder shg predict FOLDER --whole-image (drawn images, results streamed)
  predict_video  shg predict VIDEO of N frames --whole-image
  status         shg status on a metrics.jsonl of 10 N rows

Each row: {"stage", "n", "seconds", "peak_rss_mb", "bytes_read"} (bytes_read where the stage
reads shards: counted by the reader, shards/index.py). peak_rss_mb is the stage process's own
peak (os.wait4), not its loader workers'. With --json the last line printed is one JSON object:
{"stages": [...], "growth": {stage: exponent}, "checks": {...}}. The growth exponent of a stage
is log(t2 / t1) / log(N2 / N1) between the smallest and largest size, on whole-process seconds
(start-up included) and, where the work exceeds a second, on seconds above the start-up of a
process that only imports the toolkit ("work_exponent").
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PY = sys.executable
SHG = [PY, "-m", "shg.cli", "-q"]
CROP = 64
FLAT_STAGES = ("reader_pass", "eval_gt", "eval_boxes", "predict_folder", "predict_video")


# ----------------------------------------------------------------------------- processes
def run(name: str, n: int, cmd: list[str], log: Path) -> dict:
    """Run one stage as a process: wall seconds and its peak RSS; a failure shows its log."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "TQDM_DISABLE": "1"}
    with open(log, "w") as out:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO)
        _, status, usage = os.wait4(proc.pid, 0)
        seconds = time.perf_counter() - t0
    if status != 0:
        sys.exit(f"stage {name} (N={n}) failed:\n{log.read_text()[-3000:]}\n$ {' '.join(cmd)}")
    return {"stage": name, "n": n, "seconds": round(seconds, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}


def probe(name: str, n: int, args: list[str], log: Path) -> list[dict]:
    """An in-process measurement (this script's --probe mode): its JSON rows, with the
    process's peak RSS."""
    row = run(name, n, [PY, str(Path(__file__).resolve()), "--probe", *args], log)
    lines = [json.loads(line) for line in log.read_text().splitlines()
             if line.startswith("{")]
    return [{"stage": r.pop("stage", name), "n": n, "peak_rss_mb": row["peak_rss_mb"], **r}
            for r in lines]


# ----------------------------------------------------------------------------- data
def make_dataset(work: Path, largest: int) -> Path:
    """Synthetic people, small images, enough for the largest size."""
    from shg.synth import SynthOptions, synthesize

    root = work / "synth"
    synthesize(SynthOptions(out=str(root), train=int(largest / 1.3) + 20, val=0, seed=1,
                            min_size=64, max_size=112, max_people=2))
    return root


def subset(full: Path, n: int, work: Path) -> tuple[Path, int, list[dict]]:
    """A COCO root whose train2017 annotation file holds the first images totalling >= n
    persons (images shared by symlink); returns (root, persons, images)."""
    data = json.loads((full / "annotations" / "person_keypoints_train2017.json").read_text())
    by_image: dict = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    images, anns = [], []
    for image in data["images"]:
        if len(anns) >= n:
            break
        images.append(image)
        anns += by_image.get(image["id"], [])
    if len(anns) < n:
        sys.exit(f"the synthetic set has {len(anns)} persons, fewer than {n}")
    root = work / f"coco{n}"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "person_keypoints_train2017.json").write_text(json.dumps(
        {**data, "images": images, "annotations": anns}))
    (root / "train2017").symlink_to(full / "train2017")
    folder = work / f"folder{n}"
    folder.mkdir()
    for image in images:
        (folder / image["file_name"]).symlink_to(full / "train2017" / image["file_name"])
    return root, len(anns), images


def detections(root: Path, images: list[dict], path: Path, per_image: int = 16) -> None:
    """~16 person boxes per image: the ground truth jittered plus random boxes, random scores
    (a detector's output as mmpose's AP-56 file has it: many boxes, most of them poor)."""
    import numpy as np

    rng = np.random.default_rng(0)
    data = json.loads((root / "annotations" / "person_keypoints_train2017.json").read_text())
    gt: dict = {}
    for ann in data["annotations"]:
        gt.setdefault(ann["image_id"], []).append(ann["bbox"])
    out = []
    for image in images:
        w, h = image["width"], image["height"]
        boxes = [list(b) for b in gt.get(image["id"], [])]
        while len(boxes) < per_image:
            bw, bh = rng.uniform(8, w), rng.uniform(8, h)
            boxes.append([rng.uniform(0, w - bw), rng.uniform(0, h - bh), bw, bh])
        for b in boxes:
            jitter = rng.normal(0, 2, 4)
            box = [max(0.0, b[0] + jitter[0]), max(0.0, b[1] + jitter[1]),
                   max(2.0, b[2] + jitter[2]), max(2.0, b[3] + jitter[3])]
            out.append({"image_id": image["id"], "category_id": 1,
                        "bbox": [round(v, 2) for v in box], "score": round(rng.random(), 4)})
    path.write_text(json.dumps(out))


def video(full: Path, images: list[dict], frames: int, path: Path) -> None:
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), 30.0, (128, 96))
    for i in range(frames):
        frame = cv2.imread(str(full / "train2017" / images[i % len(images)]["file_name"]))
        writer.write(cv2.resize(frame, (128, 96)))
    writer.release()


def metrics_run(model_run: Path, rows: int, path: Path) -> None:
    """A run directory with `rows` training rows (and a validation every 100) in the trainer's
    format (a long run's metrics.jsonl)."""
    path.mkdir()
    shutil.copy(model_run / "config.toml", path / "config.toml")
    now = time.time() - rows
    with open(path / "metrics.jsonl", "w") as f:
        for i in range(1, rows + 1):
            f.write(json.dumps({"step": i * 10, "loss": 1.0 / i, "lr": 1e-3, "img_per_s": 90.0,
                                "step_s": 0.1, "data_s": 0.01, "time": now + i}) + "\n")
            if i % 100 == 0:
                f.write(json.dumps({"step": i * 10, "val_loss": 0.5, "pck_bbox@0.2": i / rows,
                                    "time": now + i}) + "\n")


def tiny_model(shards: Path, work: Path) -> tuple[Path, Path]:
    """A 1-stack, 16-feature SHG trained 2 steps (what the stages load), exported."""
    run_dir = work / "model_run"
    overrides = [f"data.shards={shards}", f"run_dir={run_dir}", "data.val_split=train2017",
                 "model.stacks=1", "model.features=16", "train.max_steps=2",
                 "eval.every_steps=2", "checkpoint.every_steps=2", "data.num_workers=0",
                 "eval.max_samples=16", "mixed_precision=no"]
    run("setup: train", 0, [*SHG, "train", "--config", "configs/tiny.toml", *overrides],
        work / "train.log")
    model = work / "model.safetensors"
    run("setup: export", 0, [*SHG, "export", "--run", str(run_dir), "--out", str(model)],
        work / "export.log")
    return model, run_dir


# ----------------------------------------------------------------------------- probes
def probe_main(argv: list[str]) -> None:
    """In-process measurements printed as JSON lines: the reader's pass, resume and bytes."""
    p = argparse.ArgumentParser()
    p.add_argument("what", choices=("reader", "resume", "slots"))
    p.add_argument("--shards")
    p.add_argument("--batch-size", type=int, default=16)
    a = p.parse_args(argv)
    from shards import index
    from shards.manifest import split_entry
    from shards.reader import TrainStream

    entry = split_entry(a.shards, "train2017")
    n = entry["num_samples"]
    shard_bytes = sum((Path(a.shards) / s["file"]).stat().st_size for s in entry["shards"])

    def stream(**kw):
        return TrainStream(a.shards, "train2017", a.batch_size, seed=0, num_workers=1, **kw)

    if a.what == "reader":
        s = stream(rank=0, world=1, num_batches=n // a.batch_size)
        t0, b0 = time.perf_counter(), index.bytes_read()
        count = sum(len(b["key"]) for b in s)
        print(json.dumps({"seconds": round(time.perf_counter() - t0, 3), "samples": count,
                          "bytes_read": index.bytes_read() - b0, "shard_bytes": shard_bytes}))
    elif a.what == "resume":
        deep = 50 * (n // a.batch_size)
        best = {"resume_step0": math.inf, "resume_deep": math.inf}
        bytes_at = {}
        for _ in range(3):
            for stage, start in (("resume_step0", 0), ("resume_deep", deep)):
                t0, b0 = time.perf_counter(), index.bytes_read()
                next(iter(stream(rank=0, world=1, start_batch=start, num_batches=1)))
                best[stage] = min(best[stage], time.perf_counter() - t0)
                bytes_at[stage] = index.bytes_read() - b0
        for stage, seconds in best.items():
            print(json.dumps({"stage": stage, "seconds": round(seconds, 4),
                              "bytes_read": bytes_at[stage], "start_batch":
                              0 if stage == "resume_step0" else deep}))
    else:
        for slots in (1, 4, 16):
            b0, t0 = index.bytes_read(), time.perf_counter()
            for q in range(slots):
                lo, hi = q * n // slots, (q + 1) * n // slots
                for _ in TrainStream(a.shards, "train2017", 1, seed=0, rank=q, world=slots,
                                     num_batches=hi - lo):
                    pass
            print(json.dumps({"stage": f"pass_bytes_s{slots}",
                              "seconds": round(time.perf_counter() - t0, 3),
                              "bytes_read": index.bytes_read() - b0,
                              "shard_bytes": shard_bytes, "shards": len(entry["shards"])}))


# ----------------------------------------------------------------------------- one size
def measure(n: int, full: Path, work: Path, model: Path | None) -> tuple[list[dict], Path, Path]:
    root, persons, images = subset(full, n, work)
    ann = root / "annotations" / "person_keypoints_train2017.json"
    shards, two = work / f"shards{n}", work / f"two{n}"
    logs = work / f"logs{n}"
    logs.mkdir()
    rows = [run("build", n, [*SHG, "shards", "build", "--coco", str(root), "--split",
                             "train2017", "--out", str(shards), "--crop-size", str(CROP),
                             "--shard-size", "250", "--workers", "1"], logs / "build.log")]
    run("setup: two shards", n, [*SHG, "shards", "build", "--coco", str(root), "--split",
                                 "train2017", "--out", str(two), "--crop-size", str(CROP),
                                 "--shard-size", str(-(-persons // 2)), "--workers", "1"],
        logs / "two.log")
    model_run = None
    if model is None:
        model, model_run = tiny_model(shards, work)
    rows += probe("reader_pass", n, ["reader", "--shards", str(shards)], logs / "reader.log")
    rows += probe("resume", n, ["resume", "--shards", str(shards)], logs / "resume.log")
    rows += probe("slots", n, ["slots", "--shards", str(two)], logs / "slots.log")
    dets = work / f"dets{n}.json"
    detections(root, images, dets)
    clip = work / f"clip{n}.mp4"
    video(full, images, n, clip)
    status_run = work / f"status{n}"
    metrics_run(model_run or work / "model_run", 10 * n, status_run)
    m, o = str(model), work / f"out{n}"
    stages = {
        "eval_gt": ["eval", "--model", m, "--shards", str(shards), "--split", "train2017",
                    "--coco-ann", str(ann), "--out", str(o / "eval_gt"), "--workers", "0"],
        "eval_boxes": ["eval", "--model", m, "--coco", str(root), "--split", "train2017",
                       "--boxes", str(dets), "--out", str(o / "eval_boxes"), "--workers", "0"],
        "latent": ["analyze", "latent", "--model", m, "--shards", str(shards), "--split",
                   "train2017", "--out", str(o / "latent"), "--workers", "0"],
        "skeletons": ["analyze", "skeletons", "--shards", str(shards), "--split", "train2017",
                      "--out", str(o / "skeletons"), "--k-max", "4"],
        "skips": ["analyze", "skips", "--model", m, "--shards", str(shards), "--split",
                  "train2017", "--out", str(o / "skips"), "--workers", "0"],
        "predict_folder": ["predict", "--model", m, str(work / f"folder{n}"), "--whole-image",
                           "--out", str(o / "predict"), "--workers", "0"],
        "predict_video": ["predict", "--model", m, str(clip), "--whole-image", "--out",
                          str(o / "video")],
        "status": ["status", str(status_run)],
    }
    for name, args in stages.items():
        rows.append(run(name, n, [*SHG, *args], logs / f"{name}.log"))
    for r in rows:
        r["persons"] = persons
    return rows, model, model_run or work / "model_run"


# ----------------------------------------------------------------------------- summary
def summarise(rows: list[dict], startup: float) -> dict:
    sizes = sorted({r["n"] for r in rows})
    lo, hi = sizes[0], sizes[-1]
    by = {(r["stage"], r["n"]): r for r in rows}
    growth, work_growth, checks = {}, {}, {}
    for stage in dict.fromkeys(r["stage"] for r in rows):
        if (stage, lo) not in by or (stage, hi) not in by or stage.startswith("pass_bytes") \
                or stage.startswith("resume"):
            continue
        a, b = by[(stage, lo)], by[(stage, hi)]
        ratio = math.log(by[(stage, hi)]["persons"] / by[(stage, lo)]["persons"])
        growth[stage] = round(math.log(b["seconds"] / a["seconds"]) / ratio, 3)
        in_process = stage == "reader_pass"
        wa = a["seconds"] - (0 if in_process else startup)
        wb = b["seconds"] - (0 if in_process else startup)
        if wa > 1.0 and wb > 1.0:
            work_growth[stage] = round(math.log(wb / wa) / ratio, 3)
    checks["time_exponent_le_1.1"] = {s: e <= 1.1 for s, e in growth.items()}
    checks["peak_rss_flat_within_10pct"] = {
        s: round(by[(s, hi)]["peak_rss_mb"] / by[(s, lo)]["peak_rss_mb"], 3)
        for s in FLAT_STAGES if (s, lo) in by and (s, hi) in by}
    checks["resume_deep_over_step0"] = {
        n: round(by[("resume_deep", n)]["seconds"] / by[("resume_step0", n)]["seconds"], 2)
        for n in sizes if ("resume_deep", n) in by}
    checks["pass_bytes_over_shard_bytes"] = {
        f"{s}@{n}": round(by[(s, n)]["bytes_read"] / by[(s, n)]["shard_bytes"], 4)
        for n in sizes for s in ("pass_bytes_s1", "pass_bytes_s4", "pass_bytes_s16")
        if (s, n) in by}
    return {"sizes": sizes, "startup_seconds": round(startup, 3), "growth": growth,
            "work_growth": work_growth, "checks": checks}


def main() -> None:
    if sys.argv[1:2] == ["--probe"]:
        return probe_main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="1000,4000", help="persons per dataset, comma separated")
    p.add_argument("--json", action="store_true", help="print one JSON object last")
    p.add_argument("--keep", help="work in this folder and keep it (default: a temp folder)")
    a = p.parse_args()
    sizes = sorted(int(s) for s in a.sizes.split(","))
    work = Path(a.keep) if a.keep else Path(tempfile.mkdtemp(prefix="shg-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        sys.path.insert(0, str(REPO))
        full = make_dataset(work, sizes[-1])
        startup = min(run("startup", 0, [*SHG, "info", "--stacks", "1"],
                          work / "startup.log")["seconds"] for _ in range(3))
        rows, model = [], None
        for n in sizes:
            got, model, _ = measure(n, full, work, model)
            rows += got
            if not a.json:
                for r in got:
                    print(f"{r['stage']:>15} N={r['persons']:>6} {r['seconds']:>8.2f} s "
                          f"{r['peak_rss_mb']:>7.0f} MB" + (f" {r['bytes_read']:>12,} B"
                                                          if "bytes_read" in r else ""),
                          flush=True)
        summary = summarise(rows, startup)
        if a.json:
            print(json.dumps({"stages": rows, **summary}))
        else:
            print(json.dumps(summary, indent=1))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
