"""Labelling round trips (#29): `shg labels export --to labelstudio` (tasks with pre-annotations,
the labelling config from the schema), Label Studio's JSON export read back as shards
(`shg shards build --format labelstudio`), and COCO Keypoints 1.0 files for CVAT.

The fast tests read exports that never saw Label Studio (the tasks with their predictions
accepted as they are, and hand-made edits in Label Studio's export format); the slow one goes
through a real Label Studio (tests/labelstudio_server.py) driven with label-studio-sdk: a
project with the generated config, the tasks imported, one joint moved and one un-labelled
as a labeller would, one task skipped, the project exported as JSON and built into shards."""

from __future__ import annotations

import copy
import json
import os
import tarfile
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest

from conftest import IN_CI, shared_data
from shards.coco import make_plan
from shards.labelstudio import make_labelstudio_plan
from shards.manifest import DataError
from shards.schema import SchemaError
from shg.errors import UserError
from shg.labels import ExportOptions, export
from shg.labels.cvat import cvat_problems


def _export(tmp_path: Path, folder: Path, ann: str, **kw) -> tuple[Path, dict]:
    out = tmp_path / "ls"
    summary = export(ExportOptions(out=str(out), images=str(folder), ann=str(folder / ann),
                                   **kw))
    return out, summary


def _accepted(out: Path, path: Path | None = None) -> Path:
    """The tasks as Label Studio exports them once every pre-annotation was accepted as is."""
    tasks = json.loads((out / "tasks.json").read_text())
    for n, task in enumerate(tasks):
        task["id"] = n + 1
        task["annotations"] = [{"id": n + 1, "result": task["predictions"][0]["result"],
                                "was_cancelled": False, "ground_truth": False,
                                "updated_at": "2026-01-01T00:00:00Z"}]
    path = path or out / "export.json"
    path.write_text(json.dumps(tasks))
    return path


def _by_key(plan) -> dict:
    return {(job.image_id, p.ann_id): (job, p) for job in plan.images for p in job.persons}


# ----------------------------------------------------------------------------- config
@pytest.mark.parametrize("name,ann", [("coco-mmpose", "test_coco.json"),
                                      ("crowdpose", "test_crowdpose.json"),
                                      ("onehand10k", "test_onehand10k.json")])
def test_the_labelling_config_is_the_schema(name, ann, tmp_path):
    folder = shared_data(name)
    out, summary = _export(tmp_path, folder, ann)
    from shg.labels.sources import read_annotations

    schema = read_annotations(folder / ann).schema
    view = ET.fromstring((out / "config.xml").read_text())
    (joints,) = view.iter("KeyPointLabels")
    assert [label.get("value") for label in joints] == list(schema.names)
    # every limb of the skeleton is in the hints of both its joints
    hints = {label.get("value"): label.get("hint") for label in joints}
    for a, b in schema.skeleton:
        assert schema.names[b] in hints[schema.names[a]]
        assert schema.names[a] in hints[schema.names[b]]
    # left and right joints of a pair get different colours, every joint a colour
    colours = [label.get("background") for label in joints]
    assert all(c.startswith("#") and len(c) == 7 for c in colours)
    assert all(colours[i] != colours[j] for i, j in enumerate(schema.flip_index) if i != j)
    (persons,) = view.iter("RectangleLabels")
    category = json.loads((folder / ann).read_text())["categories"][0]["name"]
    assert [label.get("value") for label in persons] == [category]
    (visibility,) = view.iter("Choices")
    assert visibility.get("perRegion") == "true"
    assert [c.get("value") for c in visibility] == ["occluded"]
    assert summary["tasks"] == len(json.loads((out / "tasks.json").read_text()))


# ----------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name,ann", [("coco-mmpose", "test_coco.json"),
                                      ("crowdpose", "test_crowdpose.json"),
                                      ("ap10k", "test_ap10k.json")])
