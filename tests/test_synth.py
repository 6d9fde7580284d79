import numpy as np
import pytest
from PIL import Image

from shards.coco import load_coco


def test_synth_is_valid_coco(synth_root):
    for split in ("train2017", "val2017"):
        coco, _ = load_coco(synth_root / "annotations" / f"person_keypoints_{split}.json")
        assert len(coco.imgs) == (40 if split == "train2017" else 12)
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) >= len(coco.imgs)  # 1-3 people per image, rarely all out of frame
        assert all(a["num_keypoints"] > 0 and not a.get("iscrowd") for a in anns)
        counts = {0: 0, 1: 0, 2: 0}
        for a in anns:
            kps = np.asarray(a["keypoints"]).reshape(17, 3)
            for v in kps[:, 2]:
                counts[int(v)] += 1
            assert a["num_keypoints"] == int((kps[:, 2] > 0).sum())
            assert (kps[kps[:, 2] == 0, :2] == 0).all()
            img = coco.imgs[a["image_id"]]
            x, y, w, h = a["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0
            assert x + w <= img["width"] + 1e-6 and y + h <= img["height"] + 1e-6
            lab = kps[kps[:, 2] > 0]
            assert (lab[:, 0] < img["width"]).all() and (lab[:, 1] < img["height"]).all()
        assert counts[2] > counts[1] > 0  # mostly visible, some occluded
        first = coco.imgs[next(iter(coco.imgs))]
        with Image.open(synth_root / split / first["file_name"]) as im:
            assert im.size == (first["width"], first["height"]) and im.mode == "RGB"


def test_synth_is_deterministic(tmp_path):
    from shg.synth import SynthOptions, synthesize

    for name in ("a", "b"):
        synthesize(SynthOptions(out=str(tmp_path / name), train=3, val=1, seed=9))
    a = (tmp_path / "a/annotations/person_keypoints_train2017.json").read_text()
    b = (tmp_path / "b/annotations/person_keypoints_train2017.json").read_text()
    assert a == b


def test_the_synth_command_writes_and_counts_what_it_says(tmp_path, capsys):
    import json

    from shg.cli import main as shg

    assert shg(["synth", "--out", str(tmp_path / "s"), "--train", "3", "--val", "2",
                "--seed", "4", "--max-people", "1"]) == 0
    printed = capsys.readouterr().out
    for split, images in (("train2017", 3), ("val2017", 2)):
        data = json.loads((tmp_path / "s" / "annotations" /
                           f"person_keypoints_{split}.json").read_text())
        assert len(data["images"]) == images == len(list((tmp_path / "s" / split).iterdir()))
        counts = {}
        for a in data["annotations"]:
            counts[a["image_id"]] = counts.get(a["image_id"], 0) + 1
        assert max(counts.values()) == 1  # --max-people 1
        assert f"{split}: {images} images, {len(data['annotations'])} persons" in printed
    assert shg(["synth", "--out", str(tmp_path / "x"), "--train", "-1"]) == 2
    assert "--train and --val must be >= 0" in capsys.readouterr().err


@pytest.mark.slow
def test_the_demo_runs_every_stage_and_times_them(tmp_path):
    """`shg demo`, tiny (8 images, 4 steps): every stage of `make demo` runs and leaves its
    outputs, and the time of each stage is printed at the end."""
    from helpers import run_cli

    out = tmp_path / "demo"
    proc = run_cli("demo", "--out", str(out), "--train", "8", "--val", "4", "--ae-steps", "2",
                   "train.max_steps=4", "eval.every_steps=2", "checkpoint.every_steps=2",
                   "model.features=16", "data.num_workers=0")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    for path in ("shards/manifest.json", "train/best/model.safetensors", "model.safetensors",
                 "eval/report.md", "eval/coco_eval.json", "predict.png",
                 "analysis/latent/latent.json", "analysis/skeletons/skeletons.json",
                 "analysis/skips/skips.json", "train-ae/best/model.safetensors",
                 "ae_compare/compare.md"):
        assert (out / path).is_file(), path
    import json

    crop = json.loads((out / "shards" / "manifest.json").read_text())["splits"]["train2017"][
        "crop"]["size"]
    assert crop == 128
    table = proc.stdout[proc.stdout.index("time per stage:"):]
    names = [line.strip().split("  ")[0] for line in table.splitlines()[1:] if line.strip()]
    assert names == ["synthetic data", "shards", "training", "export", "evaluation", "predict",
                     "latent analysis", "skeleton clusters", "skip ablation", "AE phase 1",
                     "AE phase 2 + baseline", "total"]
    assert "PCK@0.2 (bbox)" in proc.stdout
