"""Evaluation on detected boxes: crops/s of `shg eval --boxes`, side by side with the
ground-truth-box evaluation from shards, on one CPU process.

    .venv/bin/python bench/eval_boxes.py [--images 120] [--stacks 1] [--features 64] [--json]

Rows (synthetic COCO-format images, the ground-truth boxes as the detections file):
- crop cutting alone: `BoxCrops` (JPEG decode, thesis crop, resize, batching) in one process;
- the whole evaluation without a network (`--oracle`: crops, target heatmaps, decoding,
  rescoring, OKS-NMS, COCOeval), from the boxes file and from the shards (the latter also
  writes the PCK report and its plots, which the boxes evaluation has none of);
- the whole evaluation with an untrained SHG of --stacks/--features (flip test on): what a
  user waits for on a CPU.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=120)
    parser.add_argument("--stacks", type=int, default=1)
    parser.add_argument("--features", type=int, default=64)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import torch

    from shards.build import BuildOptions, build
    from shards.coco import load_coco
    from shards.crop import CropParams
    from shards.detections import BoxCrops, ImageInfo, load_detections
    from shards.manifest import read_manifest
    from shards.reader import read_shard
    from shg.evaluation.runner import EvalOptions, run_eval
    from shg.models import StackedHourglass
    from shg.synth import SynthOptions, synthesize
    from shg.weights import save_weights

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(SynthOptions(out=str(tmp / "coco"), train=0, val=args.images, seed=2))
        shards = tmp / "shards"
        build(BuildOptions(coco_root=str(tmp / "coco"), split="val2017", out=str(shards),
                           progress=False), log=lambda *a: None)
        metas = [json.loads(raw["json"])
                 for s in read_manifest(shards)["splits"]["val2017"]["shards"]
                 for raw in read_shard(shards / s["file"], None)]
        boxes = [{"image_id": m["image_id"], "category_id": 1, "bbox": m["bbox"], "score": 1.0}
                 for m in metas]
        (tmp / "dets.json").write_text(json.dumps(boxes))
        n = len(boxes)
        ann = tmp / "coco" / "annotations" / "person_keypoints_val2017.json"

        coco, _ = load_coco(ann)
        images = {i: ImageInfo(im["file_name"], im["width"], im["height"])
                  for i, im in coco.imgs.items()}
        dets = load_detections(tmp / "dets.json", {i: (v.width, v.height)
                                                   for i, v in images.items()})
        crops = BoxCrops(dets, images, tmp / "coco" / "val2017", CropParams(), 32, (0, 0, 0), 17)
        t = time.perf_counter()
        cut = sum(len(b["key"]) for b in crops)
        crop_rate = cut / (time.perf_counter() - t)

        def timed(**kw) -> float:
            t = time.perf_counter()
            run_eval(EvalOptions(split="val2017", out=str(tmp / "ev"), num_workers=0, **kw))
            return n / (time.perf_counter() - t)

        boxes_oracle = timed(oracle=True, shards=None, boxes=str(tmp / "dets.json"),
                             coco_root=str(tmp / "coco"))
        shards_oracle = timed(oracle=True, shards=str(shards), coco_ann=str(ann))
        model = StackedHourglass(args.stacks, args.features, 17)
        save_weights(tmp / "m.safetensors", model.state_dict(),
                     {"model": model.config(), "mean_rgb": [0, 0, 0], "crop_size": 256})
        boxes_model = timed(model_file=str(tmp / "m.safetensors"), shards=None, boxes=str(tmp / "dets.json"),
                            coco_root=str(tmp / "coco"))
        shards_model = timed(model_file=str(tmp / "m.safetensors"), shards=str(shards),
                             coco_ann=str(ann))
    result = {"crops": n, "images": args.images,
              "box_crops_per_s": round(crop_rate, 1),
              "eval_boxes_oracle_crops_per_s": round(boxes_oracle, 1),
              "eval_shards_oracle_crops_per_s": round(shards_oracle, 1),
              f"eval_boxes_shg{args.stacks}x{args.features}_crops_per_s": round(boxes_model, 2),
              f"eval_shards_shg{args.stacks}x{args.features}_crops_per_s": round(shards_model, 2),
              "ratio_boxes_vs_shards_with_network": round(boxes_model / shards_model, 2)}
    if args.json:
        print(json.dumps(result))
        return
    print(f"{n} person crops from {args.images} synthetic images, one process, 1 thread")
    for key, value in result.items():
        if key.endswith("_per_s") or key.startswith("ratio"):
            print(f"{key:<44}{value:>10}")


if __name__ == "__main__":
    main()