def test_accepted_pre_annotations_build_the_plan_of_the_annotation_file(name, ann, tmp_path):
    """Persons grouped, boxes, joints, visibility, areas and categories come back as the
    annotation file has them (float rounding only), with no schema file for a known layout."""
    folder = shared_data(name)
    out, summary = _export(tmp_path, folder, ann)
    tasks = json.loads((out / "tasks.json").read_text())
    regions = [r for t in tasks for r in t["predictions"][0]["result"]]
    for r in regions:  # percent of the image
        assert 0 <= r["value"]["x"] <= 100 and 0 <= r["value"]["y"] <= 100
        if r["type"] == "keypointlabels":
            assert r["parentID"] in {q["id"] for q in regions if q["type"] == "rectanglelabels"}
    read = make_labelstudio_plan(_accepted(out), folder, "val")
    for plan in (read, make_labelstudio_plan(out / "export.json", folder, "val",
                                             schema_file=str(out / "schema.toml"))):
        original = make_plan(folder / ann, "val")
        mine, theirs = _by_key(plan), _by_key(original)
        assert set(mine) == set(theirs) and theirs
        for key, (job, p) in theirs.items():
            got_job, got = mine[key]
            assert (got_job.file_name, got_job.width, got_job.height) == \
                (job.file_name, job.width, job.height)
            assert np.allclose(got.bbox, p.bbox, atol=1e-9)
            assert np.allclose(got.keypoints, p.keypoints, atol=1e-9)
            assert (got.keypoints[:, 2] == p.keypoints[:, 2]).all()  # v 0, 1, 2 exactly
            assert got.area == pytest.approx(p.area) and got.category_id == p.category_id
        assert plan.schema.names == original.schema.names
        assert plan.schema.skeleton == original.schema.skeleton
        assert plan.schema.flip_index == original.schema.flip_index
        assert plan.schema.sigmas == pytest.approx(original.schema.sigmas)
        assert plan.filtered == original.filtered and not plan.skipped
    v1 = sum(int((p.keypoints[:, 2] == 1).sum()) for _, p in _by_key(original).values())
    assert summary["occluded"] >= v1  # (the too-few-keypoints persons are exported too)


def _edit(tasks: list, image_id: int, change) -> None:
    (task,) = [t for t in tasks if t["data"]["image_id"] == image_id]
    change(task["annotations"][0]["result"])


def test_what_a_labeller_does_is_read_back_and_counted(tmp_path):
    """Joints added without a parent join the box they lie in; a joint in no box, a joint
    named twice and a label without a joint are dropped and counted; a new person gets a new
    id; skipped, unlabelled, rotated and twice-annotated tasks are counted."""
    folder = shared_data("coco-mmpose")
    out, _ = _export(tmp_path, folder, "test_coco.json")
    tasks = json.loads(_accepted(out).read_text())
    original = _by_key(make_plan(folder / "test_coco.json", "val"))

    def orphan_and_extra(result):  # image 40083: 500 x 333
        knee = next(r for r in result if r["id"] == "ann-230195-k13")  # left_knee
        del knee["parentID"]  # a joint added without nesting it: inside its person's box
        loose = copy.deepcopy(knee)
        loose.update(id="new1")
        loose["value"].update(x=99.0, y=1.0)  # in no box
        twice = copy.deepcopy(knee)  # a second left_knee for a person who has one
        twice.update(id="new2", parentID="ann-198196")
        result += [loose, twice]
        box = next(r for r in result if r["id"] == "ann-230195")
        drawn = copy.deepcopy(box) | {"id": "Xy12abCD"}  # a person the labeller drew
        drawn["value"].update(x=1.0, y=1.0, width=5.0, height=5.0)
        nose = copy.deepcopy(knee) | {"id": "Zz1", "parentID": "Xy12abCD"}
        nose["value"].update(x=3.0, y=3.0, keypointlabels=["nose"])
        result += [drawn, nose]

    _edit(tasks, 40083, orphan_and_extra)
    for key in ("file_name", "width", "height"):  # a task as Label Studio's own import makes
        del next(t for t in tasks if t["data"]["image_id"] == 40083)["data"][key]
    cancelled = next(t for t in tasks if t["data"]["image_id"] == 785)
    cancelled["annotations"][0]["was_cancelled"] = True
    rotated = next(t for t in tasks if t["data"]["image_id"] == 196141)
    for r in rotated["annotations"][0]["result"]:
        r["image_rotation"] = 90
    twice = next(t for t in tasks if t["data"]["image_id"] == 197388)
    older = copy.deepcopy(twice["annotations"][0]) | {"id": 99, "updated_at": "2025-01-01"}
    older["result"] = []  # the older annotation is not the one read
    twice["annotations"].insert(0, older)
    tasks.append({"id": 50, "data": {"image": "/data/local-files/?d=nothing.jpg"},
                  "annotations": [], "predictions": []})
    path = tmp_path / "edited.json"
    path.write_text(json.dumps(tasks))

    plan = make_labelstudio_plan(path, folder, "val")
    got = _by_key(plan)
    assert plan.filtered["cancelled_task"] == 1 and plan.filtered["task_without_annotation"] == 1
    assert plan.filtered["other_annotation"] == 1
    assert plan.skipped["malformed_annotation"] == 1 and "rotated 90" in plan.first_offender
    assert plan.dropped_keypoints == {"no_person": 1, "duplicate_joint": 2}
    assert not any(image_id in (785, 196141) for image_id, _ in got)
    job = got[(40083, 230195)][0]  # its image from the URL, its size from the results
    assert (job.file_name, job.width, job.height) == ("000000040083.jpg", 500, 333)
    knee = got[(40083, 230195)][1].keypoints[13]
    assert np.allclose(knee, original[(40083, 230195)][1].keypoints[13])  # joined its box
    assert (got[(40083, 198196)][1].keypoints[13] == 0).all()  # named twice: dropped
    (new,) = [p for (image_id, ann_id), (_, p) in got.items()
              if image_id == 40083 and (image_id, ann_id) not in original]
    ids = {a["id"] for a in json.loads((folder / "test_coco.json").read_text())["annotations"]}
    assert new.ann_id not in ids
    assert np.allclose(new.keypoints[0, :2], (15.0, 333 * 0.03)) and new.keypoints[0, 2] == 2
    assert np.allclose(new.bbox, (5.0, 3.33, 25.0, 16.65))
    for key in original:  # every other person of the read tasks as it was
        if key[0] in (197388,):
            assert np.allclose(got[key][1].keypoints, original[key][1].keypoints, atol=1e-9)


