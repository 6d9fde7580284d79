import json
import subprocess
import sys

import numpy as np
import pytest

from shg.cli import main as shg
from shards.schema import COCO_PERSON

PERSON = {"id": 1, "name": "person", "keypoints": list(COCO_PERSON.names),
          "skeleton": [[a + 1, b + 1] for a, b in COCO_PERSON.skeleton]}


def test_oracle_reaches_coco_ap_090_on_real_coco(coco_sample, coco_val_shards, tmp_path):
    shards = coco_val_shards
    # the reader subtracts the train split's mean when present; the val split alone is fine
    ann = coco_sample / "annotations" / "person_keypoints_val2017.json"
    out = tmp_path / "oracle"
    assert shg(["eval", "--oracle", "--shards", str(shards), "--split", "val2017",
                "--coco-ann", str(ann), "--out", str(out)]) == 0
    stats = json.loads((out / "coco_eval.json").read_text())
    assert stats["AP"] >= 0.90, stats
    pck = json.loads((out / "pck.json").read_text())["normalisations"]
    # (a few labelled joints lie outside their crop square: no heatmap can hold them)
    assert pck["bbox"]["mean"]["0.1"] > 0.95 and pck["constant"]["mean"]["0.5"] > 0.95
    from pycocotools.coco import COCO

    gt = COCO(str(ann))
    dt = gt.loadRes(str(out / "coco_results.json"))
    assert len(dt.anns) == 68
    # back-projection: oracle image-pixel predictions land within the heatmap quantisation of
    # the annotation's own keypoints (the ground truth here is the COCO file, not the shards)
    from shards.manifest import read_manifest
    from shards.reader import read_shard

    metas = [json.loads(raw["json"]) for s in read_manifest(shards)["splits"]["val2017"]["shards"]
             for raw in read_shard(shards / s["file"], None)]
    results = json.loads((out / "coco_results.json").read_text())
    assert len(results) == len(metas)
    checked = 0
    for meta, res in zip(metas, results):
        ann = gt.anns[meta["ann_id"]]
        assert res["image_id"] == ann["image_id"]
        cell = meta["affine"][0][0] * 4  # one heatmap cell (4 crop px) in image pixels
        truth = np.asarray(ann["keypoints"], float).reshape(17, 3)
        crop = np.asarray(meta["keypoints"], float).reshape(17, 3)
        inside = (crop[:, 2] > 0) & (crop[:, :2] >= 0).all(1) & (crop[:, :2] < 256).all(1)
        pred = np.asarray(res["keypoints"], float).reshape(17, 3)[:, :2]
        for k in np.nonzero(inside & (truth[:, 2] > 0))[0]:
            # the decoded cell centre is within half a cell diagonal of the point
            assert np.linalg.norm(pred[k] - truth[k, :2]) <= cell * 0.7072 + 1e-3, (meta, k)
            checked += 1
    assert checked > 100


