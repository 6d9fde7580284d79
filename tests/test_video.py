"""`shg predict` on videos and cameras: every frame predicted as the same frame saved as an image
would be, a drawn video at the source's rate and size, track ids, One-Euro smoothing, and
undecodable frames counted instead of a crash."""

import json

import numpy as np
import pytest

from shg.cli import main as shg

FRAMES, FPS, SIZE = 12, 10, (320, 240)
BROKEN = (5, 6)
BOX = "60,10,150,220"


def _frames(synth_root):
    from PIL import Image

    image = Image.open(sorted((synth_root / "val2017").glob("*.jpg"))[0]).convert("RGB")
    base = np.asarray(image.resize(SIZE))
    return [np.roll(base, 3 * i, axis=1) for i in range(FRAMES)]  # the scene pans right


@pytest.fixture(scope="module")
def clip(synth_root, tmp_path_factory):
    """An MJPG .avi whose frames BROKEN have their JPEG data overwritten (undecodable)."""
    import cv2

    folder = tmp_path_factory.mktemp("video")
    good = folder / "good.avi"
    writer = cv2.VideoWriter(str(good), cv2.VideoWriter_fourcc(*"MJPG"), FPS, SIZE)
    for frame in _frames(synth_root):
        writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    writer.release()
    data = bytearray(good.read_bytes())
    starts = [i for i in range(len(data) - 2) if data[i:i + 3] == b"\xff\xd8\xff"]
    assert len(starts) == FRAMES
    for k in BROKEN:
        begin, end = starts[k], starts[k + 1] - 300
        data[begin:end] = b"\x17" * (end - begin)
    broken = folder / "broken.avi"
    broken.write_bytes(bytes(data))
    return good, broken


def _read(path):
    import cv2

    cap = cv2.VideoCapture(str(path))
    frames = []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(frame)
    fps = cap.get(cv2.CAP_PROP_FPS)
    cap.release()
    return frames, fps


def test_every_decodable_frame_predicted_as_its_image(exported_model, clip, tmp_path, capsys):
    import cv2

    good, broken = clip
    out = tmp_path / "drawn.mp4"
    capsys.readouterr()
    assert shg(["predict", "--model", str(exported_model), str(broken), "--bbox", BOX, "--out",
                str(out)]) == 0
    printed = capsys.readouterr().out
    assert f"in {FRAMES} frames of {broken}" in printed and "2 undecodable frames" in printed
    results = json.loads(out.with_suffix(".json").read_text())
    assert sorted(r["frame"] for r in results) == [i for i in range(FRAMES) if i not in BROKEN]
    # the stream: a line per frame in order, the undecodable ones said; results.json is its
    # persons
    lines = [json.loads(line) for line in out.with_suffix(".jsonl").read_text().splitlines()]
    assert [line["frame"] for line in lines] == list(range(FRAMES))
    assert [i for i, line in enumerate(lines) if line.get("undecodable")] == list(BROKEN)
    assert lines[4]["time"] == pytest.approx(4 / FPS)
    assert results == [person for line in lines for person in line["persons"]]
    assert all(r["image_id"] == r["frame"] and r["bbox"] == [60.0, 10.0, 150.0, 220.0]
               for r in results)
    assert {r["track_id"] for r in results} == {1}  # one box, one person throughout
    drawn, fps = _read(out)
    # the source's rate, size and length (the undecodable frames repeat the last good one)
    assert len(drawn) == FRAMES and fps == pytest.approx(FPS)
    assert drawn[0].shape == (SIZE[1], SIZE[0], 3)
    assert np.abs(drawn[BROKEN[0]].astype(int) - drawn[BROKEN[0] - 1]).mean() < 3
    # a frame's keypoints are those of the same decoded frame predicted as an image
    frames, _ = _read(good)
    image = tmp_path / "frame3.png"
    cv2.imwrite(str(image), frames[3])
    assert shg(["predict", "--model", str(exported_model), str(image), "--bbox", BOX, "--out",
                str(tmp_path / "frame3-drawn.png")]) == 0
    alone = json.loads((tmp_path / "frame3-drawn.json").read_text())
    in_video = [r for r in results if r["frame"] == 3]
    assert [r["keypoints"] for r in alone] == [r["keypoints"] for r in in_video]