def test_bad_exports_are_one_line_errors(tmp_path):
    folder = shared_data("coco-mmpose")
    out, _ = _export(tmp_path, folder, "test_coco.json")
    path = _accepted(out)
    tasks = json.loads(path.read_text())
    minimal = tmp_path / "min.json"
    minimal.write_text(json.dumps([{"image": "x.jpg", "keypoints": []}]))
    with pytest.raises(DataError, match="JSON-MIN"):
        make_labelstudio_plan(minimal, folder, "val")
    tasks[0]["annotations"][0]["result"][1]["value"]["keypointlabels"] = ["tail"]
    path.write_text(json.dumps(tasks))
    with pytest.raises(SchemaError, match="'tail'"):
        make_labelstudio_plan(path, folder, "val", schema_file=str(out / "schema.toml"))
    with pytest.raises(SchemaError, match="not a known layout"):
        make_labelstudio_plan(path, folder, "val")
    only_eyes = [{"id": 1, "data": {"file_name": "a.jpg", "width": 10, "height": 10},
                  "annotations": [{"result": [{"id": "a", "type": "keypointlabels",
                                               "value": {"x": 1, "y": 1,
                                                         "keypointlabels": ["left_eye"]}}]}]}]
    path.write_text(json.dumps(only_eyes))
    with pytest.raises(SchemaError, match="coco-person and ap10k"):
        make_labelstudio_plan(path, folder, "val")


