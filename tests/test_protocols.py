"""COCO AP measured as each dataset's published tables are (shg/evaluation/coco.py), checked
against the reference implementations on data made here from the real samples in
../shared/data:

- xtcocotools, which mmpose's CrowdPose and AI Challenger metrics call with use_area=False
  (`keypoints_crowd` for CrowdPose's AP(E)/AP(M)/AP(H)); its wheels need numpy<2, so it runs in
  its own virtualenv, made once into the pytest cache by the fixture below;
- pycocotools (the project's own), run here directly on a copy of the ground truth whose areas
  the test sets by the protocol's definition (0.53 x box width x height), and on COCO's file as
  it is: COCO numbers stay exactly pycocotools'.

`shg eval --results` scores the results files; the model path (the oracle on CrowdPose shards)
goes through the same coco_eval and must agree with pycocotools on its own coco_results.json.
"""

from __future__ import annotations

import contextlib
import copy
import fcntl
import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import IN_CI, shared_data
from shg.cli import main as shg

XTCOCOTOOLS = ("numpy==1.26.4", "xtcocotools==1.14.3")
# mmpose's CrowdPose sigmas, as ../shared/data/README.md lists them
CROWDPOSE_SIGMAS = [0.079, 0.079, 0.072, 0.072, 0.062, 0.062, 0.107, 0.107, 0.087, 0.087, 0.089,
                    0.089, 0.079, 0.079]
STATS = ["AP", "AP50", "AP75", "APm", "APl", "AR", "AR50", "AR75", "ARm", "ARl"]
CROWD_STATS = ["AP", "AP50", "AP75", "AR", "AR50", "AR75", "AP_easy", "AP_medium", "AP_hard"]

REFERENCE = """
import contextlib, io, json, sys
import numpy as np
from xtcocotools.coco import COCO
from xtcocotools.cocoeval import COCOeval
out = []
for job in json.load(sys.stdin):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(job["gt"])
        ev = COCOeval(gt, gt.loadRes(job["results"]), job["iou_type"],
                      None if job["sigmas"] is None else np.array(job["sigmas"]),
                      use_area=job["use_area"])
        ev.evaluate(); ev.accumulate(); ev.summarize()
    out.append([float(v) for v in ev.stats])
print(json.dumps(out))
"""


