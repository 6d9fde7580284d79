"""ONNX export: onnxruntime gives the torch heatmaps on CPU, for any batch size, and the
README's decoding lines work on the exported file alone."""

import json
import re
from pathlib import Path

import numpy as np
import torch

from shg.cli import main as shg

import onnxruntime as ort  # the onnx extra: make setup installs it, so missing is a failure
import pytest


@pytest.fixture(scope="module")
def float_onnx(trained_run, tmp_path_factory):
    """`shg export --format onnx` of trained_run (the float graph), made once: the dynamo
    exporter takes seconds."""
    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    assert shg(["export", "--run", str(trained_run), "--format", "onnx", "--out", str(out)]) == 0
    return out


def test_onnx_export_matches_torch_and_the_readme_decodes_it(trained_run, small_shards,
                                                           float_onnx):
    import onnx

    from shards.reader import EvalStream
    from shards.sample import model_input
    from shards.codec import HeatmapCodec
    from shg.weights import load_model

    out = float_onnx
    graph = onnx.load(str(out))
    assert graph.opset_import[0].version >= 17
    desc = json.loads({p.key: p.value for p in graph.metadata_props}["shg"])
    assert desc == json.loads(out.with_suffix(".json").read_text())
    model, meta, _ = load_model(trained_run)
    size = meta["crop_size"]
    assert desc["mean_rgb"] == meta["mean_rgb"] and desc["crop_size"] == size == 128
    assert len(desc["joints"]) == 17

    batch = next(iter(EvalStream(small_shards, "val2017", 3, rank=0, world=1,
                                 mean=meta["mean_rgb"])))
    x = model_input(batch, "cpu")
    with torch.no_grad():
        expected = model(x)[:, -1].numpy()
    assert np.abs(expected).max() > 1e-3  # a trained head, not the zero-initialised one
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    for n in (1, 3):  # dynamic batch
        got = session.run(None, {"image": x[:n].numpy()})[0]
        assert got.shape == (n, 17, size // 4, size // 4)
        np.testing.assert_allclose(got, expected[:n], atol=1e-4, rtol=0)

    # the README's lines, run as written on one crop
    readme = (Path(__file__).resolve().parents[1] / "docs" / "prediction.md").read_text()
    code = re.search(r"```python\n(# decode an exported ONNX model.*?)```", readme, re.S).group(1)
    crop = batch["image"][0].numpy().transpose(1, 2, 0)  # (S, S, 3) uint8 RGB
    scope = {"crop": crop, "x0": 10.0, "y0": 20.0, "side": 128.0}
    exec(code.replace('"model.onnx"', repr(str(out))), scope)
    coords, conf = HeatmapCodec(size).decode(torch.from_numpy(expected[:1]), "none")
    np.testing.assert_allclose(scope["points"], coords[0].numpy(), atol=1e-3)
    np.testing.assert_allclose(scope["scores"], conf[0].numpy(), atol=1e-4)
    np.testing.assert_allclose(scope["image_points"],
                               coords[0].numpy() * 128.0 / size + [10.0, 20.0], atol=1e-3)


def test_uint8_graph_with_decoding_equals_the_float_graph_and_the_codec(trained_run,
                                                                        small_shards, tmp_path,
                                                                        float_onnx):
    """--input uint8 --decode: (N, S, S, 3) uint8 crops in, the mean subtraction inside; the
    heatmaps are the float graph's on the mean-subtracted crops, and the in-graph keypoints
    and scores are the codec's quarter decoding of them."""
    import onnx

    from shards.codec import HeatmapCodec
    from shards.reader import EvalStream
    from shards.sample import model_input
    from shg.weights import load_model

    floats, uint8 = float_onnx, tmp_path / "uint8.onnx"
    assert shg(["export", "--run", str(trained_run), "--format", "onnx", "--out", str(uint8),
                "--input", "uint8", "--decode"]) == 0
    desc = json.loads({p.key: p.value for p in onnx.load(str(uint8)).metadata_props}["shg"])
    assert desc["input"]["dtype"] == "uint8" and desc["input"]["shape"][1:] == [128, 128, 3]
    assert [o["name"] for o in desc["outputs"]] == ["heatmaps", "keypoints", "scores"]
    _, meta, _ = load_model(trained_run)
    batch = next(iter(EvalStream(small_shards, "val2017", 4, rank=0, world=1,
                                 mean=meta["mean_rgb"])))
    crops = batch["image"].numpy().transpose(0, 2, 3, 1).copy()  # (N, S, S, 3) uint8
    float_session = ort.InferenceSession(str(floats), providers=["CPUExecutionProvider"])
    session = ort.InferenceSession(str(uint8), providers=["CPUExecutionProvider"])
    expected = float_session.run(None, {"image": model_input(batch, "cpu").numpy()})[0]
    assert np.abs(expected).max() > 1e-3
    for n in (1, 4):
        heat, points, scores = session.run(None, {"image": crops[:n]})
        np.testing.assert_allclose(heat, expected[:n], atol=1e-3, rtol=0)
        coords, conf = HeatmapCodec(128).decode(torch.from_numpy(heat), "quarter")
        assert points.shape == (n, 17, 2) and scores.shape == (n, 17)
        np.testing.assert_allclose(points, coords.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(scores, conf.numpy(), atol=1e-6, rtol=0)
    # the quarter offsets really moved some points off the cell centres
    assert np.any(np.abs((points - 2.0) % 4.0) > 1e-3)