# ----------------------------------------------------------------------------- predictions, audit
def test_a_models_predictions_become_pre_annotations(exported_model, tmp_path):
    """shg predict's results (stream and COCO file) as tasks: a joint is pre-annotated when its
    confidence reaches the threshold, scores kept, the model's schema in the config."""
    from shg.cli import main as shg

    folder = shared_data("coco-mmpose")
    gt = json.loads((folder / "test_coco.json").read_text())
    boxes = [{"image_id": a["image_id"], "category_id": 1, "bbox": a["bbox"], "score": 0.9}
             for a in gt["annotations"] if a["num_keypoints"] > 0]
    (tmp_path / "dets.json").write_text(json.dumps(boxes))
    pred = tmp_path / "pred"
    assert shg(["predict", "--model", str(exported_model), str(folder), "--boxes",
                str(tmp_path / "dets.json"), "--out", str(pred), "--no-draw", "--oks-nms",
                "none", "--workers", "0"]) == 0
    results = json.loads((pred / "results.json").read_text())
    threshold = float(np.median([v for r in results for v in r["keypoints"][2::3]]))
    made = {}
    # the stream names its images; results.json by id: from --ann, or the folder's files
    # named by their COCO id (sizes from the image headers)
    for source, extra in (("results.jsonl", {}), ("results.json", {"ann": str(
            folder / "test_coco.json")}), ("results.json", {})):
        out = tmp_path / f"{source}{len(made)}"
        summary = export(ExportOptions(out=str(out), images=str(folder),
                                       results=str(pred / source), model=str(exported_model),
                                       min_keypoint_score=threshold, **extra))
        made[len(made)] = json.loads((out / "tasks.json").read_text())
        assert summary["kind"] == "predictions" and summary["persons"] == len(results)
        kept = sum(v >= threshold for r in results for v in r["keypoints"][2::3])
        assert summary["keypoints"] == kept
        assert summary["not_taken"]["keypoints_below_min_score"] == \
            17 * len(results) - kept
    assert made[0] == made[1] == made[2]
    task = made[0][0]
    prediction = task["predictions"][0]
    assert prediction["model_version"] == Path(exported_model).stem
    scores = [r["score"] for r in prediction["result"] if r["type"] == "keypointlabels"]
    assert min(scores) >= threshold - 1e-4
    boxes = [r for r in prediction["result"] if r["type"] == "rectanglelabels"]
    assert all(not r["id"].startswith("ann-") for r in boxes)  # new persons, new ids
    assert all(r["value"]["rectanglelabels"] == ["person"] for r in boxes)
    with pytest.raises(UserError, match="does not name its joints"):
        export(ExportOptions(out=str(tmp_path / "x"), images=str(folder),
                             results=str(pred / "results.json")))


def _audit(tmp_path: Path, suspects: list) -> str:
    path = tmp_path / "audit.json"
    path.write_text(json.dumps({"suspects": suspects}))
    return str(path)


def test_the_audit_marks_its_suspects_for_the_labeller(tmp_path):
    folder = shared_data("crowdpose")
    person = 129014  # image 103319; left_knee occluded, right_knee visible, head occluded
    audit = _audit(tmp_path, [
        {"annotation_id": person, "image_id": 103319, "kind": "swap",
         "joints": ["left_knee", "right_knee"], "score": 0.83},
        {"annotation_id": person, "image_id": 103319, "kind": "outlier", "joints": [12],
         "score": 0.4},
        {"annotation_id": 123456789, "image_id": 1, "kind": "swap", "joints": [], "score": 1}])
    out, summary = _export(tmp_path, folder, "test_crowdpose.json", audit=audit)
    assert summary["suspects_marked"] == 2
    assert summary["not_taken"]["suspect_of_unknown_annotation"] == 1
    tasks = json.loads((out / "tasks.json").read_text())
    assert [t["data"]["image_id"] for t in tasks] == [103319]  # flagged images only
    data = tasks[0]["data"]
    assert data["suspects"] == 2
    assert f"ann-{person}: left_knee, right_knee (suspect: swap, score 0.83)" in data["review"]
    assert f"ann-{person}: head (suspect: outlier, score 0.40)" in data["review"]
    result = {r["id"]: r for r in tasks[0]["predictions"][0]["result"]
              if r["type"] != "choices"}
    names = json.loads((folder / "test_crowdpose.json").read_text())["categories"][0]["keypoints"]
    for joint, text in (("left_knee", "suspect: swap, score 0.83"),
                        ("right_knee", "suspect: swap, score 0.83"),
                        ("head", "suspect: outlier, score 0.40")):
        assert result[f"ann-{person}-k{names.index(joint)}"]["meta"]["text"] == [text]
    assert result[f"ann-{person}"]["meta"]["text"] == [
        "check left_knee, right_knee (suspect: swap, score 0.83)",
        "check head (suspect: outlier, score 0.40)"]
    others = [r for r in result.values() if r["type"] == "keypointlabels" and
              r["value"]["keypointlabels"][0] not in ("left_knee", "right_knee", "head")]
    assert others and all("meta" not in r for r in others)
    assert "meta" not in result["ann-127068"]  # the other person of the image: context only
    with pytest.raises(DataError, match="'tail'"):
        _export(tmp_path, folder, "test_crowdpose.json", audit=_audit(tmp_path, [
            {"annotation_id": person, "kind": "swap", "joints": ["tail"]}]))