@pytest.fixture(scope="session")
def xtcocotools(request, tmp_path_factory):
    """A function running xtcocotools' COCOeval on [{gt, results, iou_type, use_area, sigmas}]
    (files) in a virtualenv of its own (.pytest_cache/d/xtcocotools/venv: made once with pip
    from PyPI, about 20 s; xdist workers wait for the one making it)."""
    cache = getattr(request.config, "cache", None)  # None: -p no:cacheprovider
    root = Path(cache.mkdir("xtcocotools") if cache else
                tmp_path_factory.getbasetemp().parent / "xtcocotools")
    root.mkdir(exist_ok=True)
    venv, spec = root / "venv", " ".join(XTCOCOTOOLS)
    python = venv / "bin" / "python"
    with open(root / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        done = venv / "installed"
        if not done.is_file() or done.read_text() != spec:
            shutil.rmtree(venv, ignore_errors=True)
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            proc = subprocess.run([str(python), "-m", "pip", "install", "-q",
                                   "--disable-pip-version-check", *XTCOCOTOOLS],
                                  capture_output=True, text=True, timeout=900)
            if proc.returncode != 0:
                shutil.rmtree(venv, ignore_errors=True)
                (pytest.fail if IN_CI else pytest.skip)(
                    f"pip install {spec} failed (no PyPI here?): {proc.stderr.strip()[-400:]}")
            done.write_text(spec)

    def run(jobs: list[dict]) -> list[list[float]]:
        proc = subprocess.run([str(python), "-c", REFERENCE], input=json.dumps(jobs),
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout)

    return run


def pycocotools_stats(gt: dict, results: list, sigmas, area=None) -> list[float]:
    """pycocotools' COCOeval over every image of `gt`; `area(bbox)` replaces each
    annotation's area first (None: the file's own)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    gt = copy.deepcopy(gt)
    if area is not None:
        for ann in gt["annotations"]:
            ann["area"] = area(ann["bbox"])
    coco = COCO()
    coco.dataset = gt
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
        ev = COCOeval(coco, coco.loadRes(copy.deepcopy(results)), "keypoints")
        if sigmas is not None:
            ev.params.kpt_oks_sigmas = np.array(sigmas)
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return [float(v) for v in ev.stats]


def box053(b):
    return b[2] * b[3] * 0.53


def perturbed(gt: dict, seed: int, extra: bool = True) -> list[dict]:
    """A prediction per person with a labelled keypoint: its keypoints moved by Gaussian noise
    of 1-5 % of its box's longer side (unlabelled ones at the box centre), random scores;
    with `extra` also a shifted duplicate of every third person (a false positive) and no
    result for every seventh (a miss)."""
    rng = np.random.default_rng(seed)
    out = []
    for i, ann in enumerate(gt["annotations"]):
        k = np.asarray(ann["keypoints"], float).reshape(-1, 3)
        if (extra and i % 7 == 6) or ann.get("iscrowd") or not (k[:, 2] > 0).any():
            continue
        x, y, w, h = ann["bbox"]
        centre = np.array([x + w / 2, y + h / 2])
        noise = rng.normal(0, rng.uniform(0.01, 0.05) * max(w, h), (len(k), 2))
        points = np.where(k[:, 2:] > 0, k[:, :2], centre) + noise
        copies = [(points, rng.uniform(0.3, 1.0))]
        if extra and i % 3 == 0:
            copies.append((points + 0.3 * w, rng.uniform(0.05, 0.5)))
        for p, score in copies:
            out.append({"image_id": ann["image_id"], "category_id": ann["category_id"],
                        "keypoints": [round(float(v), 2) for v in
                                      np.c_[p, rng.uniform(0.1, 1.0, len(k))].ravel()],
                        "score": round(float(score), 4)})
    return out


def crowd_file(gt: dict, indices: list[float]) -> dict:
    """The CrowdPose sample's images, once per crowd index of `indices` (new image and
    annotation ids, the same file names): persons in every crowd class."""
    made = {"categories": gt["categories"], "images": [], "annotations": []}
    for copy_no, index in enumerate(indices):
        for im in gt["images"]:
            image_id = copy_no * 1_000_000 + im["id"]
            made["images"].append({**im, "id": image_id, "crowdIndex": index})
            made["annotations"] += [{**a, "id": copy_no * 1_000_000 + a["id"],
                                     "image_id": image_id}
                                    for a in gt["annotations"] if a["image_id"] == im["id"]]
    return made


def score(results: Path, ann: Path, out: Path, *extra: str) -> dict:
    assert shg(["eval", "--results", str(results), "--ann", str(ann), "--out", str(out),
                *extra]) == 0
    return json.loads((out / "coco_eval.json").read_text())


def write(path: Path, data) -> Path:
    path.write_text(json.dumps(data))
    return path


def test_crowdpose_ap_is_xtcocotools_and_pycocotools_with_the_box_scale(tmp_path, xtcocotools):
    sample = shared_data("crowdpose") / "test_crowdpose.json"
    gt = json.loads(sample.read_text())
    # the boundaries of the classes (0.2, 0.8) belong to the upper class, as in the reference
    made = write(tmp_path / "crowd.json", crowd_file(gt, [0.0, 0.12, 0.19, 0.2, 0.45, 0.79,
                                                          0.8, 0.93]))
    cases = {"sample": (sample, gt, perturbed(gt, 0, extra=False)),
             "crowd": (made, json.loads(made.read_text()), perturbed(json.loads(
                 made.read_text()), 1))}
    jobs, ours = [], {}
    for name, (ann, data, results) in cases.items():
        res = write(tmp_path / f"{name}_results.json", results)
        ours[name] = score(res, ann, tmp_path / name)
        jobs.append({"gt": str(ann), "results": str(res), "iou_type": "keypoints_crowd",
                     "use_area": False, "sigmas": CROWDPOSE_SIGMAS})
        jobs.append({"gt": str(ann), "results": str(res), "iou_type": "keypoints",
                     "use_area": False, "sigmas": CROWDPOSE_SIGMAS})
    reference = xtcocotools(jobs)
    for i, (name, (ann, data, results)) in enumerate(cases.items()):
        c = ours[name]
        assert c["oks_scale"] == "0.53 x box width x height"
        crowd_ref, all_ref = reference[2 * i], reference[2 * i + 1]
        # AP, AP50, AP75, AR, AR50, AR75 as keypoints_crowd; APm ... as keypoints; the
        # reference rounds AP(E/M/H) to 4 digits
        assert [c[k] for k in CROWD_STATS[:6]] == pytest.approx(crowd_ref[:6], abs=1e-12)
        assert [c[k] for k in CROWD_STATS[6:]] == pytest.approx(crowd_ref[6:], abs=5e-5)
        assert [c[k] for k in STATS] == pytest.approx(all_ref, abs=1e-12)
        assert [c[k] for k in STATS] == pycocotools_stats(data, results, CROWDPOSE_SIGMAS,
                                                          box053)
        old = pycocotools_stats(data, results, CROWDPOSE_SIGMAS, lambda b: b[2] * b[3])
        print(f"{name}: AP {c['AP']:.4f} (xtcocotools {crowd_ref[0]:.4f}); the box's full "
              f"area gave {old[0]:.4f}; AP(E/M/H) {c['AP_easy']:.4f} {c['AP_medium']:.4f} "
              f"{c['AP_hard']:.4f} (xtcocotools {crowd_ref[6:]})")
        assert old[0] > c["AP"]  # the full box area was more lenient
    crowd = ours["crowd"]
    assert crowd["crowd_index"]["images"] == {"easy": 6, "medium": 6, "hard": 4}
    assert ours["sample"]["crowd_index"]["images"] == {"easy": 0, "medium": 2, "hard": 0}
    assert ours["sample"]["AP_easy"] == ours["sample"]["AP_hard"] == -1
    assert min(crowd[k] for k in ("AP_easy", "AP_medium", "AP_hard")) > 0
    report = (tmp_path / "crowd" / "report.md").read_text()
    assert "AP(E) " in report and "0.53 x box width x height" in report


def test_coco_ap_stays_pycocotools_on_the_file_as_it_is(tmp_path, coco_sample, xtcocotools):
    ann = coco_sample / "annotations" / "person_keypoints_val2017.json"
    gt = json.loads(ann.read_text())
    results = perturbed(gt, 2)
    res = write(tmp_path / "results.json", results)
    c = score(res, ann, tmp_path / "auto")
    assert [c[k] for k in STATS] == pycocotools_stats(gt, results, None)
    assert c["oks_scale"] == "the annotations' area" and "AP_easy" not in c
    assert c["images"] == len(gt["images"]) and c["AP"] > 0.3
    # --protocol bbox (and a schema file's protocol) take the box scale on COCO too, as
    # xtcocotools with use_area=False does; --protocol beats the schema file's
    forced = score(res, ann, tmp_path / "bbox", "--protocol", "bbox")
    schema = tmp_path / "s.toml"
    schema.write_text('protocol = "bbox"\n')
    by_schema = score(res, ann, tmp_path / "schema", "--schema", str(schema))
    back = score(res, ann, tmp_path / "back", "--schema", str(schema), "--protocol", "area")
    area_ref, box_ref = xtcocotools([
        {"gt": str(ann), "results": str(res), "iou_type": "keypoints", "use_area": use,
         "sigmas": None} for use in (True, False)])
    assert [c[k] for k in STATS] == pytest.approx(area_ref, abs=1e-12)
    assert [forced[k] for k in STATS] == pytest.approx(box_ref, abs=1e-12)
    assert [by_schema[k] for k in STATS] == [forced[k] for k in STATS] != [c[k] for k in STATS]
    assert by_schema["oks_protocol"]["chosen_by"].startswith("the keypoint schema")
    assert [back[k] for k in STATS] == [c[k] for k in STATS]
    assert back["oks_protocol"] == {"choice": "area", "chosen_by": "--protocol",
                                    "annotations_by_area": c["oks_protocol"][
                                        "annotations_by_area"], "annotations_by_box": 0}


def test_the_model_path_scales_oks_as_the_results_path(tmp_path):
    """The oracle on CrowdPose shards: its coco_eval.json is pycocotools' with the box scale on
    its own coco_results.json, and --protocol area is a one-line error (no areas)."""
    folder = shared_data("crowdpose")
    ann = folder / "test_crowdpose.json"
    assert shg(["shards", "build", "--ann", str(ann), "--images", str(folder), "--split", "val",
                "--out", str(tmp_path / "shards"), "--crop-size", "128", "--quiet"]) == 0
    out = tmp_path / "oracle"
    assert shg(["eval", "--oracle", "--shards", str(tmp_path / "shards"), "--split", "val",
                "--coco-ann", str(ann), "--out", str(out)]) == 0
    c = json.loads((out / "coco_eval.json").read_text())
    results = json.loads((out / "coco_results.json").read_text())
    gt = json.loads(ann.read_text())
    assert [c[k] for k in STATS] == pycocotools_stats(gt, results, CROWDPOSE_SIGMAS, box053)
    assert c["oks_protocol"]["annotations_by_box"] == 5 and "AP_medium" in c
    assert "OKS scale: 0.53 x box width x height" in (out / "report.md").read_text()
    assert json.loads((out / "summary.json").read_text())["coco"]["AP"] == c["AP"]


def test_protocol_and_results_file_errors_are_one_line(tmp_path, capsys):
    folder = shared_data("crowdpose")
    ann = folder / "test_crowdpose.json"
    gt = json.loads(ann.read_text())
    good = perturbed(gt, 3, extra=False)  # 4 persons
    res = write(tmp_path / "good.json", good)

    def error(*args: str) -> str:
        capsys.readouterr()
        assert shg(["eval", "--out", str(tmp_path / "o"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        return err

    err = error("--results", str(res), "--ann", str(ann), "--protocol", "area")
    assert str(ann) in err and "annotation 127068 has no 'area'" in err and "bbox" in err
    schema = tmp_path / "s.toml"
    schema.write_text('protocol = "box"\n')
    err = error("--results", str(res), "--ann", str(ann), "--schema", str(schema))
    assert str(schema) in err and "auto, area, bbox" in err
    assert "missing.json: results file not found" in error(
        "--results", str(tmp_path / "missing.json"), "--ann", str(ann))
    (tmp_path / "broken.json").write_text("[{")
    assert "broken.json: not valid JSON" in error("--results", str(tmp_path / "broken.json"),
                                                  "--ann", str(ann))
    err = error("--results", str(write(tmp_path / "obj.json", {"a": 1})), "--ann", str(ann))
    assert "obj.json: not a COCO keypoint results file" in err
    cut = [{**r, "keypoints": r["keypoints"][:-3]} for r in good]
    err = error("--results", str(write(tmp_path / "cut.json", cut)), "--ann", str(ann))
    assert "none of its 4 results" in err and "39 keypoint values" in err and "42" in err
    assert "--ann" in error("--results", str(res))
    assert "--run" in error("--results", str(res), "--ann", str(ann), "--run", "x")
    # entries that cannot be scored are counted with their first case; the rest score as
    # the clean file does
    bad = good + [{"image_id": 5, "category_id": 1, "keypoints": good[0]["keypoints"],
                   "score": 0.9},
                  {**good[0], "category_id": 7}, {**good[0], "score": float("nan")},
                  {**good[0], "keypoints": [0.0] * 3}, "text", {"image_id": 106848}]
    noisy = score(write(tmp_path / "noisy.json", bad), ann, tmp_path / "noisy")
    clean = score(res, ann, tmp_path / "clean")
    assert [noisy[k] for k in STATS] == [clean[k] for k in STATS]
    assert noisy["results"]["skipped"] == {"unknown_image": 1, "other_category": 1,
                                           "malformed": 3, "keypoints_length": 1}
    assert "entry 4" in noisy["results"]["examples"]["unknown_image"]
    assert "| unknown_image | 1 |" in (tmp_path / "noisy" / "report.md").read_text()


def test_the_leaderboard_shows_crowdpose_ap_by_crowd_index(tmp_path):
    from shg.studies.leaderboard import variant_result, write_leaderboard

    run = tmp_path / "v"
    (run / "eval").mkdir(parents=True)
    (run / "eval" / "summary.json").write_text(json.dumps(
        {"pck": {"bbox": {"0.2": 0.8}}, "coco": {"AP": 0.6, "AP_easy": 0.7, "AP_medium": 0.6,
                                                 "AP_hard": 0.4}}))
    entry = {"name": "v", "overrides": [], "run": str(run)}
    board = write_leaderboard(tmp_path, [variant_result(entry, "finished", "", False)],
                              {"study": "s", "best_by_loss": False})
    row = board["variants"][0]
    assert (row["ap_easy"], row["ap_medium"], row["ap_hard"]) == (0.7, 0.6, 0.4)
    md = (tmp_path / "leaderboard.md").read_text()
    assert "| COCO AP | AP(E) | AP(M) | AP(H) | steps |" in md
    assert "| 0.800 | 0.600 | 0.700 | 0.600 | 0.400 | – |" in md
