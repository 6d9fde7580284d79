import numpy as np
import pytest
import torch

from shards.codec import HeatmapCodec, flip_back
from shards.schema import COCO_PERSON

FLIP_INDEX = COCO_PERSON.flip_index


def decode_heatmaps(heatmaps, crop_size=256, refine="quarter", sigma=1.0):
    return HeatmapCodec(crop_size, sigma=sigma).decode(heatmaps, refine)
from shg.evaluation.pck import bbox_norm, epe, pck, pck_curve, torso_norm


def test_pck_hand_computed():
    gt = np.zeros((2, 3, 2))
    pred = np.zeros((2, 3, 2))
    pred[0, 0] = (3, 4)      # distance 5
    pred[0, 1] = (6, 8)      # distance 10
    pred[0, 2] = (0, 1)      # distance 1
    pred[1, 0] = (0, 9.99)   # distance 9.99
    pred[1, 1] = (0, 30)     # not visible: ignored
    visible = np.array([[1, 1, 1], [1, 0, 0]], bool)   # joint 2 visible once, joint 1 once
    norm = np.array([10.0, 10.0])
    r = pck(pred, gt, visible, norm, [0.5, 1.0])
    # threshold 0.5 -> 5 px, strictly below: joint0 {5: no, 9.99: no}, joint1 {10: no}, joint2 {1: yes}
    assert r.per_joint[0].tolist() == [0.0, 0.0, 1.0]
    # threshold 1.0 -> 10 px: joint0 {5 yes, 9.99 yes}, joint1 {10: no (strict)}, joint2 yes
    assert r.per_joint[1].tolist() == [1.0, 0.0, 1.0]
    assert r.mean.tolist() == pytest.approx([1 / 3, 2 / 3])
    assert r.micro.tolist() == pytest.approx([1 / 4, 3 / 4])
    assert r.count.tolist() == [2, 1, 1]


def test_pck_masks_zero_norm_and_never_visible_joint():
    gt = np.zeros((3, 2, 2))
    pred = np.ones((3, 2, 2))
    visible = np.array([[1, 0], [1, 0], [1, 0]], bool)  # joint 1 never visible
    norm = np.array([10.0, 0.0, -1.0])                   # two instances left out
    r = pck(pred, gt, visible, norm, [0.2])
    assert r.count.tolist() == [1, 0]
    assert r.per_joint[0, 0] == 1.0 and np.isnan(r.per_joint[0, 1])
    assert r.mean[0] == 1.0  # macro mean over joints with any valid instance
    t, curve, auc = pck_curve(pred, gt, visible, norm)
    # the one valid joint is sqrt(2) = 1.414 px off with norm 10: correct from t = 0.15 on
    # (0.01 apart); area = half of the 0.14-0.15 step + 0.35, over the range 0.5
    assert curve.tolist() == [0.0] * 15 + [1.0] * 36
    assert auc == pytest.approx((0.005 + 0.35) / 0.5)


def test_norms_and_epe():
    assert bbox_norm([[10, 30], [50, 20]]).tolist() == [30, 50]
    gt = np.zeros((1, 17, 2))
    vis = np.zeros((1, 17), bool)
    gt[0, 5], gt[0, 12] = (0, 0), (30, 40)  # left shoulder - right hip diagonal: 50
    vis[0, [5, 12]] = True
    torso = COCO_PERSON.torso()
    assert torso == (5, 6, 11, 12)
    assert torso_norm(gt, vis, torso)[0] == pytest.approx(50)
    assert np.isnan(torso_norm(gt, np.zeros((1, 17), bool), torso)[0])
    assert epe(np.ones((1, 2, 2)), np.zeros((1, 2, 2)), [[True, False]]) == pytest.approx(2 ** .5)


def test_decode_quarter_offset_and_cell_centres():
    hm = torch.zeros(1, 2, 64, 64)
    hm[0, 0, 10, 20] = 1.0
    hm[0, 0, 10, 21] = 0.5          # right neighbour higher: +0.25 cell in x
    hm[0, 1, 0, 63] = 1.0           # border: no shift
    coords, conf = decode_heatmaps(hm, 256)
    assert coords[0, 0].tolist() == pytest.approx([4 * (20 + 0.25 + 0.5), 4 * (10 + 0.5)])
    assert coords[0, 1].tolist() == pytest.approx([4 * 63.5, 4 * 0.5])
    assert conf[0].tolist() == [1.0, 1.0]


def test_flip_back_restores_a_symmetric_prediction():
    """A heatmap predicted on the mirrored image, flipped back, equals the original's
    prediction when the 'network' is mirror-equivariant (joint swap included)."""
    rng = torch.Generator().manual_seed(0)
    original = torch.rand(2, 17, 64, 64, generator=rng)
    # what an ideal network outputs on the flipped image: mirrored maps, left/right swapped
    on_flipped = original.flip(-1)[:, list(FLIP_INDEX)]
    assert torch.equal(flip_back(on_flipped, FLIP_INDEX), original)
    # one peak, by hand: left wrist (9) at column 10 of the flipped image is the right wrist
    # (10) at column 63 - 10 = 53 of the original
    peak = torch.zeros(1, 17, 64, 64)
    peak[0, 9, 20, 10] = 1.0
    back = flip_back(peak, FLIP_INDEX)
    assert back[0, 10, 20, 53] == 1.0 and back.sum() == 1.0


def test_dark_recovers_a_subpixel_gaussian_peak():
    ys, xs = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    true = [(20.3, 31.7), (40.8, 10.2), (5.5, 50.25)]
    hm = torch.stack([torch.exp(-((xs - x) ** 2 + (ys - y) ** 2) / 2) for x, y in true])[None]
    dark, _ = decode_heatmaps(hm, 64, refine="dark")
    quarter, _ = decode_heatmaps(hm, 64)
    expected = torch.tensor(true) + 0.5  # cell centres at j + 0.5 with crop == heatmap size
    err_dark = (dark[0] - expected).norm(dim=-1)
    err_quarter = (quarter[0] - expected).norm(dim=-1)
    assert (err_dark < 0.1).all(), err_dark
    assert err_dark.mean() < err_quarter.mean()
    with pytest.raises(ValueError):
        decode_heatmaps(hm, 64, refine="bogus")