def test_eval_writes_every_output(trained_run, small_shards, synth_root, tmp_path, capsys):
    out = tmp_path / "ev"
    assert shg(["eval", "--run", str(trained_run), "--shards", str(small_shards),
                "--split", "val2017", "--coco-ann",
                str(synth_root / "annotations" / "person_keypoints_val2017.json"),
                "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "constant" in printed and "COCO keypoints" in printed
    for name in ("pck.json", "coco_results.json", "coco_eval.json", "report.md",
                 "pck_per_joint.png", "pck_curve.png", "worst_cases.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    pck = json.loads((out / "pck.json").read_text())
    assert set(pck["normalisations"]) == {"constant", "bbox", "torso"}
    for name, norm in pck["normalisations"].items():
        assert set(norm["mean"]) == {"0.05", "0.1", "0.2", "0.5"}
        # the curve passes through the table's values, and the AUC is the curve's area
        thr, curve = np.asarray(norm["curve"]["thresholds"]), norm["curve"]["pck"]
        for t, value in norm["mean"].items():
            assert curve[int(np.argmin(np.abs(thr - float(t))))] == pytest.approx(value,
                                                                                  abs=1e-5)
        area = sum((a + b) / 2 * (t1 - t0) for a, b, t0, t1 in
                   zip(curve, curve[1:], thr, thr[1:])) / thr[-1]
        assert norm["auc"] == pytest.approx(area, abs=1e-4), name
    summary = json.loads((out / "summary.json").read_text())
    from shards.manifest import read_manifest

    assert summary["samples"] == read_manifest(small_shards)["splits"]["val2017"]["num_samples"]


@pytest.mark.slow
def test_distributed_eval_sees_each_sample_once(trained_run, small_shards, tmp_path):
    single = tmp_path / "one"
    assert shg(["eval", "--run", str(trained_run), "--step", "4", "--shards", str(small_shards),
                "--split", "train2017", "--out", str(single), "--no-flip"]) == 0
    dist = tmp_path / "two"
    via_cli = subprocess.run(
        [sys.executable, "-m", "shg.cli", "eval", "--nproc", "2", "--run", str(trained_run),
         "--step", "4", "--shards", str(small_shards), "--split", "train2017",
         "--out", str(tmp_path / "cli"), "--no-flip"], capture_output=True, text=True)
    assert via_cli.returncode == 0, via_cli.stderr[-3000:]
    samples = json.loads((single / "summary.json").read_text())["samples"]
    assert json.loads((tmp_path / "cli" / "summary.json").read_text())["samples"] == samples
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "shg.evaluate", "--", "--run", str(trained_run), "--step", "4", "--shards",
         str(small_shards), "--split", "train2017", "--out", str(dist), "--no-flip"],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a = json.loads((single / "coco_results.json").read_text())
    b = json.loads((dist / "coco_results.json").read_text())
    assert len(a) == len(b)
    assert [r["image_id"] for r in a] == [r["image_id"] for r in b]
    assert np.allclose([r["keypoints"] for r in a], [r["keypoints"] for r in b], atol=1e-2)


def test_eval_takes_the_best_by_loss_model_too(trained_run, small_shards, tmp_path, capsys):
    """Both selection rules of the thesis, one command each."""
    out = {}
    for flag in ("--best", "--best-by-loss"):
        out[flag] = tmp_path / flag.strip("-")
        assert shg(["eval", "--run", str(trained_run), flag, "--shards", str(small_shards),
                    "--max-samples", "8", "--no-flip", "--out", str(out[flag])]) == 0
    models = {f: json.loads((o / "summary.json").read_text())["model"] for f, o in out.items()}
    assert models["--best"].startswith(str(trained_run / "best"))
    assert models["--best-by-loss"].startswith(str(trained_run / "best_by_loss"))


def test_missing_model_and_empty_split_are_clear(trained_run, small_shards, tmp_path, capsys):
    assert shg(["eval", "--run", str(trained_run), "--step", "3", "--shards",
                str(small_shards), "--out", str(tmp_path / "x")]) == 2
    assert "no complete checkpoint of step 3" in capsys.readouterr().err
    assert shg(["eval", "--run", str(tmp_path / "nope"), "--shards", str(small_shards),
                "--out", str(tmp_path / "x")]) == 2
    assert "no best/ model yet" in capsys.readouterr().err
    assert shg(["eval", "--oracle", "--shards", str(small_shards), "--split", "test2017",
                "--out", str(tmp_path / "x")]) == 2
    assert "no split 'test2017'" in capsys.readouterr().err
    # an empty split: its only person is a crowd annotation, so nothing became a sample
    root = tmp_path / "coco"
    (root / "annotations").mkdir(parents=True)
    (root / "val2017").mkdir()
    from PIL import Image

    Image.new("RGB", (64, 48)).save(root / "val2017" / "a.jpg")
    person = {"id": 1, "image_id": 1, "category_id": 1, "iscrowd": 1, "bbox": [1, 1, 20, 30],
              "area": 600.0, "num_keypoints": 1, "keypoints": [5, 5, 2] + [0] * 48}
    (root / "annotations" / "person_keypoints_val2017.json").write_text(json.dumps(
        {"images": [{"id": 1, "file_name": "a.jpg", "width": 64, "height": 48}],
         "annotations": [person], "categories": [PERSON]}))
    empty = tmp_path / "empty"
    assert shg(["shards", "build", "--coco", str(root), "--split", "val2017", "--out",
                str(empty), "--quiet"]) == 0
    capsys.readouterr()
    assert shg(["eval", "--oracle", "--shards", str(empty), "--split", "val2017",
                "--out", str(tmp_path / "x")]) == 2
    assert "split 'val2017' has no samples" in capsys.readouterr().err


def test_predict_draws_and_prints(trained_run, synth_root, tmp_path, capsys):
    assert shg(["export", "--run", str(trained_run), "--out", str(tmp_path / "m.safetensors")]) == 0
    capsys.readouterr()
    image = sorted((synth_root / "val2017").glob("*.jpg"))[0]
    assert shg(["predict", "--model", str(tmp_path / "m.safetensors"), str(image),
                "--bbox", "10,10,100,200", "--out", str(tmp_path / "p.png")]) == 0
    printed = capsys.readouterr().out
    result = json.loads(printed[:printed.index("\nresults: ")])
    (person,) = result["persons"]
    assert len(person["keypoints"]) == 17 and (tmp_path / "p.png").stat().st_size > 0
    assert len(json.loads((tmp_path / "p.json").read_text())) == 1
    assert shg(["predict", "--model", str(tmp_path / "m.safetensors"), str(image),
                "--bbox", "1,2,3"]) == 2


def test_validation_and_shg_eval_give_the_same_pck(small_shards, tmp_path):
    """One evaluation core: the PCK logged by validation at step N equals `shg eval --step N
    --no-flip` on the same split (fp32, contiguous memory: the same arithmetic)."""
    from helpers import metrics, train_here

    run = tmp_path / "same"
    assert train_here(small_shards, run, "train.max_steps=6", "eval.every_steps=6",
                      "checkpoint.every_steps=6", "eval.max_samples=0", "mixed_precision=no",
                      "model.channels_last=false", "optim.lr=0.003") == 0
    (val,) = [r for r in metrics(run) if "val_loss" in r]
    out = tmp_path / "ev"
    assert shg(["eval", "--run", str(run), "--step", "6", "--shards", str(small_shards),
                "--split", "val2017", "--out", str(out), "--no-flip"]) == 0
    pck = json.loads((out / "pck.json").read_text())["normalisations"]
    compared = 0
    for norm in ("constant", "bbox"):
        for t in ("0.05", "0.1", "0.2", "0.5"):
            assert pck[norm]["mean"][t] == round(val[f"pck_{norm}@{float(t):g}"], 5), (norm, t)
            compared += val[f"pck_{norm}@{float(t):g}"] > 0
    assert compared >= 2  # not a comparison of zeros
    samples = json.loads((out / "summary.json").read_text())["samples"]
    assert val["val_samples"] == samples


def test_constant_pck_is_a_tenth_of_each_crop_side():
    """The thesis's constant normalisation follows the crop size (12.8 px in a 128 crop)."""
    from shg.evaluation.core import pck_metrics

    def row(crop, offset):
        gt = np.zeros((17, 2)) + crop / 2
        return {"pred_crop": gt + [offset, 0.0], "gt_crop": gt, "visible": np.ones(17, bool),
                "pred_image": gt + [offset, 0.0], "affine": [[1, 0, 0], [0, 1, 0]],
                "bbox": [0, 0, crop, crop], "crop_size": crop}

    # 10 px off: inside 0.5 x 25.6 of a 256 crop, outside 0.5 x 12.8 of a 128 crop
    assert pck_metrics([row(256, 10.0)], [0.5])["pck_constant@0.5"] == 1.0
    assert pck_metrics([row(128, 10.0)], [0.5])["pck_constant@0.5"] == 0.0
    assert pck_metrics([row(128, 6.0)], [0.5])["pck_constant@0.5"] == 1.0


def test_decoding_and_protocol_options_reach_the_results(trained_run, small_shards, synth_root,
                                                         tmp_path):
    """`shg eval` end to end with --decode dark, --flip-shift and --keypoint-threshold: each is
    recorded and changes what it should."""
    def run(name, *extra):
        out = tmp_path / name
        assert shg(["eval", "--run", str(trained_run), "--shards", str(small_shards),
                    "--max-samples", "8", "--out", str(out), *extra]) == 0
        return (json.loads((out / "summary.json").read_text()),
                json.loads((out / "coco_results.json").read_text()))

    base_summary, base = run("base")
    assert base_summary["decode"] == "quarter" and not base_summary["protocol"]["flip_shift"]
    dark_summary, dark = run("dark", "--decode", "dark")
    assert dark_summary["decode"] == "dark"
    assert [r["keypoints"] for r in dark] != [r["keypoints"] for r in base]
    shift_summary, shifted = run("shift", "--flip-shift")
    assert shift_summary["protocol"]["flip_shift"] is True
    assert [r["keypoints"] for r in shifted] != [r["keypoints"] for r in base]
    # the instance score is the mean of the keypoint confidences above the threshold (box 1);
    # the second threshold is the median confidence: some above it, some not
    median = float(np.median([c for r in base for c in r["keypoints"][2::3]]))
    for threshold in ("0.2", f"{median:.6f}"):
        summary, results = run(f"thr{threshold}", "--keypoint-threshold", threshold)
        assert summary["protocol"]["keypoint_threshold"] == float(threshold)
        for r in results:
            conf = np.asarray(r["keypoints"][2::3])
            above = conf[conf > float(threshold)]
            assert r["score"] == pytest.approx(above.mean() if above.size else 0.0, abs=2e-3)
    assert any(r["score"] > 0 for r in results)  # not a comparison of zeros
