"""`shg export --format onnx`: the network as ONNX (dynamic batch, opset 18) with what a decoder
needs beside it, for inference without this project (onnxruntime, TensorRT, OpenVINO).

By default the graph takes float32 crops (N, 3, S, S): RGB, (pixel - mean_rgb) / 255, cut as in
training (square around the person, enlarged, resized to S), and returns the last stack's
heatmaps (N, K, S/4, S/4). `--input uint8` makes it take the crops as they come from an image
library, (N, S, S, 3) uint8 RGB, and do the mean subtraction and scaling inside; `--decode`
adds the argmax + quarter-offset decoding (shards/codec.py's) as two more outputs, keypoints
(N, K, 2) in crop pixels and scores (N, K). The description (input layout, mean RGB, crop size,
joint names, heatmap cell convention, flip pairs, skeleton) is stored in the ONNX file's
metadata under "shg" and in OUT.json. The export uses torch's dynamo-based exporter (the
TorchScript-based one is deprecated).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from shards import atomic
from shards.schema import stored

from ..errors import UserError

OPSET = 18
"""The dynamo exporter's lowest well-supported opset (it converts lower requests up anyway)."""
INPUTS = ("float", "uint8")


class Deployed(torch.nn.Module):
    """What deployment needs of an SHG: the last stack's heatmaps, from float model input or
    uint8 NHWC crops, optionally decoded (argmax + quarter offset, as HeatmapCodec)."""

    def __init__(self, model: torch.nn.Module, mean_rgb, uint8: bool = False,
                 decode: bool = False):
        super().__init__()
        self.model, self.uint8, self.decode = model, uint8, decode
        self.register_buffer("mean", torch.tensor(mean_rgb, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, image: torch.Tensor):
        x = image
        if self.uint8:  # the same float32 arithmetic as shards.sample.model_input
            x = (image.permute(0, 3, 1, 2).float() - self.mean) * (1.0 / 255.0)
        heat = self.model(x)[:, -1].float()
        if not self.decode:
            return heat
        return (heat, *decode_quarter(heat, x.shape[-1]))


def decode_quarter(heat: torch.Tensor, crop_size: int):
    """HeatmapCodec's "quarter" decoding in export-friendly ops (gather instead of advanced
    indexing): (keypoints (N, K, 2) in crop pixels, scores (N, K))."""
    import torch.nn.functional as F

    n, k, h, w = heat.shape
    conf, idx = heat.reshape(n, k, h * w).max(-1)
    x, y = idx % w, torch.div(idx, w, rounding_mode="floor")
    # neighbour differences at every cell; the borders are masked out below, as the codec does
    dxm = F.pad(heat[..., :, 2:] - heat[..., :, :-2], (1, 1))
    dym = F.pad(heat[..., 2:, :] - heat[..., :-2, :], (0, 0, 1, 1))
    dx = torch.gather(dxm.reshape(n, k, h * w), 2, idx.unsqueeze(-1)).squeeze(-1)
    dy = torch.gather(dym.reshape(n, k, h * w), 2, idx.unsqueeze(-1)).squeeze(-1)
    inner_x = ((x > 0) & (x < w - 1)).float()
    inner_y = ((y > 0) & (y < h - 1)).float()
    xf = x.float() + 0.25 * torch.sign(dx) * inner_x
    yf = y.float() + 0.25 * torch.sign(dy) * inner_y
    coords = torch.stack([(xf + 0.5) * (crop_size / w), (yf + 0.5) * (crop_size / h)], -1)
    return coords, conf


def description(meta: dict, input_kind: str = "float", decode: bool = False) -> dict:
    size = int(meta.get("crop_size", 256))
    schema = stored(meta)
    k = schema.num_joints
    image = ({"name": "image", "shape": ["batch", size, size, 3], "dtype": "uint8",
              "layout": "NHWC, RGB, 0..255 (mean subtraction and scaling in the graph)"}
             if input_kind == "uint8" else
             {"name": "image", "shape": ["batch", 3, size, size], "dtype": "float32",
              "layout": "NCHW, RGB, (pixel - mean_rgb) / 255"})
    outputs = [{"name": "heatmaps", "shape": ["batch", k, size // 4, size // 4],
                "cell": "heatmap cell j covers crop pixels [4j, 4j + 4): a peak at cell "
                        "(i, j) is the crop point (4j + 2, 4i + 2)"}]
    if decode:
        outputs += [{"name": "keypoints", "shape": ["batch", k, 2],
                     "meaning": "x, y in crop pixels: argmax + quarter offset"},
                    {"name": "scores", "shape": ["batch", k], "meaning": "heatmap maxima"}]
    return {
        "input": image,
        "output": outputs[0],
        "outputs": outputs,
        "mean_rgb": meta.get("mean_rgb", [0.0, 0.0, 0.0]),
        "crop_size": size,
        "crop_enlarge": meta.get("crop_enlarge", 1.1),
        "joints": list(schema.names),
        "flip_index": list(schema.flip_index),
        "skeleton": [list(p) for p in schema.skeleton],
        "sigma": meta.get("sigma", 1.0),
        "schema": schema.to_dict(),
        "model": meta.get("model"),
    }


def export_onnx(source: str | Path, out: str | Path, step: int | None = None,
                best: str = "best", input_kind: str = "float", decode: bool = False) -> Path:
    """Write `out` (.onnx) and `out` with .json: the network and its description."""
    try:
        import onnx
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency)
    except ImportError:
        raise UserError("ONNX export needs the onnx extra: pip install 'shg[onnx]'") from None
    if input_kind not in INPUTS:
        raise UserError(f"--input must be one of {', '.join(INPUTS)}, not {input_kind!r}")
    from ..weights import load_model

    model, meta, _ = load_model(source, step, best=best)
    desc = description(meta, input_kind, decode)
    size = desc["crop_size"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = (torch.zeros(2, size, size, 3, dtype=torch.uint8) if input_kind == "uint8"
               else torch.zeros(2, 3, size, size))
    module = Deployed(model.float().eval(), desc["mean_rgb"], input_kind == "uint8", decode)
    names = [o["name"] for o in desc["outputs"]]
    with atomic.atomic_path(out) as tmp:
        _export(module, example, tmp, names)
        graph = onnx.load(str(tmp))
        entry = graph.metadata_props.add()
        entry.key, entry.value = "shg", json.dumps(desc)
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))
    atomic.write_text(out.with_suffix(".json"), json.dumps(desc, indent=1))
    return out


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path, outputs: list) -> None:
    import logging
    import warnings

    # the exporter reports its passes through logging and warnings: noise for our users
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            module, (example,), dynamo=True, input_names=["image"], output_names=outputs,
            opset_version=OPSET, dynamic_shapes={"image": {0: torch.export.Dim("batch")}},
            optimize=True, verbose=False)
        program.save(str(path))
