"""Person identity across frames (IoU tracker) and One-Euro smoothing, on hand-built inputs."""

import numpy as np

from shg.inference.tracking import IoUTracker, OneEuro, iou_matrix


def test_iou_matrix_on_hand_computed_boxes():
    a = np.array([[0, 0, 10, 10], [100, 100, 4, 4]], dtype=float)
    b = np.array([[5, 0, 10, 10], [0, 0, 10, 10], [50, 50, 1, 1]], dtype=float)
    expected = np.array([[50 / 150, 1.0, 0.0], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(iou_matrix(a, b), expected, atol=1e-12)
    assert iou_matrix(a, np.zeros((0, 4))).shape == (2, 0)


def test_two_people_keep_their_ids_whatever_the_order_of_the_boxes():
    tracker = IoUTracker(min_iou=0.3, max_age=2)
    left, right = [0.0, 0.0, 20.0, 40.0], [100.0, 0.0, 20.0, 40.0]
    first = tracker.update(0, [left, right])
    assert first == [1, 2]
    # both move 3 px right; the detector lists them the other way round
    moved = lambda b, dx: [b[0] + dx, *b[1:]]  # noqa: E731
    assert tracker.update(1, [moved(right, 3), moved(left, 3)]) == [2, 1]
    # one missing for a frame: still alive (max_age 2), found again under its id
    assert tracker.update(2, [moved(left, 6)]) == [1]
    assert tracker.update(3, [moved(left, 9), moved(right, 9)]) == [1, 2]
    # a box overlapping nobody enough is a new person
    assert tracker.update(4, [[300.0, 0.0, 20.0, 40.0]]) == [3]


def test_a_track_unseen_longer_than_max_age_is_not_resumed():
    tracker = IoUTracker(min_iou=0.3, max_age=2)
    box = [0.0, 0.0, 20.0, 20.0]
    assert tracker.update(0, [box]) == [1]
    assert tracker.update(3, [box]) == [2]  # 3 frames unseen > max_age
    assert tracker.update(4, [box]) == [2]


def test_one_to_one_matching_maximises_the_total_iou():
    """Greedy matching would give the first box the track it overlaps most and leave the
    second a new id; the assignment keeps both."""
    tracker = IoUTracker(min_iou=0.2)
    tracker.update(0, [[0.0, 0.0, 10.0, 10.0], [6.0, 0.0, 10.0, 10.0]])
    # box A overlaps track 1 by 0.43 and track 2 by 0.67; box B overlaps only track 2 (0.43)
    a, b = [4.0, 0.0, 10.0, 10.0], [10.0, 0.0, 10.0, 10.0]
    ious = iou_matrix(np.array([a, b]), np.array([[0, 0, 10, 10], [6, 0, 10, 10]], float))
    assert ious[0, 1] > ious[0, 0] > 0.2 and ious[1, 1] > 0.2 and ious[1, 0] == 0
    assert tracker.update(1, [a, b]) == [1, 2]


def test_one_euro_passes_a_constant_and_damps_jitter():
    f = OneEuro(min_cutoff=1.0, beta=0.0)
    still = [f(np.array([5.0, -2.0]), t / 30) for t in range(10)]
    np.testing.assert_allclose(still, [[5.0, -2.0]] * 10)
    rng = np.random.default_rng(0)
    noisy = 100.0 + rng.normal(0, 2.0, size=(300, 2))
    f = OneEuro(min_cutoff=1.0, beta=0.0)
    smooth = np.array([f(x, t / 30) for t, x in enumerate(noisy)])
    np.testing.assert_array_equal(smooth[0], noisy[0])  # the first sample is passed through
    assert smooth[50:].std(0).max() < 0.5 * noisy[50:].std(0).min()


def test_one_euro_lags_less_on_fast_motion_with_a_speed_coefficient():
    ramp = [np.array([10.0 * t]) for t in range(60)]  # 300 px/s at 30 frames/s

    def lag(beta):
        f = OneEuro(min_cutoff=1.0, beta=beta)
        out = [f(x, t / 30) for t, x in enumerate(ramp)]
        return float(ramp[-1][0] - out[-1][0])

    still, adaptive = lag(0.0), lag(0.05)
    assert still > 5.0  # a plain low-pass filter trails the moving point
    assert 0 <= adaptive < 0.5 * still
