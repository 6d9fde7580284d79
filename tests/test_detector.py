"""`shg predict` with torchvision's person detectors: weights from a state dict file (as compute
nodes without internet use them), person class and score threshold, detections that `shg eval
--boxes` reads back, and one-line errors for missing or wrong weights.

The detector weights are a seeded random initialisation of the real architecture (no internet
here): its boxes are arbitrary, so the tests check what the toolkit does with them, compared
with the torchvision model run directly."""

import json

import numpy as np
import pytest
import torch

from shg.cli import main as shg

FAST = "ssdlite320_mobilenet_v3_large"


def _image(synth_root, n=0):
    from PIL import Image

    return np.asarray(Image.open(sorted((synth_root / "val2017").glob("*.jpg"))[n]).convert("RGB"))


def test_person_boxes_are_the_models_person_class_above_the_score(detector_weights,
                                                                   synth_root):
    from torchvision.models import get_model

    from shg.inference.detector import DetectorOptions, PersonDetector

    images = [_image(synth_root, 0), _image(synth_root, 1)]
    reference = get_model(FAST, weights=None, weights_backbone=None, num_classes=91)
    reference.load_state_dict(torch.load(detector_weights, weights_only=True))
    with torch.no_grad():
        raw = reference.eval()([torch.from_numpy(im.copy()).permute(2, 0, 1).float() / 255
                                for im in images])
    persons = [out["scores"][out["labels"] == 1].numpy() for out in raw]
    assert all(len(p) > 4 for p in persons) and any((out["labels"] != 1).any() for out in raw)
    score = float(min(np.median(p) for p in persons))  # a threshold that cuts
    found = PersonDetector(DetectorOptions(FAST, str(detector_weights), score, max_persons=500,
                                           batch_size=1))(images)
    for out, boxes in zip(raw, found):
        keep = (out["labels"] == 1) & (out["scores"] >= score)
        assert 0 < len(boxes) == int(keep.sum())
        x0y0x1y1 = out["boxes"][keep].numpy()
        order = np.argsort(-out["scores"][keep].numpy(), kind="stable")
        got = np.array([b for b, _ in boxes])
        np.testing.assert_allclose(got[:, :2], x0y0x1y1[order, :2], atol=1e-4)
        np.testing.assert_allclose(got[:, 2:], x0y0x1y1[order, 2:] - x0y0x1y1[order, :2],
                                   atol=1e-4)
        scores = [s for _, s in boxes]
        assert scores == sorted(scores, reverse=True) and min(scores) >= score
    capped = PersonDetector(DetectorOptions(FAST, str(detector_weights), score,
                                            max_persons=2))(images)
    assert [len(b) for b in capped] == [2, 2] and capped[0] == found[0][:2]


def test_predict_detects_writes_detections_and_eval_reads_them(exported_model, detector_weights,
                                                               synth_root, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for image in sorted((synth_root / "val2017").glob("*.jpg"))[:3]:
        (folder / image.name).symlink_to(image)
    out = tmp_path / "out"
    capsys.readouterr()
    assert shg(["predict", "--model", str(exported_model), str(folder), "--detector", FAST,
                "--detector-weights", str(detector_weights), "--detector-score", "0",
                "--max-persons", "3", "--oks-nms", "none", "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert f"persons from the detector {FAST}" in captured.err
    dets = json.loads((out / "detections.json").read_text())
    ids = sorted(int(p.stem) for p in folder.glob("*.jpg"))
    assert sorted({d["image_id"] for d in dets}) == ids
    assert all(d["category_id"] == 1 and len(d["bbox"]) == 4 for d in dets)
    assert max(sum(d["image_id"] == i for d in dets) for i in ids) == 3
    results = json.loads((out / "results.json").read_text())
    # every detected box became one pose (no NMS), cut from that box
    assert sorted((r["image_id"], r["bbox"]) for r in results) == sorted(
        (d["image_id"], d["bbox"]) for d in dets)
    assert f"{len(dets)} persons in 3 images" in captured.out
    # the detections file is a boxes file for `shg eval`
    assert shg(["eval", "--model", str(exported_model), "--coco", str(synth_root), "--split",
                "val2017", "--boxes", str(out / "detections.json"), "--out",
                str(tmp_path / "ev")]) == 0
    evaluated = json.loads((tmp_path / "ev" / "coco_results.json").read_text())
    assert {r["image_id"] for r in evaluated} == set(ids)


def test_missing_weights_without_internet_name_the_file_and_the_command(
        exported_model, synth_root, tmp_path, monkeypatch, capsys):
    from urllib.error import URLError

    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):
        raise URLError("no route to host")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    image = sorted((synth_root / "val2017").glob("*.jpg"))[0]
    capsys.readouterr()
    assert shg(["predict", "--model", str(exported_model), str(image)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 2  # the "persons from" note, then the one-line error
    line = err.splitlines()[-1]
    cached = (tmp_path / "torch" / "hub" / "checkpoints" /
              "fasterrcnn_resnet50_fpn_v2_coco-dd69338a.pth")
    assert str(cached) in line and "shg detector fetch fasterrcnn_resnet50_fpn_v2" in line
    assert "--detector-weights" in line


def test_wrong_weights_file_is_one_line(exported_model, detector_weights, synth_root, tmp_path,
                                        capsys):
    image = str(sorted((synth_root / "val2017").glob("*.jpg"))[0])
    capsys.readouterr()
    assert shg(["predict", "--model", str(exported_model), image, "--detector",
                "fasterrcnn_mobilenet_v3_large_fpn", "--detector-weights",
                str(detector_weights)]) == 2
    assert f"{detector_weights}: not the weights of fasterrcnn_mobilenet_v3_large_fpn" in \
        capsys.readouterr().err
    (tmp_path / "junk.pth").write_text("not a state dict")
    assert shg(["predict", "--model", str(exported_model), image, "--detector-weights",
                str(tmp_path / "junk.pth")]) == 2
    assert "junk.pth: not a torch state dict" in capsys.readouterr().err
    assert shg(["predict", "--model", str(exported_model), image, "--detector-weights",
                str(tmp_path / "none.pth")]) == 2
    assert "none.pth: file not found" in capsys.readouterr().err


def test_a_model_of_another_category_refuses_the_person_detector(tmp_path, capsys):
    from shg.errors import UserError
    from shg.inference.detector import check_detector_category

    check_detector_category((1,))
    with pytest.raises(UserError, match="category 26: pass --boxes, --bbox or --whole-image"):
        check_detector_category((26,))