def test_smoothing_filters_each_track_from_its_first_frame(exported_model, clip, tmp_path):
    good, _ = clip
    runs = {}
    for name, extra in (("raw", []), ("smooth", ["--smooth", "--smooth-min-cutoff", "0.5"])):
        assert shg(["predict", "--model", str(exported_model), str(good), "--bbox", BOX,
                    "--out", str(tmp_path / name), *extra]) == 0
        runs[name] = {r["frame"]: np.array(r["keypoints"]).reshape(-1, 3)
                      for r in json.loads((tmp_path / name / "results.json").read_text())}
        assert (tmp_path / name / "good.mp4").is_file()
    raw, smooth = runs["raw"], runs["smooth"]
    np.testing.assert_allclose(smooth[0], raw[0], atol=1e-3)  # the filter starts at the data
    for f in range(FRAMES):
        np.testing.assert_allclose(smooth[f][:, 2], raw[f][:, 2])  # scores are not filtered
    # One-Euro is an exponential low-pass filter: each smoothed point lies between the previous
    # smoothed point and the new raw one (x^_t = a x_t + (1 - a) x^_{t-1}, 0 < a <= 1), so it
    # never overshoots and moves less; the results are rounded to 1e-3 px
    for f in range(1, FRAMES):
        prev, new, out = smooth[f - 1][:, :2], raw[f][:, :2], smooth[f][:, :2]
        assert np.all(out >= np.minimum(prev, new) - 2e-3), f
        assert np.all(out <= np.maximum(prev, new) + 2e-3), f
    # and it did filter: points left behind their raw position, less motion in all
    # (how much less depends on how the barely trained model's predictions jump, which
    # differs between bf16 and fp32 machines)
    assert sum(np.abs(smooth[f][:, :2] - raw[f][:, :2]).max() > 1 for f in range(FRAMES)) >= 3
    motion = lambda run: sum(np.abs(run[f][:, :2] - run[f - 1][:, :2]).sum()  # noqa: E731
                             for f in range(1, FRAMES))
    assert motion(smooth) < 0.95 * motion(raw)


def test_camera_source_with_max_frames_and_the_detector(exported_model, clip, tmp_path):
    """--camera takes an index or a URL (here the file's path, read the same way)."""
    good, _ = clip
    assert shg(["predict", "--model", str(exported_model), "--camera", str(good),
                "--max-frames", "4", "--whole-image", "--no-track", "--out",
                str(tmp_path / "cam")]) == 0
    results = json.loads((tmp_path / "cam" / "results.json").read_text())
    assert [r["frame"] for r in results] == [0, 1, 2, 3]
    assert all("track_id" not in r for r in results)
    assert len(_read(tmp_path / "cam" / "camera-good.mp4")[0]) == 4


def test_video_with_the_detector_tracks_its_boxes(exported_model, clip, detector_weights,
                                                  tmp_path):
    good, _ = clip
    assert shg(["predict", "--model", str(exported_model), str(good), "--max-frames", "3",
                "--detector", "ssdlite320_mobilenet_v3_large", "--detector-weights",
                str(detector_weights), "--detector-score", "0", "--max-persons", "2",
                "--oks-nms", "none", "--out", str(tmp_path / "det")]) == 0
    results = json.loads((tmp_path / "det" / "results.json").read_text())
    assert [sum(r["frame"] == f for r in results) for f in range(3)] == [2, 2, 2]
    for r in results:
        x, y, w, h = r["bbox"]
        assert w > 0 and h > 0 and x < SIZE[0] and y < SIZE[1]
    assert all(r["track_id"] >= 1 for r in results)


def test_unreadable_video_is_one_line(exported_model, tmp_path, capsys):
    bad = tmp_path / "clip.mp4"
    bad.write_text("not a video")
    capsys.readouterr()
    assert shg(["predict", "--model", str(exported_model), str(bad), "--whole-image"]) == 2
    assert f"{bad}: cannot open it as a video" in capsys.readouterr().err
    assert shg(["predict", "--model", str(exported_model), str(tmp_path / "none.mp4"),
                "--whole-image"]) == 2
    assert "video file not found" in capsys.readouterr().err

