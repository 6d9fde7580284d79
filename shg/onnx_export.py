"""`shg export --format onnx`: the network as ONNX (dynamic batch, opset 17) with what a decoder
needs beside it, for inference without this project (onnxruntime, TensorRT, OpenVINO).

The graph takes float32 crops (N, 3, S, S): RGB, (pixel - mean_rgb) / 255, cut as in training
(square around the person, enlarged, resized to S), and returns the last stack's heatmaps
(N, K, S/4, S/4). The description (mean RGB, crop size, joint names, heatmap cell convention,
flip pairs, skeleton) is stored in the ONNX file's metadata under "shg" and in OUT.json.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from shards import atomic
from shards.schema import stored

from .errors import UserError

OPSET = 17


class LastStack(torch.nn.Module):
    """What deployment needs of an SHG: the last stack's heatmaps."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.model(image)[:, -1]


def description(meta: dict) -> dict:
    size = int(meta.get("crop_size", 256))
    schema = stored(meta)
    return {
        "input": {"name": "image", "shape": ["batch", 3, size, size], "dtype": "float32",
                  "layout": "NCHW, RGB, (pixel - mean_rgb) / 255"},
        "output": {"name": "heatmaps", "shape": ["batch", schema.num_joints, size // 4,
                                                 size // 4],
                   "cell": "heatmap cell j covers crop pixels [4j, 4j + 4): a peak at cell "
                           "(i, j) is the crop point (4j + 2, 4i + 2)"},
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
                best: str = "best") -> Path:
    """Write `out` (.onnx) and `out` with .json: the network and its description."""
    try:
        import onnx
    except ImportError:
        raise UserError("ONNX export needs the onnx extra: pip install 'shg[onnx]'") from None
    from .weights import load_model

    model, meta, _ = load_model(source, step, best=best)
    desc = description(meta)
    size = desc["crop_size"]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    example = torch.zeros(2, 3, size, size)
    with atomic.atomic_path(out) as tmp:
        _export(LastStack(model.float().eval()), example, tmp)
        graph = onnx.load(str(tmp))
        entry = graph.metadata_props.add()
        entry.key, entry.value = "shg", json.dumps(desc)
        onnx.checker.check_model(graph)
        onnx.save(graph, str(tmp))
    atomic.write_text(out.with_suffix(".json"), json.dumps(desc, indent=1))
    return out


def _export(module: torch.nn.Module, example: torch.Tensor, path: Path) -> None:
    import warnings

    kwargs = dict(input_names=["image"], output_names=["heatmaps"], opset_version=OPSET)
    try:  # the TorchScript exporter: seconds, where the dynamo one takes ~10x longer here;
        # its deprecation notice is ours to act on, not the user's
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            torch.onnx.export(module, (example,), str(path), dynamo=False,
                              dynamic_axes={"image": {0: "batch"}, "heatmaps": {0: "batch"}},
                              **kwargs)
    except (TypeError, NotImplementedError):  # a torch without it
        torch.onnx.export(module, (example,), str(path), dynamo=True,
                          dynamic_shapes={"image": {0: torch.export.Dim("batch")}}, **kwargs)
