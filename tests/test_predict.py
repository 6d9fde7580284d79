"""`shg predict` on many persons and images: boxes from a file, batched, drawn, one COCO
results JSON; the same crops and numbers as `shg eval --boxes`."""

import json

import pytest

from shg.cli import main as shg


@pytest.fixture(scope="module")
def model(exported_model):
    return exported_model


def test_every_person_of_a_folder_with_boxes(model, coco_sample, tmp_path, capsys):
    mm = coco_sample.parent / "coco-mmpose"
    if not (mm / "test_coco.json").is_file():
        pytest.skip("coco-mmpose sample not found")
    folder = tmp_path / "images"
    folder.mkdir()
    for image in mm.glob("*.jpg"):
        (folder / image.name).symlink_to(image)
    (folder / "000000000999.jpg").write_bytes(b"not an image at all")
    gt = json.loads((mm / "test_coco.json").read_text())
    boxes = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
             for a in gt["annotations"] if not a.get("iscrowd")]
    boxes.append({"image_id": 999, "category_id": 1, "bbox": [1, 1, 10, 10], "score": 0.9})
    (tmp_path / "dets.json").write_text(json.dumps(boxes))
    out = tmp_path / "out"
    capsys.readouterr()
    assert shg(["predict", "--model", str(model), str(folder), "--boxes",
                str(tmp_path / "dets.json"), "--out", str(out), "--oks-nms", "none",
                "--batch-size", "5"]) == 0
    captured = capsys.readouterr()
    people = len(boxes) - 1
    assert f"{people} persons in 5 images" in captured.out
    # the unreadable file does not stop the run: counted, named, and its line says why
    assert "skipped 1: corrupt_image" in captured.err
    assert "000000000999.jpg: cannot read the image" in captured.err
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [line["file"] for line in lines] == sorted(str(p) for p in folder.glob("*.jpg"))
    (bad,) = [line for line in lines if "skipped" in line]
    assert bad["image_id"] == 999 and bad["skipped"]["reason"] == "corrupt_image"
    assert bad["persons"] == []
    # results.json is the stream's persons, in its order
    assert json.loads((out / "results.json").read_text()) == [
        person for line in lines for person in line["persons"]]
    results = json.loads((out / "results.json").read_text())
    assert len(results) == people
    assert sorted({r["image_id"] for r in results}) == sorted(i["id"] for i in gt["images"])
    assert all(len(r["keypoints"]) == 51 for r in results)
    assert sorted(p.name for p in out.glob("*.png")) == sorted(
        f"{p.stem}.png" for p in mm.glob("*.jpg"))
    # COCO results are loadable by pycocotools against the ground truth
    from pycocotools.coco import COCO

    coco = COCO(str(mm / "test_coco.json"))
    assert len(coco.loadRes(str(out / "results.json")).anns) == people


def test_predict_matches_eval_on_the_same_boxes(model, synth_root, small_shards, tmp_path):
    from test_boxes_eval import _gt_boxes

    boxes = _gt_boxes(small_shards)
    (tmp_path / "dets.json").write_text(json.dumps(boxes))
    # the same batches on both sides (a barely trained model's flat heatmaps have near-ties
    # that another batch size's convolution arithmetic can tip)
    loading = ["--workers", "2", "--batch-size", "16"]
    assert shg(["eval", "--model", str(model), "--coco", str(synth_root), "--split", "val2017",
                "--boxes", str(tmp_path / "dets.json"), "--out", str(tmp_path / "ev"),
                *loading]) == 0
    assert shg(["predict", "--model", str(model), str(synth_root / "val2017"), "--boxes",
                str(tmp_path / "dets.json"), "--out", str(tmp_path / "pr"), *loading]) == 0
    ev = json.loads((tmp_path / "ev" / "coco_results.json").read_text())
    pr = json.loads((tmp_path / "pr" / "results.json").read_text())
    key = lambda r: (r["image_id"], r["keypoints"], r["score"])  # noqa: E731
    assert len(pr) == len(ev) and sorted(map(key, pr)) == sorted(map(key, ev))


def test_one_image_whole_or_one_box(model, synth_root, tmp_path, capsys):
    image = sorted((synth_root / "val2017").glob("*.jpg"))[0]
    capsys.readouterr()
    assert shg(["predict", "--model", str(model), str(image), "--whole-image", "--out",
                str(tmp_path / "whole.png")]) == 0
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert len(whole) == 1 and (tmp_path / "whole.png").stat().st_size > 0
    with pytest.raises(SystemExit) as both:  # one source of boxes at a time (argparse)
        shg(["predict", "--model", str(model), str(image), "--bbox", "0,0,1,1", "--boxes",
             "x.json"])
    assert both.value.code == 2 and "not allowed with" in capsys.readouterr().err
    assert shg(["predict", "--model", str(model), str(tmp_path / "none.jpg"),
                "--whole-image"]) == 2
    assert "image or folder not found" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert shg(["predict", "--model", str(model), str(empty), "--whole-image"]) == 2
    assert "no images" in capsys.readouterr().err


def test_the_python_predictor_gives_what_the_command_writes(model, synth_root, tmp_path):
    import numpy as np
    from PIL import Image

    from shg.inference import Predictor

    folder = synth_root / "val2017"
    out = tmp_path / "cli"
    assert shg(["predict", "--model", str(model), str(folder), "--whole-image", "--no-draw",
                "--workers", "0", "--out", str(out)]) == 0
    assert not list(out.glob("*.png"))  # --no-draw: the results alone
    lines = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    files = sorted(str(p) for p in folder.glob("*.jpg"))
    assert [line["file"] for line in lines] == files
    # two decoding processes give the frames back in file order, with the same persons
    predictor = Predictor.from_weights(model, workers=2)
    frames = list(predictor.predict_folder(folder, whole_image=True))
    assert [f.source for f in frames] == files
    assert [f.persons for f in frames] == [line["persons"] for line in lines]
    assert all(len(f.persons) == 1 and f.pixels is None for f in frames)
    # an image given as an array is predicted as the same pixels in a file
    image = tmp_path / "one.png"
    pixels = np.asarray(Image.open(files[0]).convert("RGB"))
    Image.fromarray(pixels).save(image)
    from_file = predictor.predict_image(image, bbox="10,10,100,200")
    from_array = predictor.predict_image(pixels, bbox=(10, 10, 100, 200))
    assert from_file.persons[0]["bbox"] == [10.0, 10.0, 100.0, 200.0]
    assert [p["keypoints"] for p in from_array.persons] == \
        [p["keypoints"] for p in from_file.persons]
