"""`shg predict` streams its results (shg/inference/stream.py): a killed run keeps every line
it wrote, results.json is assembled from the stream, and a run's memory does not grow with the
number of frames or images it predicts."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """An untrained 1-stack, 8-feature SHG on 64 px crops: these tests are about the stream,
    not the poses, and it keeps them fast."""
    import torch

    from shg.models import StackedHourglass
    from shg.weights import save_weights

    torch.manual_seed(0)
    model = StackedHourglass(1, 8, 17)
    path = tmp_path_factory.mktemp("tiny") / "tiny.safetensors"
    save_weights(path, model.state_dict(), {"model": model.config(), "mean_rgb": [0, 0, 0],
                                            "crop_size": 64})
    return path


def _clip(path, frames: int, size=(48, 36), fps: float = 25.0):
    """A small MJPG .avi of `frames` frames: a bright square moving over noise."""
    import cv2

    rng = np.random.default_rng(0)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, size)
    for i in range(frames):
        frame = rng.integers(0, 80, (size[1], size[0], 3), dtype=np.uint8)
        x = i % (size[0] - 12)
        frame[10:22, x:x + 12] = 230
        writer.write(frame)
    writer.release()
    return path


def test_a_killed_run_keeps_every_line_it_wrote(tiny_model, tmp_path):
    from shg.inference.stream import assemble_results, read_lines

    clip = _clip(tmp_path / "long.avi", 3000)
    out = tmp_path / "out"
    stream = out / "results.jsonl"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "shg.cli", "predict", "--model",
                             str(tiny_model), str(clip), "--whole-image", "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            if stream.is_file() and stream.read_bytes().count(b"\n") >= 5:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        proc.kill()  # SIGKILL: no handler, no clean-up
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stderr.close()
    assert proc.returncode == -9
    text = stream.read_text()
    assert text.endswith("\n")  # every line complete
    lines = [json.loads(line) for line in text.splitlines()]
    assert 5 <= len(lines) < 3000
    assert [line["frame"] for line in lines] == list(range(len(lines)))
    for line in lines:
        (person,) = line["persons"]
        assert person["frame"] == line["frame"] and len(person["keypoints"]) == 17 * 3
        assert person["bbox"] == [0.0, 0.0, 48.0, 36.0]
    assert not (out / "results.json").exists()  # assembled at the end, which never came
    # the killed run's stream still makes the COCO results file
    assert assemble_results(stream, tmp_path / "results.json") == len(lines)
    assert json.loads((tmp_path / "results.json").read_text()) == \
        [line["persons"][0] for line in read_lines(stream)]


def test_a_line_cut_by_a_kill_is_left_out_and_the_array_is_json(tmp_path):
    from shg.inference.stream import JsonLines, assemble_results, read_lines

    path = tmp_path / "results.jsonl"
    with JsonLines(path) as stream:
        for i in range(3):
            stream.write({"image_id": i, "persons": [{"image_id": i, "score": i / 10}]})
    with open(path, "ab") as f:
        f.write(b'{"image_id": 3, "persons": [{"image_')  # what a kill mid-line would leave
    assert [line["image_id"] for line in read_lines(path)] == [0, 1, 2]
    assert assemble_results(path, tmp_path / "results.json") == 3
    results = json.loads((tmp_path / "results.json").read_text())
    assert results == [{"image_id": i, "score": i / 10} for i in range(3)]
    (tmp_path / "empty.jsonl").write_text("")
    assert assemble_results(tmp_path / "empty.jsonl", tmp_path / "none.json") == 0
    assert json.loads((tmp_path / "none.json").read_text()) == []


def _peak_bytes(run) -> int:
    """The most memory Python objects and numpy arrays held at once during `run()`."""
    import tracemalloc

    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("source,draw", [("video", True), ("folder", False), ("folder", True)])
def test_memory_does_not_grow_with_the_frames_or_images(tiny_model, synth_root, tmp_path,
                                                         source, draw):
    """The command's own path (the model loaded once, outside the measurement) on N and 4N
    frames or images: the peak stays within 10 %, and grows by less than 1 KB per extra frame
    or image, where keeping one person's result costs about 2 KB (as a COCO result; ~9 KB
    with the named keypoints the summary held before the stream)."""
    from shg.inference import Predictor
    from shg.inference.command import PredictOptions, predict_images, predict_video

    predictor = Predictor.from_weights(tiny_model, workers=0)
    inputs, n = {}, 32
    for count in (n, 4 * n):
        if source == "video":
            inputs[count] = _clip(tmp_path / f"clip{count}.avi", count, size=(32, 24))
        else:
            folder = tmp_path / f"images{count}"
            folder.mkdir()
            images = sorted((synth_root / "val2017").glob("*.jpg"))
            for i in range(count):
                (folder / f"{i:06d}.jpg").symlink_to(images[i % len(images)])
            inputs[count] = folder
    run = predict_video if source == "video" else predict_images

    def predict(count: int, name: str):
        opts = PredictOptions(str(tiny_model), str(inputs[count]), whole_image=True,
                              out=str(tmp_path / name), progress=False, draw=draw)
        return lambda: run(opts, predictor)

    predict(n, "warm-up")()  # first-use allocations (codecs, caches) out of the way
    small, large = _peak_bytes(predict(n, "small")), _peak_bytes(predict(4 * n, "large"))
    assert large <= 1.1 * small and large - small < 3 * n * 1024, (small, large)
    lines = (tmp_path / "large" / "results.jsonl").read_text().splitlines()
    results = json.loads((tmp_path / "large" / "results.json").read_text())
    assert len(lines) == len(results) == 4 * n
