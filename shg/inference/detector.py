"""Person boxes for `shg predict` from torchvision's COCO detectors.

    shg predict --model M photo.jpg                       # the default detector, score >= 0.3
    shg predict --model M FOLDER --detector ssdlite320_mobilenet_v3_large   # the fast one on CPUs
    shg detector fetch fasterrcnn_resnet50_fpn_v2         # on a login node with internet

Weights come from torchvision's own cache (downloaded there on first use where the machine has
internet) or from `--detector-weights FILE`, a state dict of the same architecture (compute nodes
usually have no internet). The score threshold defaults to 0.3, the `--bbox-thr` of mmpose's
top-down demos (demo/topdown_demo_with_mmdet.py). Only the person class is kept.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserError

log = logging.getLogger(__name__)

DETECTORS = {
    # name: what it is for (COCO val2017 box mAP from torchvision's weights tables)
    "fasterrcnn_resnet50_fpn_v2": "accurate (box mAP 46.7), the default",
    "fasterrcnn_resnet50_fpn": "box mAP 37.0",
    "fasterrcnn_mobilenet_v3_large_fpn": "faster, box mAP 32.8",
    "retinanet_resnet50_fpn_v2": "box mAP 41.5",
    "fcos_resnet50_fpn": "box mAP 39.2",
    "ssdlite320_mobilenet_v3_large": "for CPUs (box mAP 21.3)",
}
DEFAULT_DETECTOR = "fasterrcnn_resnet50_fpn_v2"
DEFAULT_SCORE = 0.3
COCO_PERSON_LABEL = 1
"""torchvision's COCO detectors number the 91 COCO categories with 0 = background."""


@dataclass(frozen=True)
class DetectorOptions:
    name: str = DEFAULT_DETECTOR
    weights: str | None = None
    """A state dict file of the same architecture; None: torchvision's cache (or download)."""
    score: float = DEFAULT_SCORE
    max_persons: int = 100
    """The most confident boxes kept per image."""
    batch_size: int = 4

    def __post_init__(self):
        if self.name not in DETECTORS:
            raise UserError(f"--detector {self.name!r} is not one of: {', '.join(DETECTORS)}")
        if not 0.0 <= self.score <= 1.0:
            raise UserError(f"--detector-score must be in [0, 1], got {self.score}")
        if self.max_persons < 1 or self.batch_size < 1:
            raise UserError("--max-persons and the detector batch size must be >= 1")


def cached_weights_file(name: str) -> Path:
    """Where torchvision keeps `name`'s COCO weights (torch.hub's checkpoints folder)."""
    import torch
    from torchvision.models import get_model_weights

    url = get_model_weights(name).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def fetch(name: str, out: str | Path | None = None) -> Path:
    """Download `name`'s weights into torchvision's cache (and copy the state dict to `out`)."""
    from torchvision.models import get_model_weights

    if name not in DETECTORS:
        raise UserError(f"{name!r} is not one of: {', '.join(DETECTORS)}")
    state = get_model_weights(name).DEFAULT.get_state_dict(progress=True, check_hash=True)
    if out is None:
        return cached_weights_file(name)
    import torch

    from shards import atomic

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(out) as tmp:
        torch.save(state, tmp)
    return out


def _state_dict(opts: DetectorOptions) -> dict:
    import torch

    if opts.weights:
        path = Path(opts.weights)
        if not path.is_file():
            raise UserError(f"--detector-weights {path}: file not found")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip and torch errors alike
            raise UserError(f"--detector-weights {path}: not a torch state dict ({exc})") from None
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = state["model"]  # torchvision's reference training scripts save this
        return state
    cached = cached_weights_file(opts.name)
    if cached.is_file():
        return torch.load(cached, map_location="cpu", weights_only=True)
    try:
        log.info("downloading %s's weights into %s", opts.name, cached.parent)
        from torchvision.models import get_model_weights

        return get_model_weights(opts.name).DEFAULT.get_state_dict(progress=False,
                                                                     check_hash=True)
    except Exception as exc:  # no internet (URLError, socket errors), a broken download
        raise UserError(
            f"detector weights {cached} are missing and could not be downloaded ({exc}); on a "
            f"machine with internet run `shg detector fetch {opts.name}` and copy that file "
            f"here, or pass --detector-weights FILE") from None


class PersonDetector:
    """Person boxes of RGB images, batched, on `device`."""

    def __init__(self, opts: DetectorOptions, device="cpu"):
        import torch
        from torchvision.models import get_model

        self.opts, self.device = opts, torch.device(device)
        state = _state_dict(opts)  # first: a missing file is said before seconds of building
        model = get_model(opts.name, weights=None, weights_backbone=None, num_classes=91)
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            source = opts.weights or cached_weights_file(opts.name)
            first = str(exc).strip().splitlines()[0]
            raise UserError(f"{source}: not the weights of {opts.name} ({first})") from None
        self.model = model.eval().to(self.device)

    def __call__(self, images: list[np.ndarray]) -> list[list[tuple[tuple, float]]]:
        """For each (H, W, 3) uint8 RGB image: [((x, y, w, h), score)], best first."""
        import torch

        with torch.inference_mode():
            return self._detect(images)

    def _detect(self, images: list[np.ndarray]) -> list[list[tuple[tuple, float]]]:
        import torch

        found = []
        step = self.opts.batch_size
        for start in range(0, len(images), step):
            batch = [torch.from_numpy(im if im.flags.writeable and im.flags.c_contiguous
                                      else np.array(im)).to(self.device)
                     .permute(2, 0, 1).float().div_(255.0) for im in images[start:start + step]]
            for out in self.model(batch):
                keep = (out["labels"] == COCO_PERSON_LABEL) & (out["scores"] >= self.opts.score)
                boxes, scores = out["boxes"][keep].cpu().numpy(), out["scores"][keep].cpu()
                order = np.argsort(-scores.numpy(), kind="stable")[:self.opts.max_persons]
                found.append([((float(b[0]), float(b[1]), float(b[2] - b[0]),
                                float(b[3] - b[1])), float(scores[i]))
                              for i, b in ((i, boxes[i]) for i in order)
                              if b[2] > b[0] and b[3] > b[1]])
        return found


def detection_results(image_ids: list[int], found: list[list[tuple[tuple, float]]]) -> list:
    """COCO detection results (what `shg eval --boxes` and `shg predict --boxes` read)."""
    return [{"image_id": int(i), "category_id": 1, "bbox": [round(v, 2) for v in box],
             "score": round(score, 5)} for i, dets in zip(image_ids, found)
            for box, score in dets]


def check_detector_category(categories) -> None:
    """The detector finds persons: a model whose keypoints are for another category refuses
    it."""
    from shards.detections import PERSON

    if PERSON not in categories:
        raise UserError(f"the detector finds persons (COCO category 1); this model's keypoints "
                        f"are for category {', '.join(map(str, categories))}: pass --boxes, "
                        f"--bbox or --whole-image")
