"""COCO evaluation with a detector's boxes: the protocol's parts on hand-computed cases, bad
boxes files, and the whole protocol end to end on real COCO images."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from shg.cli import main as shg
from shg.evaluation.protocol import oks_nms, rescore


# ----------------------------------------------------------------------------- protocol parts
def test_rescoring_is_box_score_times_mean_confidence_above_threshold():
    assert rescore(0.8, np.array([0.1, 0.3, 0.5, 0.9]), 0.2) == pytest.approx(0.8 * 1.7 / 3)
    assert rescore(0.8, np.array([0.1, 0.2, 0.05]), 0.2) == 0.0  # none above: 0, not NaN
    assert rescore(1.0, np.array([0.25, 0.25]), 0.2) == pytest.approx(0.25)


def test_oks_nms_on_hand_computed_cases():
    # sigma 0.5 for every joint -> (2 sigma)^2 = 1; areas 1 -> OKS = mean exp(-d^2 / 2):
    # every joint moved by d = 1 gives OKS = exp(-0.5) = 0.6065.
    sigmas = np.full(3, 0.5)
    a = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    near, far = a + [1.0, 0.0], a + [10.0, 0.0]
    areas = np.ones(3)
    points = np.stack([a, near, far])
    # duplicate above the threshold suppressed, distinct person kept, best score first
    assert oks_nms(points, np.array([0.9, 0.8, 0.7]), areas, 0.6, sigmas) == [0, 2]
    # the threshold is respected on both sides of 0.6065
    assert oks_nms(points, np.array([0.9, 0.8, 0.7]), areas, 0.61, sigmas) == [0, 1, 2]
    # the lower-scored duplicate is the one that goes, whatever the input order
    assert oks_nms(points, np.array([0.5, 0.8, 0.7]), areas, 0.6, sigmas) == [1, 2]
    # an exact duplicate has OKS 1: kept only with threshold 1
    same = np.stack([a, a])
    assert oks_nms(same, np.array([0.4, 0.6]), np.ones(2), 0.9, sigmas) == [1]
    assert oks_nms(same, np.array([0.4, 0.6]), np.ones(2), 1.0, sigmas) == [1, 0]
    assert oks_nms(np.zeros((0, 3, 2)), np.zeros(0), np.zeros(0), 0.9, sigmas) == []


def test_flip_shift_moves_the_flipped_heatmaps_one_cell():
    from shg.evaluation.core import forward_heatmaps

    class Peak(torch.nn.Module):  # the same peak at column 5 whatever the input
        def forward(self, x):
            out = torch.zeros(x.shape[0], 1, 17, 8, 16)
            out[..., 3, 5] = 1.0
            return out

    images = torch.zeros(1, 3, 32, 64)
    from shards.schema import COCO_PERSON

    flip = COCO_PERSON.flip_index
    _, plain = forward_heatmaps(Peak(), images, flip)
    _, shifted = forward_heatmaps(Peak(), images, flip, flip_shift=True)
    # flipped back: column 15 - 5 = 10; with the shift: 11
    assert plain[0, 0, 3, 5] == 0.5 and plain[0, 0, 3, 10] == 0.5
    assert shifted[0, 0, 3, 5] == 0.5 and shifted[0, 0, 3, 11] == 0.5
    assert shifted[0, 0, 3, 10] == 0.0


# ----------------------------------------------------------------------------- bad files
def _counts(tmp_path, entries):
    from shards.detections import load_detections

    path = tmp_path / "dets.json"
    path.write_text(json.dumps(entries))
    return load_detections(path, {1: (100, 80), 2: (50, 50)}, score_threshold=0.1)


def test_bad_boxes_are_counted_by_reason(tmp_path):
    ok = {"image_id": 1, "category_id": 1, "bbox": [10, 10, 20, 30], "score": 0.9}
    dets = _counts(tmp_path, [
        ok, {**ok, "image_id": 2},
        {**ok, "category_id": 3},
        {**ok, "score": 0.05},
        {**ok, "image_id": 77},
        {**ok, "bbox": [10, 10, 0, 30]}, {**ok, "bbox": [10, 10, -4, 30]},
        {**ok, "bbox": [10, float("nan"), 4, 30]},
        {**ok, "score": float("nan")},
        {**ok, "bbox": [100, 10, 5, 5]}, {**ok, "bbox": [-20, -20, 20, 20]},
    ])
    assert [d.index for d in dets.boxes] == [0, 1]
    assert dict(dets.dropped) == {"other_category": 1, "below_threshold": 1, "unknown_image": 1,
                                  "bad_box": 3, "bad_score": 1, "outside_image": 2}
    assert "image_id 77" in dets.examples["unknown_image"]
    assert dets.total == 11


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"annotations": []}', "expected a list of detections"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4]}]', "entry 0 lacks score"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3], "score": 1}]', "entry 0: bbox"),
    ('[{"image_id": 1, "category_id": 1, "bbox": [1, 2, 3, 4], "score": "high"}]',
     "entry 0: bbox"),
])
def test_malformed_boxes_file_is_one_clear_line(coco_sample, tmp_path, capsys, content, message):
    path = tmp_path / "dets.json"
    path.write_text(content)
    code = shg(["eval", "--oracle", "--coco", str(coco_sample), "--split", "val2017",
                "--boxes", str(path), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and message in err and str(path) in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_boxes_without_coco_root_or_shards_say_what_to_give(tmp_path, capsys):
    assert shg(["eval", "--oracle", "--boxes", str(tmp_path / "d.json"),
                "--out", str(tmp_path / "o")]) == 2
    assert "--coco ROOT" in capsys.readouterr().err
    assert shg(["eval", "--oracle", "--out", str(tmp_path / "o")]) == 2
    assert "--shards DIR" in capsys.readouterr().err


# ----------------------------------------------------------------------------- end to end
def _gt_boxes(shards: Path, split: str = "val2017") -> list[dict]:
    from shards.manifest import read_manifest
    from shards.reader import read_shard

    metas = [json.loads(raw["json"]) for s in read_manifest(shards)["splits"][split]["shards"]
             for raw in read_shard(shards / s["file"], None)]
    return [{"image_id": m["image_id"], "category_id": 1, "bbox": m["bbox"], "score": 1.0}
            for m in metas]


def _eval(args, out: Path) -> dict:
    assert shg(["eval", *args, "--out", str(out)]) == 0
    return json.loads((out / "summary.json").read_text())


def test_detections_protocol_end_to_end_on_real_coco(coco_sample, coco_val_shards, tmp_path):
    ann = coco_sample / "annotations" / "person_keypoints_val2017.json"
    gt = _eval(["--oracle", "--shards", str(coco_val_shards), "--split", "val2017",
                "--coco-ann", str(ann)], tmp_path / "gt")
    boxes = _gt_boxes(coco_val_shards)
    (tmp_path / "gt.json").write_text(json.dumps(boxes))
    common = ["--oracle", "--coco", str(coco_sample), "--split", "val2017", "--boxes"]
    same = _eval([*common, str(tmp_path / "gt.json")], tmp_path / "same")
    # a file of the ground-truth boxes alone gives the ground-truth-box numbers exactly
    assert same["coco"]["AP"] == gt["coco"]["AP"] and same["coco"]["AR"] == gt["coco"]["AR"]
    assert gt["coco"]["AP"] > 0.9

    rng = np.random.default_rng(0)
    noisy = list(boxes)
    for b in boxes:
        x, y, w, h = b["bbox"]
        noisy.append({**b, "bbox": [x + 0.05 * w, y - 0.03 * h, w, h], "score": 0.6})
        noisy.append({**b, "score": 0.5})  # an exact duplicate: must be suppressed
    image_ids = sorted({b["image_id"] for b in boxes})
    for i in range(5):  # false boxes on background
        noisy.append({"image_id": int(rng.choice(image_ids)), "category_id": 1,
                      "bbox": [2.0, 2.0, 12.0, 16.0], "score": 0.3})
    noisy.append({"image_id": image_ids[0], "category_id": 2, "bbox": [5, 5, 50, 50],
                  "score": 0.9})
    (tmp_path / "noisy.json").write_text(json.dumps(noisy))
    det = _eval([*common, str(tmp_path / "noisy.json")], tmp_path / "noisy")
    assert det["protocol"]["enlarge"] == 1.1  # no model: the thesis's crops
    assert abs(det["coco"]["AP"] - gt["coco"]["AP"]) < 0.02, (det["coco"], gt["coco"])
    assert det["boxes"]["dropped"] == {"other_category": 1}
    assert det["samples"] == 3 * len(boxes) + 5
    assert det["poses"]["suppressed_by_oks_nms"] >= len(boxes)  # at least every exact copy
    saved = json.loads((tmp_path / "noisy" / "coco_eval.json").read_text())
    assert saved["protocol"]["oks_nms"] == 0.9 and saved["boxes"]["boxes_in_file"] == len(noisy)
    report = (tmp_path / "noisy" / "report.md").read_text()
    assert "noisy.json" in report and "other_category" in report and "OKS-NMS | 0.9" in report

    off = _eval([*common, str(tmp_path / "noisy.json"), "--oks-nms", "none"], tmp_path / "off")
    assert off["poses"]["suppressed_by_oks_nms"] == 0
    assert len(json.loads((tmp_path / "off" / "coco_results.json").read_text())) \
        == 3 * len(boxes) + 5
    # duplicates kept: every person is matched once, the copies are false positives
    assert off["coco"]["AP"] <= det["coco"]["AP"]


def test_unreadable_images_are_counted_not_lost(coco_sample, coco_val_shards, tmp_path):
    root = tmp_path / "coco"
    (root / "val2017").mkdir(parents=True)
    shutil.copytree(coco_sample / "annotations", root / "annotations")
    boxes = _gt_boxes(coco_val_shards)
    ids = sorted({b["image_id"] for b in boxes})
    for image in (coco_sample / "val2017").iterdir():
        (root / "val2017" / image.name).symlink_to(image)
    missing, corrupt = f"{ids[0]:012d}.jpg", f"{ids[1]:012d}.jpg"
    (root / "val2017" / missing).unlink()
    (root / "val2017" / corrupt).unlink()
    (root / "val2017" / corrupt).write_bytes(b"\xff\xd8\xff not a jpeg")
    (tmp_path / "gt.json").write_text(json.dumps(boxes))
    s = _eval(["--oracle", "--coco", str(root), "--split", "val2017", "--boxes",
               str(tmp_path / "gt.json"), "--workers", "2"], tmp_path / "out")
    lost = s["boxes"]["images_unreadable"]
    per_image = {i: sum(b["image_id"] == i for b in boxes) for i in ids[:2]}
    assert lost["missing_image"] == {"images": 1, "boxes": per_image[ids[0]],
                                     "example": lost["missing_image"]["example"]}
    assert missing in lost["missing_image"]["example"]
    assert lost["corrupt_image"]["boxes"] == per_image[ids[1]]
    assert s["samples"] == len(boxes) - sum(per_image.values())
    assert "missing_image" in (tmp_path / "out" / "report.md").read_text()


def test_model_on_gt_boxes_file_equals_gt_box_evaluation(trained_run, small_shards, synth_root,
                                                         tmp_path):
    """The crops cut on the fly are the shards' pixels: same heatmaps, same results. (One crop
    a batch on both sides: a barely trained model's flat heatmaps have near-ties that another
    batch's convolution arithmetic could tip.)"""
    ann = synth_root / "annotations" / "person_keypoints_val2017.json"
    gt = _eval(["--run", str(trained_run), "--shards", str(small_shards), "--split", "val2017",
                "--coco-ann", str(ann), "--batch-size", "1"], tmp_path / "gt")
    (tmp_path / "gt.json").write_text(json.dumps(_gt_boxes(small_shards)))
    det = _eval(["--run", str(trained_run), "--coco", str(synth_root), "--split", "val2017",
                 "--boxes", str(tmp_path / "gt.json"), "--batch-size", "1"], tmp_path / "det")
    a = json.loads((tmp_path / "gt" / "coco_results.json").read_text())
    b = json.loads((tmp_path / "det" / "coco_results.json").read_text())
    key = lambda r: (r["image_id"], r["keypoints"])  # noqa: E731
    assert sorted(map(key, a)) == sorted(map(key, b))
    assert sorted(r["score"] for r in a) == sorted(r["score"] for r in b)
    assert det["coco"]["AP"] == gt["coco"]["AP"]


