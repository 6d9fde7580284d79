import numpy as np
import pytest
from PIL import Image

from shards.crop import CropParams, crop_box, cut, to_crop, to_image


def test_square_enlarged_and_centred_when_inside():
    box = crop_box((100, 50, 40, 80), 640, 480)
    assert box.side == pytest.approx(88.0)               # longer side 80, +10 %
    assert box.x0 + box.side / 2 == pytest.approx(120)   # centred on the bbox
    assert box.y0 + box.side / 2 == pytest.approx(90)


def test_shifted_down_and_sideways_when_leaving_the_image():
    box = crop_box((0, 0, 50, 100), 640, 480)  # square would start above and left of the image
    assert box.y0 == 0 and box.x0 == 0
    box = crop_box((600, 400, 40, 80), 640, 480)  # would leave bottom/right
    assert box.x0 + box.side == pytest.approx(640) and box.y0 + box.side == pytest.approx(480)


def test_overhangs_only_when_larger_than_the_image():
    box = crop_box((10, 5, 300, 460), 640, 480)  # side 506 > height 480
    assert box.side == pytest.approx(506)
    assert box.y0 <= 0 and box.y0 + box.side >= 480  # covers the whole height, padded both sides
    assert 0 <= box.x0 <= 640 - box.side


def test_crop_pixels_match_image_pixels_through_the_affine():
    # A smooth image whose colour encodes position: sample crop pixels, map through the affine.
    w, h = 320, 240
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([xx * 255 / w, yy * 255 / h, np.full_like(xx, 77)], -1).astype(np.uint8)
    image = Image.fromarray(arr)
    params = CropParams()
    for bbox in [(40, 30, 60, 120), (250, 150, 80, 90), (0, 0, 319, 239)]:
        box = crop_box(bbox, w, h, params)
        crop = np.asarray(cut(image, box, params)).astype(float)
        affine = box.affine(params.size)
        for u, v in [(10.5, 20.5), (128.5, 128.5), (200.5, 60.5)]:
            x, y = to_image(np.array([u, v]), affine)
            if 0.5 <= x < w - 0.5 and 0.5 <= y < h - 0.5:
                assert crop[int(v), int(u), 0] == pytest.approx(x * 255 / w, abs=2.5)
                assert crop[int(v), int(u), 1] == pytest.approx(y * 255 / h, abs=2.5)


def test_to_crop_and_to_image_are_inverse():
    box = crop_box((33.3, 12.1, 50.5, 70.2), 200, 150)
    pts = np.random.default_rng(0).uniform(0, 200, size=(17, 2))
    back = to_image(to_crop(pts, box, 256), box.affine(256))
    assert np.abs(back - pts).max() < 1e-9
