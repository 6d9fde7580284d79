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
    """A steep ramp whose colour encodes position (3.2 grey levels per pixel in x, 4.25 in y;
    pixel i covers [i, i + 1), its centre carries the value): a crop pixel sampled through the
    affine has the colour of that image point within the two roundings to uint8 (~0.93 here);
    a crop misplaced by half an image pixel is off by more than 2."""
    w, h = 80, 60
    yy, xx = np.mgrid[0:h, 0:w]
    arr = np.stack([(xx + 0.5) * 255 / w, (yy + 0.5) * 255 / h, np.full_like(xx, 77.0)], -1)
    image = Image.fromarray(np.round(arr).astype(np.uint8))
    params = CropParams()
    worst = 0.0
    for bbox in [(10, 8, 15, 30), (62, 37, 20, 22), (0, 0, 79, 59), (30, 20, 10, 12)]:
        box = crop_box(bbox, w, h, params)
        crop = np.asarray(cut(image, box, params)).astype(float)
        affine = box.affine(params.size)
        for u in np.arange(0.5, 256, 7.0):
            for v in np.arange(0.5, 256, 7.0):
                x, y = to_image(np.array([u, v]), affine)
                if 1 <= x < w - 1 and 1 <= y < h - 1:  # away from the edges' clamping
                    worst = max(worst, abs(crop[int(v), int(u), 0] - x * 255 / w),
                                abs(crop[int(v), int(u), 1] - y * 255 / h))
    assert worst <= 1.2


def test_to_crop_and_to_image_are_inverse():
    box = crop_box((33.3, 12.1, 50.5, 70.2), 200, 150)
    pts = np.random.default_rng(0).uniform(0, 200, size=(17, 2))
    back = to_image(to_crop(pts, box, 256), box.affine(256))
    assert np.abs(back - pts).max() < 1e-9