@pytest.mark.slow
def test_boxes_evaluation_on_two_ranks_sees_every_box_once(coco_sample, coco_val_shards, tmp_path):
    boxes = _gt_boxes(coco_val_shards)
    boxes += [{**b, "score": 0.4, "bbox": [v * 1.02 for v in b["bbox"]]} for b in boxes]
    (tmp_path / "d.json").write_text(json.dumps(boxes))
    args = ["--oracle", "--coco", str(coco_sample), "--split", "val2017", "--boxes",
            str(tmp_path / "d.json")]
    one = _eval(args, tmp_path / "one")
    proc = subprocess.run([sys.executable, "-m", "shg.cli", "eval", "--nproc", "2", *args,
                           "--out", str(tmp_path / "two")], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert two["samples"] == one["samples"] == len(boxes)
    assert two["coco"]["AP"] == one["coco"]["AP"]
    assert json.loads((tmp_path / "two" / "coco_results.json").read_text()) == \
        json.loads((tmp_path / "one" / "coco_results.json").read_text())


def test_another_enlargement_than_the_shards_is_an_error(coco_val_shards, tmp_path, capsys):
    assert shg(["eval", "--oracle", "--shards", str(coco_val_shards), "--split", "val2017",
                "--enlarge", "1.25", "--out", str(tmp_path / "o")]) == 2
    assert "cut with enlarge 1.1, not 1.25" in capsys.readouterr().err
    s = _eval(["--oracle", "--shards", str(coco_val_shards), "--split", "val2017", "--enlarge",
               "1.1"], tmp_path / "same")
    assert s["protocol"]["enlarge"] == 1.1


def test_boxes_are_cut_as_the_model_was_trained(trained_run, small_shards, synth_root,
                                                tmp_path):
    from shg.weights import load_weights, locate, save_weights

    tensors, meta = load_weights(locate(trained_run))
    assert meta["crop_enlarge"] == 1.1  # written by training, from the shards
    save_weights(tmp_path / "m.safetensors", tensors, {**meta, "crop_enlarge": 1.25})
    boxes = _gt_boxes(small_shards)[:4]
    (tmp_path / "d.json").write_text(json.dumps(boxes))
    args = ["--model", str(tmp_path / "m.safetensors"), "--coco", str(synth_root), "--split",
            "val2017", "--boxes", str(tmp_path / "d.json")]
    own = _eval(args, tmp_path / "own")
    assert own["protocol"]["enlarge"] == 1.25
    given = _eval([*args, "--enlarge", "1.1"], tmp_path / "given")
    assert given["protocol"]["enlarge"] == 1.1
    a = json.loads((tmp_path / "own" / "coco_results.json").read_text())
    b = json.loads((tmp_path / "given" / "coco_results.json").read_text())
    assert [r["keypoints"] for r in a] != [r["keypoints"] for r in b]  # other crops


def test_boxes_below_the_score_threshold_are_counted_not_evaluated(coco_sample,
                                                                   coco_val_shards, tmp_path):
    boxes = _gt_boxes(coco_val_shards)
    boxes = [{**b, "score": 0.9 if i % 3 else 0.3} for i, b in enumerate(boxes)]
    low = sum(b["score"] < 0.5 for b in boxes)
    (tmp_path / "d.json").write_text(json.dumps(boxes))
    s = _eval(["--oracle", "--coco", str(coco_sample), "--split", "val2017", "--boxes",
               str(tmp_path / "d.json"), "--box-score-threshold", "0.5"], tmp_path / "out")
    assert s["boxes"]["dropped"] == {"below_threshold": low}
    assert s["samples"] == len(boxes) - low and s["protocol"]["box_score_threshold"] == 0.5
    results = json.loads((tmp_path / "out" / "coco_results.json").read_text())
    # kept boxes' scores carry the box score: 0.9 x mean confidence (oracle peaks are 1)
    assert results and all(r["score"] == pytest.approx(0.9, abs=1e-6) for r in results)
