"""Keypoint layouts other than COCO's, on the real samples in ../shared/data: CrowdPose (14
person joints, a detector's boxes), AP-10K (17 animal joints, 54 species in one file),
OneHand10K (21 hand joints, no num_keypoints, no sigmas) and MPII (16 joints, its own JSON).
Each builds with the expected counts and its own schema, the oracle scores what the pipeline
can (COCO AP with the published sigmas, PCK, PCKh), a short training needs no layout setting,
and predict, export and ONNX carry the schema. Bad schemas and mismatched models are one line."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import shared_data
from shg.cli import main as shg

# (folder, annotation file, persons with a labelled keypoint: what the sample files hold)
LAYOUTS = {"crowdpose": ("test_crowdpose.json", 4, 14), "ap10k": ("test_ap10k.json", 2, 17),
           "onehand10k": ("test_onehand10k.json", 4, 21), "mpii": ("test_mpii.json", 5, 16)}


def _build(name: str, out: Path, *extra: str, ann: Path | None = None) -> int:
    folder = shared_data(name)
    file, _, _ = LAYOUTS[name]
    return shg(["shards", "build", "--ann", str(ann or folder / file), "--images", str(folder),
                "--split", "val", "--out", str(out), "--crop-size", "128", "--quiet",
                *(["--format", "mpii"] if name == "mpii" else []), *extra])


@pytest.fixture(scope="module")
def layout_shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("layouts")
    for name in LAYOUTS:
        assert _build(name, root / name) == 0, name
    return root


def _entry(shards: Path) -> dict:
    return json.loads((shards / "manifest.json").read_text())["splits"]["val"]


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_layout_builds_with_its_own_schema(layout_shards, name):
    file, persons, joints = LAYOUTS[name]
    entry = _entry(layout_shards / name)
    assert entry["num_samples"] == persons
    schema = entry["schema"]
    assert len(schema["names"]) == joints
    if name != "mpii":  # the annotation file's own keypoint names, in its order
        raw = json.loads((shared_data(name) / file).read_text())
        assert schema["names"] == raw["categories"][0]["keypoints"]
    from shards.manifest import read_manifest
    from shards.reader import read_shard

    for s in read_manifest(layout_shards / name)["splits"]["val"]["shards"]:
        for raw in read_shard(layout_shards / name / s["file"], None):
            assert len(json.loads(raw["json"])["keypoints"]) == joints


def test_crowdpose_drops_the_person_without_keypoints_and_keeps_the_others(layout_shards):
    entry = _entry(layout_shards / "crowdpose")
    raw = json.loads((shared_data("crowdpose") / "test_crowdpose.json").read_text())
    empty = [a for a in raw["annotations"] if not any(v > 0 for v in a["keypoints"][2::3])]
    assert entry["filtered"] == {"too_few_keypoints": len(empty)} and len(empty) == 1
    assert entry["schema"]["name"] == "crowdpose" and entry["schema"]["sigmas"]


def test_ap10k_takes_every_species_and_flips_animal_joints(layout_shards):
    """AP-10K's order starts left_eye, right_eye, nose: a COCO flip (1<->2) would have made the
    right eye the nose. With its own schema a flipped sample keeps its nose a nose."""
    from shards.reader import read_shard
    from shards.sample import SampleConfig, decode
    from shards.schema import stored

    entry = _entry(layout_shards / "ap10k")
    raw = json.loads((shared_data("ap10k") / "test_ap10k.json").read_text())
    assert entry["schema"]["categories"] == [c["id"] for c in raw["categories"]]  # all 54
    schema = stored(entry)
    sample = next(read_shard(layout_shards / "ap10k" / entry["shards"][0]["file"], None))
    meta = json.loads(sample["json"])
    assert meta["category_id"] in (1, 26)
    kps = np.asarray(meta["keypoints"]).reshape(17, 3)
    mirror = SampleConfig(rotate_deg=0, scale_min=1, scale_max=1, flip_prob=1.0)
    flipped = decode(sample, mirror, np.random.default_rng(0), schema)["keypoints"]
    nose, left_eye, right_eye = (schema.names.index(n) for n in ("nose", "left_eye",
                                                                   "right_eye"))
    assert schema.flip_index[nose] == nose and schema.flip_index[left_eye] == right_eye
    checked = 0
    for k, src in enumerate(schema.flip_index):  # joint k of the mirror is joint src mirrored
        if kps[src][2] > 0:
            assert flipped[k][0] == pytest.approx(128 - kps[src][0], abs=1e-3), k
            assert flipped[k][1] == pytest.approx(kps[src][1], abs=1e-3), k
            checked += 1
    assert checked >= 15
    # --category takes one species only, the others counted as another category
    assert _build("ap10k", layout_shards / "ap10k-1", "--category", "1") == 0
    one = _entry(layout_shards / "ap10k-1")
    assert one["num_samples"] == 1 and one["filtered"] == {"other_category": 1}
    assert one["schema"]["categories"] == [1]


@pytest.mark.parametrize("name, floor", [("crowdpose", 0.9), ("ap10k", 0.9)])
def test_the_oracle_scores_coco_ap_with_the_published_sigmas(layout_shards, name, floor,
                                                             tmp_path):
    file, _, _ = LAYOUTS[name]
    out = tmp_path / "oracle"
    assert shg(["eval", "--oracle", "--shards", str(layout_shards / name), "--split", "val",
                "--coco-ann", str(shared_data(name) / file), "--out", str(out)]) == 0
    stats = json.loads((out / "coco_eval.json").read_text())
    assert stats["AP"] >= floor, stats
    results = json.loads((out / "coco_results.json").read_text())
    raw = json.loads((shared_data(name) / file).read_text())
    cats = {a["image_id"]: a["category_id"] for a in raw["annotations"]}
    assert all(r["category_id"] == cats[r["image_id"]] for r in results)  # each its species
    pck = json.loads((out / "pck.json").read_text())
    assert len(pck["joints"]) == LAYOUTS[name][2] and pck["normalisations"]["bbox"]["mean"][
        "0.2"] > 0.9


def test_hands_have_pck_but_no_coco_ap_nor_torso(layout_shards, tmp_path, capsys):
    ann = shared_data("onehand10k") / "test_onehand10k.json"
    out = tmp_path / "hand"
    assert shg(["eval", "--oracle", "--shards", str(layout_shards / "onehand10k"), "--split",
                "val", "--coco-ann", str(ann), "--out", str(out)]) == 0
    assert "COCO keypoint AP: unavailable" in capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert "no OKS sigmas" in summary["coco"]["unavailable"]
    assert not (out / "coco_eval.json").exists()  # not computed with COCO's sigmas
    pck = json.loads((out / "pck.json").read_text())
    assert set(pck["normalisations"]) == {"constant", "bbox"}
    assert "shoulders and hips" in pck["unavailable"]["torso"]
    assert pck["normalisations"]["bbox"]["mean"]["0.1"] > 0.9
    assert "torso | unavailable" in (out / "report.md").read_text()
    # sigmas given in a schema file make COCO AP available
    schema = tmp_path / "hand.toml"
    schema.write_text("sigmas = [" + ", ".join(["0.025"] * 21) + "]\n")
    assert _build("onehand10k", tmp_path / "with-sigmas", "--schema", str(schema)) == 0
    assert shg(["eval", "--oracle", "--shards", str(tmp_path / "with-sigmas"), "--split",
                "val", "--coco-ann", str(ann), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "coco_eval.json").read_text())["AP"] > 0.9


def test_mpii_gives_pckh_with_head_boxes_and_says_so_without(layout_shards, tmp_path):
    out = tmp_path / "plain"
    assert shg(["eval", "--oracle", "--shards", str(layout_shards / "mpii"), "--split", "val",
                "--out", str(out)]) == 0
    pck = json.loads((out / "pck.json").read_text())
    assert "head" not in pck["normalisations"] and "head boxes" in pck["unavailable"]["head"]
    # the same file with head boxes (MPII's official .mat holds them): PCKh@0.5
    people = json.loads((shared_data("mpii") / "test_mpii.json").read_text())
    for p in people:
        x, y = np.asarray(p["joints"])[9]  # head_top: a 60 px head box below it
        p["head_box"] = [x - 30, y, x + 30, y + 60]
    ann = tmp_path / "mpii_heads.json"
    ann.write_text(json.dumps(people))
    assert _build("mpii", tmp_path / "heads", ann=ann) == 0
    assert shg(["eval", "--oracle", "--shards", str(tmp_path / "heads"), "--split", "val",
                "--out", str(tmp_path / "ev")]) == 0
    head = json.loads((tmp_path / "ev" / "pck.json").read_text())["normalisations"]["head"]
    # norm 0.6 x 84.9 px = 50.9 px: the oracle's quantisation is far below half of it
    assert head["mean"]["0.5"] == 1.0 and "0.6" in head["note"]


@pytest.mark.slow
def test_a_crowdpose_model_trains_evaluates_predicts_and_exports_its_schema(layout_shards,
                                                                            tmp_path):
    """No layout setting anywhere: the joints come from the shards."""
    from helpers import TINY, train_here

    shards = layout_shards / "crowdpose"
    run = tmp_path / "run"
    assert train_here(shards, run, base=[f"data.shards={shards}", f"run_dir={run}", *TINY,
                                         "data.train_split=val", "data.val_split=val",
                                         "train.max_steps=2", "eval.every_steps=2",
                                         "checkpoint.every_steps=2"]) == 0
    assert "joints = 14" in (run / "config.toml").read_text()
    folder = shared_data("crowdpose")
    ann = folder / "test_crowdpose.json"
    assert shg(["eval", "--run", str(run), "--shards", str(shards), "--split", "val",
                "--coco-ann", str(ann), "--out", str(tmp_path / "ev")]) == 0
    assert json.loads((tmp_path / "ev" / "coco_eval.json").read_text())["AP"] >= 0
    # the detector's boxes of the sample (6, one a false box) through the same model
    dets = folder / "test_crowdpose_det_AP_40.json"
    images = tmp_path / "images" / "val"
    images.mkdir(parents=True)
    for jpg in folder.glob("*.jpg"):
        (images / jpg.name).symlink_to(jpg)
    assert shg(["eval", "--run", str(run), "--coco", str(tmp_path / "images"), "--split", "val",
                "--coco-ann", str(ann), "--boxes", str(dets), "--out", str(tmp_path / "det")]) == 0
    det = json.loads((tmp_path / "det" / "summary.json").read_text())
    assert det["boxes"]["kept"] == 6 and "AP" in det["coco"]
    model = tmp_path / "m.safetensors"
    assert shg(["export", "--run", str(run), "--out", str(model)]) == 0
    assert shg(["predict", "--model", str(model), str(folder), "--boxes", str(dets), "--out",
                str(tmp_path / "pred")]) == 0
    results = json.loads((tmp_path / "pred" / "results.json").read_text())
    assert results and all(len(r["keypoints"]) == 14 * 3 for r in results)
    assert sorted(p.name for p in (tmp_path / "pred").glob("*.png")) == ["103319.png",
                                                                         "106848.png"]
    # the analyses read the schema too: 14-joint skeletons, the dataset's limbs drawn
    assert shg(["analyze", "skeletons", "--shards", str(shards), "--split", "val", "--out",
                str(tmp_path / "skel"), "--k-min", "2", "--k-max", "2"]) == 0
    skel = json.loads((tmp_path / "skel" / "skeletons.json").read_text())
    raw = json.loads(ann.read_text())
    labelled = [sum(v > 0 for v in a["keypoints"][2::3]) for a in raw["annotations"]]
    assert skel["populations"]["all"]["count"] == sum(n >= 8 for n in labelled)  # min_joints
    assert skel["populations"]["full"]["count"] == sum(n == 14 for n in labelled)
    assert shg(["analyze", "latent", "--run", str(run), "--shards", str(shards), "--split",
                "val", "--out", str(tmp_path / "latent"), "--components", "1"]) == 0
    assert (tmp_path / "latent" / "pca_walk.png").is_file()
    assert shg(["info", "--model", str(model)]) == 0
    assert shg(["export", "--run", str(run), "--format", "onnx", "--out",
                str(tmp_path / "m.onnx")]) == 0
    desc = json.loads((tmp_path / "m.json").read_text())
    from shards.schema import CROWDPOSE

    assert desc["joints"] == list(CROWDPOSE.names) and desc["output"]["shape"][1] == 14
    assert desc["skeleton"] == [list(e) for e in CROWDPOSE.skeleton]
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    heat = session.run(None, {"image": np.zeros((1, 3, 128, 128), np.float32)})[0]
    assert heat.shape == (1, 14, 32, 32)


def test_a_model_of_another_layout_is_refused_naming_both(layout_shards, trained_run, tmp_path,
                                                         capsys):
    """The 17-joint COCO model on 14-joint CrowdPose shards, and on AP-10K's 17 other joints."""
    for name in ("crowdpose", "ap10k"):
        assert shg(["eval", "--run", str(trained_run), "--shards", str(layout_shards / name),
                    "--split", "val", "--out", str(tmp_path / name)]) == 2
        err = capsys.readouterr().err
        assert "the model has coco-person (17 joints" in err and "do not fit together" in err
        assert str(layout_shards / name) in err and "Traceback" not in err


