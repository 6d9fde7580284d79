import json
import shutil

import numpy as np
import pytest
from PIL import Image

from shards.build import BuildOptions, StrictError, build, finalize
from shards.manifest import read_manifest
from shards.coco import DataError, load_coco
from shards.crop import to_image
from shards.reader import EvalStream, read_shard
from shg.cli import main as shg_main
from shards.schema import COCO_PERSON

PERSON = {"id": 1, "name": "person", "keypoints": list(COCO_PERSON.names),
          "skeleton": [[a + 1, b + 1] for a, b in COCO_PERSON.skeleton]}


def _opts(root, split, out, **kw):
    return BuildOptions(coco_root=str(root), split=split, out=str(out), progress=False, **kw)


def _read_all(out, split):
    m = read_manifest(out)["splits"][split]
    samples = []
    for s in m["shards"]:
        samples += list(read_shard(out / s["file"], s["num_samples"]))
    return m, samples


# ../shared/data/README.md: "86 train + 68 val" person annotations with keypoints
PERSONS = {"train2017": 86, "val2017": 68}


@pytest.mark.parametrize("split", ["val2017", "train2017"])
def test_real_coco_counts_and_affine(coco_sample, tmp_path, split):
    summary = build(_opts(coco_sample, split, tmp_path, shard_size=25), log=lambda *a: None)
    coco, _ = load_coco(coco_sample / "annotations" / f"person_keypoints_{split}.json")
    expected = PERSONS[split]
    m, samples = _read_all(tmp_path, split)
    assert m["num_samples"] == expected == len(samples) == summary["crops_written"]
    assert m["skipped"] == {}  # the real sample is clean
    assert len(m["shards"]) == -(-expected // 25)
    assert len({s["__key__"] for s in samples}) == expected
    worst = 0.0
    for s in samples:
        meta = json.loads(s["json"])
        assert "." not in s["__key__"]
        assert Image.open(__import__("io").BytesIO(s["png"])).size == (256, 256)
        ann = coco.anns[meta["ann_id"]]
        orig = np.asarray(ann["keypoints"], dtype=float).reshape(17, 3)
        kps = np.asarray(meta["keypoints"])
        lab = kps[:, 2] > 0
        assert (lab == (orig[:, 2] > 0)).all()
        back = to_image(kps[lab, :2], meta["affine"])
        worst = max(worst, float(np.abs(back - orig[lab, :2]).max(initial=0)))
        assert meta["image_size"] == [coco.imgs[meta["image_id"]]["width"],
                                      coco.imgs[meta["image_id"]]["height"]]
    # stored to 4 decimals of a crop pixel: back in the image within 1e-4 x (side / 256)
    assert worst <= 1e-3
    mean = np.asarray(m["mean_rgb"])
    assert ((mean > 30) & (mean < 220)).all()


def test_synth_shards_and_resume(synth_root, tmp_path):
    build(_opts(synth_root, "train2017", tmp_path, shard_size=16), log=lambda *a: None)
    first = read_manifest(tmp_path)["splits"]["train2017"]
    victim = tmp_path / first["shards"][1]["file"]
    before = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tar")}
    victim.unlink()
    logs = []
    summary = build(_opts(synth_root, "train2017", tmp_path, shard_size=16), log=logs.append)
    assert summary["shards_built"] == 1 and "already complete" in logs[0]
    after = {p.name: p.stat().st_mtime_ns for p in tmp_path.glob("*.tar")}
    assert {k for k in after if after[k] != before.get(k)} == {victim.name}
    again = read_manifest(tmp_path)["splits"]["train2017"]
    assert again["num_samples"] == first["num_samples"] and again["mean_rgb"] == first["mean_rgb"]
    with pytest.raises(DataError, match="other annotations or settings"):
        build(_opts(synth_root, "train2017", tmp_path, shard_size=7), log=lambda *a: None)


def test_task_split_merges_to_the_single_task_result(synth_root, tmp_path, monkeypatch):
    """Task 0 plans; tasks 1 and 2 build from its plan without parsing the annotation file
    (planning would fail for them here), and together they give the single task's shards."""
    import shards.coco

    single, multi = tmp_path / "single", tmp_path / "multi"
    build(_opts(synth_root, "train2017", single, shard_size=10), log=lambda *a: None)
    for i in range(3):
        if i == 1:
            def no_parse(*args, **kwargs):
                raise AssertionError("the annotation file was parsed again")
            monkeypatch.setattr(shards.coco, "stream_coco", no_parse)
        s = build(_opts(synth_root, "train2017", multi, shard_size=10, task_index=i, num_tasks=3),
                  log=lambda *a: None)
        assert "manifest" not in s
        if i == 0:
            with pytest.raises(DataError, match="incomplete"):
                finalize(multi, "train2017")
    merged = finalize(multi, "train2017")
    ref = read_manifest(single)["splits"]["train2017"]
    assert merged["num_samples"] == ref["num_samples"]
    assert merged["shards"] == ref["shards"]
    assert np.allclose(merged["mean_rgb"], ref["mean_rgb"], atol=1e-3)
    keys_single = sorted(s["__key__"] for s in _read_all(single, "train2017")[1])
    keys_multi = sorted(s["__key__"] for s in _read_all(multi, "train2017")[1])
    assert keys_single == keys_multi
    # other inputs (a shard size) are planned anew, not taken from the stale plan
    with pytest.raises(AssertionError, match="parsed again"):
        build(_opts(synth_root, "train2017", multi, shard_size=7, task_index=1,
                    num_tasks=3), log=lambda *a: None)


def test_workers_give_the_same_shards(synth_root, tmp_path):
    build(_opts(synth_root, "val2017", tmp_path / "a", shard_size=8), log=lambda *a: None)
    build(_opts(synth_root, "val2017", tmp_path / "b", shard_size=8, workers=2),
          log=lambda *a: None)
    a, b = _read_all(tmp_path / "a", "val2017")[1], _read_all(tmp_path / "b", "val2017")[1]
    assert [s["__key__"] for s in a] == [s["__key__"] for s in b]
    assert all(x["png"] == y["png"] and x["json"] == y["json"] for x, y in zip(a, b))


# ----------------------------------------------------------------------------- bad input

def _person(image_id, ann_id, bbox, kps=None, **extra):
    if kps is None:
        kps = [0] * 51
        x, y, w, h = bbox
        kps[0:3] = [x + w / 2, y + h / 4, 2]  # one labelled keypoint inside the bbox
    return {"id": ann_id, "image_id": image_id, "category_id": 1, "iscrowd": 0, "bbox": bbox,
            "keypoints": kps, "num_keypoints": sum(1 for v in kps[2::3] if v > 0),
            "area": 100.0, **extra}


@pytest.fixture
def bad_coco(tmp_path):
    root = tmp_path / "bad"
    (root / "annotations").mkdir(parents=True)
    img_dir = root / "val2017"
    img_dir.mkdir()
    rng = np.random.default_rng(0)

    def rgb(w=160, h=120):
        return Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8))

    images, anns = [], []

    def add(image_id, name, persons, w=160, h=120):
        images.append({"id": image_id, "file_name": name, "width": w, "height": h})
        anns.extend(persons)

    rgb().save(img_dir / "ok.jpg")
    add(1, "ok.jpg", [_person(1, 11, [20, 10, 40, 80]),
                      _person(1, 12, [0, 0, 0, 50]),                       # zero width
                      _person(1, 13, [10, 10, -5, 20]),                    # negative
                      _person(1, 14, [130, 90, 60, 60], kps=[140, 100, 2] + [0] * 48),  # partly out
                      _person(1, 15, [500, 500, 10, 10], kps=[0] * 51),    # wholly outside
                      _person(1, 16, [30, 30, 20, 20], kps=[0] * 51),      # no keypoint
                      _person(1, 17, [30, 30, 20, 20], iscrowd=1)])
    kps = [0] * 51
    kps[0:3] = [50, 50, 2]
    kps[3:6] = [-4, 50, 2]     # outside the image: dropped, person kept
    kps[6:9] = [50, 400, 1]    # outside the image: dropped
    add(2, "ok2.jpg", [_person(2, 21, [30, 30, 40, 40], kps=kps)])
    rgb().save(img_dir / "ok2.jpg")
    add(3, "missing.jpg", [_person(3, 31, [20, 10, 40, 80])])
    data = (img_dir / "ok.jpg").read_bytes()
    (img_dir / "truncated.jpg").write_bytes(data[: len(data) // 2])
    add(4, "truncated.jpg", [_person(4, 41, [20, 10, 40, 80])])
    (img_dir / "garbage.jpg").write_bytes(b"not an image at all")
    add(5, "garbage.jpg", [_person(5, 51, [20, 10, 40, 80])])
    rgb().convert("L").save(img_dir / "gray.jpg")
    add(6, "gray.jpg", [_person(6, 61, [20, 10, 40, 80])])
    rgb().convert("CMYK").save(img_dir / "cmyk.jpg")
    add(7, "cmyk.jpg", [_person(7, 71, [20, 10, 40, 80])])
    rgb().convert("RGBA").save(img_dir / "rgba.png")
    add(8, "rgba.png", [_person(8, 81, [20, 10, 40, 80])])
    rgb(100, 100).save(img_dir / "small.jpg")
    add(9, "small.jpg", [_person(9, 91, [20, 10, 40, 80])])  # json says 160x120
    no_keypoints = _person(1, 99, [20, 10, 40, 80])
    del no_keypoints["keypoints"]  # a person otherwise fine: only the field is missing
    anns.append(no_keypoints)
    anns.append(_person(404, 4041, [20, 10, 40, 80]))  # its image is not in "images"
    (root / "annotations" / "person_keypoints_val2017.json").write_text(
        json.dumps({"images": images, "annotations": anns,
                    "categories": [PERSON]}))
    return root


def test_bad_input_is_counted_by_reason(bad_coco, tmp_path, capsys):
    out = tmp_path / "out"
    assert shg_main(["shards", "build", "--coco", str(bad_coco), "--split", "val2017",
                     "--out", str(out), "--quiet"]) == 0
    m = read_manifest(out)["splits"]["val2017"]
    assert m["skipped"] == {"malformed_annotation": 1, "bad_bbox": 2, "bbox_outside_image": 1,
                            "missing_image": 1, "corrupt_image": 2, "size_mismatch": 1,
                            "unknown_image": 1}
    assert m["filtered"] == {"iscrowd": 1, "too_few_keypoints": 1}
    assert m["dropped_keypoints"] == {"outside_image": 2}
    # Readable: ok(11, 14), ok2(21), gray, cmyk, rgba
    m2, samples = _read_all(out, "val2017")
    keys = sorted(s["__key__"] for s in samples)
    assert keys == ["1_11", "1_14", "2_21", "6_61", "7_71", "8_81"]
    for s in samples:
        png = s["png"]
        assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[25] == 2  # IHDR colour type 2: RGB
        if s["__key__"] == "6_61":  # the grayscale image: three equal channels, not empty
            pixels = np.asarray(Image.open(__import__("io").BytesIO(png)))
            assert (pixels[..., 0] == pixels[..., 1]).all() and (pixels[..., 1] ==
                                                                   pixels[..., 2]).all()
            assert pixels.std() > 10
        if s["__key__"] == "2_21":
            assert json.loads(s["json"])["num_keypoints"] == 1
    printed = capsys.readouterr().out
    assert "SKIPPED" in printed and "corrupt_image=2" in printed
    assert not list(out.glob("*.tmp")) and not list(out.glob("*.tar.tmp"))


def test_strict_names_the_first_offender(bad_coco, tmp_path, capsys):
    code = shg_main(["shards", "build", "--coco", str(bad_coco), "--split", "val2017",
                     "--out", str(tmp_path / "o"), "--strict", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "--strict" in err and "person_keypoints_val2017.json" in err
    assert not list((tmp_path / "o").glob("*.tar*"))


def test_strict_on_image_errors_leaves_no_partial_shard(bad_coco, tmp_path):
    ann = bad_coco / "annotations" / "person_keypoints_val2017.json"
    data = json.loads(ann.read_text())
    data["annotations"] = [a for a in data["annotations"]
                           if a["id"] in (11, 14, 21, 31)]  # only the missing image is bad
    ann.write_text(json.dumps(data))
    with pytest.raises(StrictError, match="missing.jpg"):
        build(_opts(bad_coco, "val2017", tmp_path / "o", strict=True), log=lambda *a: None)
    assert not list((tmp_path / "o").glob("*.tar*"))


def test_malformed_json_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "annotations").mkdir()
    (tmp_path / "annotations" / "person_keypoints_val2017.json").write_text('{"images": [')
    code = shg_main(["shards", "build", "--coco", str(tmp_path), "--split", "val2017",
                     "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "person_keypoints_val2017.json" in err and "not valid JSON" in err
    code = shg_main(["shards", "build", "--coco", str(tmp_path / "nope"), "--split", "val2017",
                     "--out", str(tmp_path / "o")])
    assert code == 2 and "not found" in capsys.readouterr().err


def test_truncated_shard_is_named(synth_shards, tmp_path):
    work = tmp_path / "copy"
    shutil.copytree(synth_shards, work)
    m = read_manifest(work)["splits"]["val2017"]
    tar = work / m["shards"][0]["file"]
    tar.write_bytes(tar.read_bytes()[: tar.stat().st_size // 2])
    with pytest.raises(DataError, match=tar.name):
        list(EvalStream(work, "val2017", 4, rank=0, world=1))
    with pytest.warns(UserWarning, match=tar.name):
        got = sum(len(b["key"]) for b in EvalStream(work, "val2017", 4, rank=0, world=1,
                                                     on_error="skip"))
    assert 0 < got < m["num_samples"]


def test_min_keypoints_counts_from_the_raw_file(coco_sample, tmp_path):
    """--min-keypoints 10: exactly the persons the annotation file itself labels with 10 or more
    keypoints inside the image (counted here from the raw JSON, not through the library)."""
    ann = coco_sample / "annotations" / "person_keypoints_val2017.json"
    raw = json.loads(ann.read_text())
    sizes = {im["id"]: (im["width"], im["height"]) for im in raw["images"]}
    expected = 0
    for a in raw["annotations"]:
        kps = np.asarray(a["keypoints"], float).reshape(17, 3)
        w, h = sizes[a["image_id"]]
        inside = (kps[:, 2] > 0) & (kps[:, 0] >= 0) & (kps[:, 0] < w) & (kps[:, 1] >= 0) & \
            (kps[:, 1] < h)
        expected += (not a.get("iscrowd")) and inside.sum() >= 10
    assert 0 < expected < PERSONS["val2017"]
    assert shg_main(["shards", "build", "--coco", str(coco_sample), "--split", "val2017",
                     "--out", str(tmp_path), "--min-keypoints", "10", "--quiet"]) == 0
    m = read_manifest(tmp_path)["splits"]["val2017"]
    assert m["num_samples"] == expected
    persons = sum(1 for a in raw["annotations"] if not a.get("iscrowd"))
    assert m["filtered"]["too_few_keypoints"] == persons - expected


def test_png_level_0_stores_the_same_pixels_larger(synth_root, tmp_path):
    from shards.sample import decode_png

    build(_opts(synth_root, "val2017", tmp_path / "one"), log=lambda *a: None)
    assert shg_main(["shards", "build", "--coco", str(synth_root), "--split", "val2017",
                     "--out", str(tmp_path / "zero"), "--png-level", "0", "--quiet"]) == 0
    one, zero = _read_all(tmp_path / "one", "val2017")[1], _read_all(tmp_path / "zero",
                                                                     "val2017")[1]
    assert [s["__key__"] for s in one] == [s["__key__"] for s in zero]
    for a, b in zip(one, zero):
        assert np.array_equal(decode_png(a["png"]), decode_png(b["png"]))
    assert sum(len(s["png"]) for s in zero) > 1.5 * sum(len(s["png"]) for s in one)


def test_a_changed_annotation_file_is_refused_for_an_existing_build(synth_root, tmp_path,
                                                                   capsys):
    root = tmp_path / "coco"
    shutil.copytree(synth_root, root, symlinks=True)
    ann = root / "annotations" / "person_keypoints_val2017.json"
    assert shg_main(["shards", "build", "--coco", str(root), "--split", "val2017", "--out",
                     str(tmp_path / "out"), "--quiet"]) == 0
    data = json.loads(ann.read_text())
    data["annotations"] = data["annotations"][1:]  # one person fewer
    ann.write_text(json.dumps(data))
    capsys.readouterr()
    assert shg_main(["shards", "build", "--coco", str(root), "--split", "val2017", "--out",
                     str(tmp_path / "out"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "holds 'val2017' shards built from other annotations or settings" in err
    assert "Traceback" not in err


def test_the_cli_builds_in_tasks_finalizes_and_tells_what_a_directory_holds(synth_root,
                                                                           tmp_path, capsys):
    out = tmp_path / "out"
    for task in range(2):
        assert shg_main(["shards", "build", "--coco", str(synth_root), "--split", "train2017",
                         "--out", str(out), "--shard-size", "10", "--task-index", str(task),
                         "--num-tasks", "2", "--quiet"]) == 0
        assert "shg shards finalize" in capsys.readouterr().out
    assert not (out / "manifest.json").exists()
    assert shg_main(["shards", "finalize", str(out), "--split", "train2017"]) == 0
    entry = read_manifest(out)["splits"]["train2017"]
    printed = capsys.readouterr().out
    assert f"train2017: {entry['num_samples']} samples in {len(entry['shards'])} shards" in printed
    raw = json.loads((synth_root / "annotations" / "person_keypoints_train2017.json")
                     .read_text())
    assert entry["num_samples"] == sum(1 for a in raw["annotations"]
                                       if a["num_keypoints"] > 0 and not a.get("iscrowd"))
    assert shg_main(["shards", "info", str(out)]) == 0
    info = capsys.readouterr().out
    assert f"train2017: {entry['num_samples']} samples, {len(entry['shards'])} shards" in info
    assert str(synth_root / "annotations" / "person_keypoints_train2017.json") in info
    assert shg_main(["shards", "info", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == read_manifest(out)


def test_a_persons_pixels_do_not_depend_on_which_shard_holds_it(synth_root, tmp_path):
    """An image whose persons straddle two shards is decoded as for all of them (JPEG draft
    decoding depends on the smallest crop asked for), so each crop is the same pixels as in
    one big shard, and as `shg eval --boxes` cuts them."""
    one = _opts(synth_root, "val2017", tmp_path / "one", crop_size=128, shard_size=1000)
    three = _opts(synth_root, "val2017", tmp_path / "three", crop_size=128, shard_size=2)
    build(one, log=lambda *a: None)
    build(three, log=lambda *a: None)
    a = {s["__key__"]: s["png"] for s in _read_all(tmp_path / "one", "val2017")[1]}
    b = {s["__key__"]: s["png"] for s in _read_all(tmp_path / "three", "val2017")[1]}
    images = [k.split("_")[0] for k in b]
    assert len(set(images)) < len(images)  # some image gives several persons
    assert a == b
