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


def test_region_growing_from_a_seed_recovers_a_sphere_and_watershed_splits_touching_spheres():
    from imaging.autoseg import grow_from_seeds, split_touching_objects

    z, y, x = np.mgrid[:40, :40, :60]
    a = (z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 8**2
    b = (z - 20) ** 2 + (y - 20) ** 2 + (x - 34) ** 2 <= 8**2  # touches a
    rng = np.random.default_rng(0)
    vol = np.where(a, 100.0, 0.0) + rng.normal(0, 2, a.shape)
    grown = grow_from_seeds(vol, np.array([[20, 20, 20]]), k=3.0)
    assert dice(grown, a) > 0.97
    labels, n = split_touching_objects(a | b, spacing=(1, 1, 1), min_distance_mm=8.0)
    assert n == 2
    assert dice(labels == labels[20, 20, 20], a) > 0.9 and dice(labels == labels[20, 20, 34], b) > 0.9
    with pytest.raises(ValueError, match="inside the volume"):
        grow_from_seeds(vol, np.array([[50, 0, 0]]))


def test_auto_segment_labels_out_of_core_above_the_memory_budget():
    import dask.array as da

    from imaging.autoseg import auto_segment

    rng = np.random.default_rng(3)
    vol = rng.normal(0, 1, (30, 40, 40)).astype(np.float32)
    vol[5:12, 5:15, 5:15] += 10
    vol[18:26, 20:35, 20:30] += 10
    lazy = da.from_array(vol, chunks=(8, 20, 20))
    in_core, comps_a = auto_segment(lazy, spacing=(1, 1, 1), modality="CT", log_enhancement=False, min_size=10)
    chunked, comps_b = auto_segment(lazy, spacing=(1, 1, 1), modality="CT", log_enhancement=False, min_size=10,
                                    memory_budget_bytes=1024)
    np.testing.assert_array_equal(in_core, chunked)
    assert comps_a == comps_b and len(comps_a) == 2