def test_model_joints_other_than_the_shards_is_a_config_error(layout_shards, tmp_path, capsys):
    from helpers import TINY, train_here

    shards = layout_shards / "crowdpose"
    assert train_here(shards, tmp_path / "r", base=[
        f"data.shards={shards}", f"run_dir={tmp_path / 'r'}", *TINY, "data.train_split=val",
        "data.val_split=val", "model.joints=17"]) == 2
    err = capsys.readouterr().err
    assert "model.joints=17" in err and "crowdpose (14 joints" in err


def _write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "ann.json"
    path.write_text(json.dumps(data))
    return path


@pytest.mark.parametrize("change, message", [
    (lambda d: d["annotations"][0].update(keypoints=[1, 2, 2] * 13),
     "annotation 123803 has 39 keypoint values; its category's 14 joints need 42"),
    (lambda d: d["categories"][0].pop("keypoints"), "no category has a 'keypoints' list"),
    (lambda d: d["categories"][0]["keypoints"].__setitem__(1, "left_shoulder"),
     "joint 'left_shoulder' is named twice"),
    (lambda d: d["categories"].append({**d["categories"][0], "id": 2, "keypoints": ["a"]}),
     "different keypoint lists; choose one with --category"),
])
def test_real_files_gone_wrong_are_one_line_errors(tmp_path, capsys, change, message):
    data = json.loads((shared_data("crowdpose") / "test_crowdpose.json").read_text())
    change(data)
    code = shg(["shards", "build", "--ann", str(_write(tmp_path, data)), "--images",
                str(shared_data("crowdpose")), "--split", "val", "--out", str(tmp_path / "o"),
                "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_schema_file_that_disagrees_with_the_data_is_refused(tmp_path, capsys):
    schema = tmp_path / "s.toml"
    schema.write_text('names = ["nose"]\n')
    assert _build("crowdpose", tmp_path / "o", "--schema", str(schema)) == 2
    assert "names disagree with the annotation file's keypoints" in capsys.readouterr().err
    shutil.rmtree(tmp_path / "o", ignore_errors=True)


def test_shg_info_tells_a_models_keypoints(trained_run, capsys):
    assert shg(["info", "--model", str(trained_run)]) == 0
    out = capsys.readouterr().out
    assert "keypoints: coco-person (17 joints" in out and "128 px crops" in out
    assert "left_eye<->right_eye" in out and "OKS sigmas: yes" in out
    assert "StackedHourglass(stacks=2, features=16, joints=17)" in out


def test_decoding_takes_sigma_from_the_models_metadata(trained_run, small_shards, tmp_path):
    """`--decode dark` smooths with the sigma the model's targets had: the same weights with
    another sigma in their metadata decode to other keypoints."""
    from shg.weights import load_weights, locate, save_weights

    tensors, meta = load_weights(locate(trained_run))
    assert meta["sigma"] == 1.0
    results = {}
    for sigma in (1.0, 3.0):
        model = tmp_path / f"s{sigma}.safetensors"
        save_weights(model, tensors, {**meta, "sigma": sigma})
        out = tmp_path / f"ev{sigma}"
        assert shg(["eval", "--model", str(model), "--shards", str(small_shards), "--split",
                    "val2017", "--decode", "dark", "--max-samples", "8", "--out",
                    str(out)]) == 0
        results[sigma] = [r["keypoints"] for r in json.loads(
            (out / "coco_results.json").read_text())]
    assert results[1.0] != results[3.0]