# ----------------------------------------------------------------------------- CVAT
def test_flagged_annotations_are_a_coco_keypoints_file_cvat_imports(tmp_path):
    """CVAT's COCO Keypoints 1.0 import (Datumaro's person_keypoints reader) needs fields
    CrowdPose's own file lacks (segmentation); the flagged-annotations file has them, keeps the
    rest of each annotation, and says what is suspect."""
    folder = shared_data("crowdpose")
    raw = json.loads((folder / "test_crowdpose.json").read_text())
    problems = cvat_problems(raw)
    assert any("'segmentation' is missing" in p for p in problems)
    assert any("skeleton edge [16, 14]" in p for p in problems)  # COCO's, for 14 joints
    flagged = sorted(a["id"] for a in raw["annotations"])[:2]
    audit = _audit(tmp_path, [{"annotation_id": i, "image_id": 0, "kind": "swap",
                               "joints": ["head"], "score": 0.9} for i in flagged])
    summary = export(ExportOptions(out=str(tmp_path / "cvat"), to="cvat",
                                   ann=str(folder / "test_crowdpose.json"), audit=audit))
    path = Path(summary["file"])
    assert path.name == "person_keypoints_default.json"
    written = json.loads(path.read_text())
    assert cvat_problems(written) == []
    assert sorted(a["id"] for a in written["annotations"]) == flagged
    originals = {a["id"]: a for a in raw["annotations"]}
    for ann in written["annotations"]:
        assert ann["segmentation"] == [] and ann["attributes"] == {"suspect": "swap: head (0.90)"}
        assert {k: v for k, v in ann.items() if k in originals[ann["id"]]} == originals[ann["id"]]
    assert {i["id"] for i in written["images"]} == {a["image_id"] for a in written["annotations"]}
    assert written["categories"][0]["keypoints"] == raw["categories"][0]["keypoints"]


def test_the_cvat_check_names_what_cvat_would_refuse(tmp_path):
    folder = shared_data("coco-mmpose")
    good = json.loads((folder / "test_coco.json").read_text())
    assert cvat_problems(good) == []
    for change, expected in [
        (lambda d: d["annotations"][0].pop("iscrowd"), "'iscrowd' is missing"),
        (lambda d: d["annotations"][0]["keypoints"].pop(), "50 keypoint values"),
        (lambda d: d["annotations"][0].update(image_id=1), "is not a listed image"),
        (lambda d: d["annotations"][0].update(category_id=7), "is not a listed category"),
        (lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]), "used twice"),
        (lambda d: d["annotations"][0].update(bbox=[1, 2, 3]), "'bbox' is not 4 numbers"),
        (lambda d: d["annotations"][0]["keypoints"].__setitem__(2, 3), "visibility"),
        (lambda d: d["categories"][0].pop("skeleton"), "no 'skeleton' list"),
        (lambda d: d["categories"][0]["skeleton"].append([0, 1]), "skeleton edge [0, 1]"),
        (lambda d: d["images"][0].update(id="785"), "'id' is not an integer"),
        (lambda d: d.pop("categories"), "no 'categories' list"),
    ]:
        bad = copy.deepcopy(good)
        change(bad)
        problems = cvat_problems(bad)
        assert any(expected in p for p in problems), (expected, problems)
    # predictions, as CVAT pre-annotations: new ids, their scores, complete fields
    results = [{"image_id": a["image_id"], "category_id": 1, "keypoints": a["keypoints"],
                "score": 0.5, "bbox": a["bbox"]} for a in good["annotations"]]
    (tmp_path / "results.json").write_text(json.dumps(results))
    summary = export(ExportOptions(out=str(tmp_path / "p.json"), to="cvat",
                                   results=str(tmp_path / "results.json"),
                                   ann=str(folder / "test_coco.json"), min_keypoint_score=0))
    written = json.loads(Path(summary["file"]).read_text())
    assert cvat_problems(written) == [] and summary["annotations"] == len(results)


# ----------------------------------------------------------------------------- Label Studio
@pytest.fixture(scope="module")
def labelstudio(request, tmp_path_factory):
    """A real Label Studio on loopback serving the shared data's files: (its home, URL, API
    token, the document root)."""
    if os.environ.get("SHG_LABELSTUDIO_TESTS") == "0":
        pytest.skip("SHG_LABELSTUDIO_TESTS=0")
    from labelstudio_server import Unavailable, ensure_venv, home, labelstudio_server

    root = shared_data("coco-mmpose").parent
    where = home(request, tmp_path_factory)
    try:
        ensure_venv(where)
    except Unavailable as exc:
        (pytest.fail if IN_CI else pytest.skip)(f"no Label Studio: {exc}")
    with labelstudio_server(where, tmp_path_factory.mktemp("labelstudio"), root) as (url, tok):
        yield where, url, tok, root


