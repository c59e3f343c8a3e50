import numpy as np
import pytest

from imaging.metrics import dice, hausdorff95, volume_difference


def test_dice_and_volume_on_known_boxes():
    a = np.zeros((10, 10, 10), bool)
    b = np.zeros_like(a)
    a[2:6, 2:6, 2:6] = True  # 64 voxels
    b[2:6, 2:6, 4:8] = True  # 64 voxels, 32 shared
    assert dice(a, b) == pytest.approx(0.5)
    assert dice(a, a) == 1.0
    assert volume_difference(a, b, spacing=(2, 1, 1)) == 0.0
    assert volume_difference(a, np.zeros_like(a), spacing=(2, 1, 1)) == pytest.approx(128.0)


def test_hausdorff_of_a_shifted_box_is_the_shift_in_mm():
    a = np.zeros((20, 20, 20), bool)
    a[5:12, 5:12, 5:12] = True
    b = np.roll(a, 3, axis=2)
    assert hausdorff95(a, a, spacing=(1, 1, 1)) == 0.0
    assert hausdorff95(a, b, spacing=(1, 1, 2.0)) == pytest.approx(6.0)


def test_shape_mismatch_is_named():
    with pytest.raises(ValueError, match="same shape"):
        dice(np.zeros((2, 2)), np.zeros((3, 3)))
