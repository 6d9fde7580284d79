import numpy as np
from PIL import Image

from shards.coco import eligible_count, load_coco


def test_synth_is_valid_coco(synth_root):
    for split in ("train2017", "val2017"):
        coco, _ = load_coco(synth_root / "annotations" / f"person_keypoints_{split}.json")
        assert len(coco.imgs) == (40 if split == "train2017" else 12)
        anns = coco.loadAnns(coco.getAnnIds())
        assert len(anns) >= len(coco.imgs)  # 1-3 people per image, rarely all out of frame
        assert eligible_count(coco) == len(anns)
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