def _samples(out: Path) -> dict:
    """{key: (meta, png bytes)} of a shard directory's samples."""
    found = {}
    for shard in sorted(out.glob("*.tar")):
        with tarfile.open(shard) as tar:
            for member in tar.getmembers():
                key, ext = member.name.rsplit(".", 1)
                found.setdefault(key, {})[ext] = tar.extractfile(member).read()
    return {k: (json.loads(v["json"]), v["png"]) for k, v in found.items()}


def _image_xy(meta: dict, j: int) -> np.ndarray:
    affine = np.asarray(meta["affine"])
    u, v, _ = meta["keypoints"][j]
    return affine @ np.array([u, v, 1.0])


@pytest.mark.slow
def test_a_round_trip_through_a_real_label_studio(labelstudio, tmp_path):
    from labelstudio_server import drive
    from shards.build import BuildOptions, build

    where, url, token, root = labelstudio
    folder = root / "coco-mmpose"
    out, _ = _export(tmp_path, folder, "test_coco.json", document_root=str(root))
    person, image_id = 467657, 197388
    kps = np.asarray(next(a for a in json.loads((folder / "test_coco.json").read_text())
                          ["annotations"] if a["id"] == person)["keypoints"]).reshape(-1, 3)
    moved = int(np.flatnonzero(kps[:, 2] == 2)[0])
    unlabelled = int(np.flatnonzero(kps[:, 2] == 1)[0])  # an occluded one: 2 results go
    target = kps[moved, :2] + (5.3, -3.7)
    export_path = tmp_path / "export.json"
    report = drive(where, url, token, {
        "config": str(out / "config.xml"), "tasks": str(out / "tasks.json"),
        "storage": str(folder), "out": str(export_path), "cancel": [785],
        "edits": {image_id: [
            {"op": "move", "region": f"ann-{person}-k{moved}", "x": target[0], "y": target[1]},
            {"op": "delete", "region": f"ann-{person}-k{unlabelled}"}]}}, tmp_path / "driver")
    assert report["imported"] == 4 and report["annotations"] == 3 and report["cancelled"] == 1
    assert report["moved"] == 1 and report["deleted"] == 1 and report["exported_tasks"] == 4
    # the tasks' image URLs are what Label Studio serves (a local-files storage on the folder)
    served = report["served"]
    assert served["status"] == 200
    assert served["bytes"] == (folder / served["file_name"]).stat().st_size

    common = dict(split="val", crop_size=64, workers=1, progress=False, shard_size=100)
    build(BuildOptions(format="labelstudio", ann=str(export_path), images=str(folder),
                       schema=str(out / "schema.toml"), out=str(tmp_path / "from_ls"), **common),
          log=lambda *a: None)
    build(BuildOptions(ann=str(folder / "test_coco.json"), images=str(folder),
                       out=str(tmp_path / "from_coco"), **common), log=lambda *a: None)
    mine, theirs = _samples(tmp_path / "from_ls"), _samples(tmp_path / "from_coco")
    manifest = json.loads((tmp_path / "from_ls" / "manifest.json").read_text())["splits"]["val"]
    assert manifest["filtered"]["cancelled_task"] == 1
    skipped_task = {k for k in theirs if k.startswith("785_")}
    assert skipped_task and set(mine) == set(theirs) - skipped_task
    for key, (meta, png) in mine.items():
        meta_c, png_c = theirs[key]
        assert np.allclose(meta["bbox"], meta_c["bbox"], atol=1e-6)
        assert png == png_c  # the same pixels cut from the same image
        got, want = np.asarray(meta["keypoints"]), np.asarray(meta_c["keypoints"])
        if key == f"{image_id}_{person}":
            assert np.abs(_image_xy(meta, moved)[:2] - target).max() < 0.5
            assert got[moved, 2] == 2
            assert (got[unlabelled] == 0).all() and want[unlabelled, 2] == 1
            rest = [j for j in range(len(got)) if j not in (moved, unlabelled)]
            got, want = got[rest], want[rest]
        assert np.allclose(got, want, atol=2e-4), key  # (stored rounded to 4 decimals)
        assert (got[:, 2] == want[:, 2]).all()
