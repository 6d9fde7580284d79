"""`shg predict` throughput: images/s on a folder and frames/s on a video, with boxes given
(no detector) and with each person detector, side by side in one run.

    .venv/bin/python bench/predict.py [--images 12] [--frames 24] [--stacks 8] [--features 256]
                                      [--crop 256] [--threads 2] [--json]

Synthetic COCO-format images (2-4 people each, 256-512 px) and a 640x480 MJPG video panning
over them. The pose model is an untrained SHG of the given size (the thesis's: 8 stacks, 256
features, 256 px crops), flip test on, as `shg predict` runs it. Without a detector the images
get their annotated boxes (--boxes) and the video one --bbox per frame; with one, its boxes
(score >= 0.3, at most 2 persons per image so that the pose work is the same). The detectors'
weights are seeded random initialisations of torchvision's architectures (this machine has no
internet for the trained ones): their cost is the same, their boxes are not.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

DETECTORS = ("ssdlite320_mobilenet_v3_large", "fasterrcnn_resnet50_fpn_v2")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--frames", type=int, default=24)
    parser.add_argument("--stacks", type=int, default=8)
    parser.add_argument("--features", type=int, default=256)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    args = parser.parse_args()

    import cv2
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.models import get_model

    from shg.inference.command import PredictOptions, run_predict
    from shg.inference.detector import DetectorOptions
    from shg.models import StackedHourglass
    from shg.synth import SynthOptions, synthesize
    from shg.weights import save_weights

    torch.set_num_threads(args.threads)
    result = {"images": args.images, "frames": args.frames,
              "model": f"SHG {args.stacks}x{args.features}, {args.crop} px crops, flip test",
              "threads": args.threads, "device": "cuda" if torch.cuda.is_available() else "cpu"}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        synthesize(SynthOptions(out=str(tmp / "coco"), train=0, val=args.images, seed=3))
        images = tmp / "coco" / "val2017"
        ann = json.loads((tmp / "coco" / "annotations" / "person_keypoints_val2017.json")
                         .read_text())
        (tmp / "dets.json").write_text(json.dumps([
            {"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 1.0}
            for a in ann["annotations"]]))
        persons = len(ann["annotations"])
        model = StackedHourglass(args.stacks, args.features, 17)
        save_weights(tmp / "m.safetensors", model.state_dict(),
                     {"model": model.config(), "mean_rgb": [0, 0, 0], "crop_size": args.crop})
        video = tmp / "clip.avi"
        writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 25, (640, 480))
        scene = np.asarray(Image.open(sorted(images.glob("*.jpg"))[0]).convert("RGB")
                           .resize((800, 480)))
        for i in range(args.frames):
            writer.write(cv2.cvtColor(np.ascontiguousarray(scene[:, 4 * i % 160:][:, :640]),
                                      cv2.COLOR_RGB2BGR))
        writer.release()
        weights = {}
        for name in DETECTORS:
            torch.manual_seed(0)
            weights[name] = tmp / f"{name}.pth"
            state = get_model(name, weights=None, weights_backbone=None,
                              num_classes=91).state_dict()
            _favour_persons(state)
            torch.save(state, weights[name])

        def timed(fn, opts) -> tuple[float, dict]:
            t = time.perf_counter()
            summary = fn(opts)
            return time.perf_counter() - t, summary

        base = dict(model=str(tmp / "m.safetensors"), progress=False, batch_size=16)
        seconds, _ = timed(run_predict, PredictOptions(inputs=str(images),
                                                       boxes=str(tmp / "dets.json"),
                                                       out=str(tmp / "p0"), **base))
        result["images_per_s_boxes_given"] = round(args.images / seconds, 3)
        result["persons_per_s_boxes_given"] = round(persons / seconds, 3)
        seconds, _ = timed(run_predict, PredictOptions(inputs=str(video), bbox="200,40,240,420",
                                                       out=str(tmp / "v0"), **base))
        result["video_frames_per_s_bbox"] = round(args.frames / seconds, 3)
        for name in DETECTORS:
            det = DetectorOptions(name, str(weights[name]), 0.3, max_persons=2)
            seconds, summary = timed(run_predict, PredictOptions(
                inputs=str(images), detector=det, out=str(tmp / f"p-{name}"), **base))
            found = summary["persons"]
            result[f"images_per_s_{name}"] = round(args.images / seconds, 3)
            result[f"persons_found_{name}"] = found
            seconds, _ = timed(run_predict, PredictOptions(
                inputs=str(video), detector=det, out=str(tmp / f"v-{name}"), **base))
            result[f"video_frames_per_s_{name}"] = round(args.frames / seconds, 3)
    if args.json:
        print(json.dumps(result))
        return
    print(f"{args.images} images ({persons} annotated persons), a {args.frames}-frame 640x480 "
          f"video; {result['model']}; {args.threads} threads on {result['device']}")
    for key, value in result.items():
        if "_per_s" in key or key.startswith("persons_found"):
            print(f"{key:<52}{value:>10}")


def _favour_persons(state: dict) -> None:
    """A random initialisation scores all 91 classes ~1/91 alike, so no box passes 0.3: spread
    the class biases and raise the person class's so that persons are found (and posed)."""
    import torch

    g = torch.Generator().manual_seed(0)
    for key, bias in state.items():
        if key.endswith("bias") and bias.numel() % 91 == 0 and any(
                part in key for part in ("classification_head", "cls_score", "cls_logits")):
            bias.copy_(torch.randn(bias.shape, generator=g) * 1.5)
            bias.view(-1, 91)[:, 1] = 10.0 + bias.max()


if __name__ == "__main__":
    main()
