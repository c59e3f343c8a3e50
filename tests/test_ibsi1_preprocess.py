"""IBSI-1 image-processing chain against hand-computed values (manual chapter 2)."""

from __future__ import annotations

import numpy as np
import pytest

from imaging.features.intensity import ivh_curve, ivh_features
from imaging.features.preprocess import (
    discretise,
    discretise_ivh,
    interpolate_mask,
    interpolate_volume,
    interpolation_grid,
    resegment,
    resegmentation_bounds,
)

# ------------------------------------------------------------------ interpolation grid (3WE3, 026Q, QCY4)


def test_grid_of_the_manuals_example() -> None:
    """4 voxels of 3 mm to 2 mm: 6 points, origin (4 - 1 - 2/3 * 5) / 2 = -1/6, step 2/3."""
    g = interpolation_grid((4, 4, 4), spacing=(3.0, 3.0, 3.0), new_spacing=(2.0, 2.0, 2.0))
    assert g.shape == (6, 6, 6)
    np.testing.assert_allclose(g.origin, [-1 / 6] * 3)
    np.testing.assert_allclose(g.step, [2 / 3] * 3)
    np.testing.assert_allclose(g.coordinates(0), [-1 / 6, 1 / 2, 7 / 6, 11 / 6, 5 / 2, 19 / 6])


def test_grid_centres_are_aligned() -> None:
    shape, sp, new = (7, 10, 5), (2.5, 0.8, 1.3), (2.0, 1.0, 3.0)
    g = interpolation_grid(shape, spacing=sp, new_spacing=new)
    assert g.shape == (9, 8, 3)  # ceil(17.5/2), ceil(8/1), ceil(6.5/3)
    centre_new = g.origin + g.step * (np.array(g.shape) - 1) / 2
    np.testing.assert_allclose(centre_new, (np.array(shape) - 1) / 2)
    np.testing.assert_allclose(g.step * np.array(sp), new)


def test_grid_dimension_is_not_inflated_by_rounding_noise() -> None:
    # 3 * 0.7 / 0.7 is 3.0000000000000004 in floating point: the grid must still have 3 points
    assert interpolation_grid((3, 3, 3), spacing=(0.7,) * 3, new_spacing=(0.7,) * 3).shape == (3, 3, 3)


def test_unchanged_spacing_is_the_identity() -> None:
    rng = np.random.default_rng(0)
    vol = rng.normal(size=(4, 5, 6))
    for method in ("nearest", "linear", "cubic"):
        out = interpolate_volume(vol, spacing=(1.0, 2.0, 3.0), new_spacing=(1.0, 2.0, 3.0), method=method)
        np.testing.assert_allclose(out, vol, atol=1e-12)


def test_linear_interpolation_of_a_ramp() -> None:
    """Trilinear interpolation reproduces a linear function at the new grid points; beyond the
    original grid the boundary intensity is repeated (padding with the boundary values)."""
    vol = np.broadcast_to(np.arange(4.0)[:, None, None] * 10.0, (4, 3, 3)).copy()
    out = interpolate_volume(vol, spacing=(3.0, 1.0, 1.0), new_spacing=(2.0, 1.0, 1.0), method="linear")
    expected = np.clip(np.array([-1 / 6, 1 / 2, 7 / 6, 11 / 6, 5 / 2, 19 / 6]), 0, 3) * 10.0
    np.testing.assert_allclose(out[:, 1, 1], expected, atol=1e-12)


def test_rounding_after_interpolation() -> None:
    # 1.3 * (0, 1/2, 7/6, 11/6, 5/2, 3) = 0, 0.65, 1.52, 2.38, 3.25, 3.9
    vol = np.broadcast_to(np.arange(4.0)[:, None, None] * 1.3, (4, 3, 3)).copy()
    out = interpolate_volume(vol, spacing=(3.0, 1.0, 1.0), new_spacing=(2.0, 1.0, 1.0), method="linear",
                             rounding=True)
    np.testing.assert_array_equal(out[:, 0, 0], [0.0, 1.0, 2.0, 2.0, 3.0, 4.0])


def test_two_d_interpolation_never_mixes_slices() -> None:
    rng = np.random.default_rng(1)
    vol = rng.normal(size=(3, 6, 6))
    vol[1] += 100.0
    for method in ("linear", "cubic"):
        out = interpolate_volume(vol, spacing=(5.0, 1.0, 1.0), new_spacing=(5.0, 2.0, 2.0), method=method)
        assert out.shape == (3, 3, 3)
        assert out[1].min() > 90 and out[0].max() < 10 and out[2].max() < 10


def test_cubic_spline_reproduces_a_quadratic_inside() -> None:
    x = np.arange(12.0)
    vol = np.broadcast_to((x * x)[:, None, None], (12, 4, 4)).copy()
    out = interpolate_volume(vol, spacing=(1.0, 1.0, 1.0), new_spacing=(0.5, 1.0, 1.0), method="cubic")
    g = interpolation_grid(vol.shape, spacing=(1.0, 1.0, 1.0), new_spacing=(0.5, 1.0, 1.0))
    c = g.coordinates(0)
    inside = (c > 3) & (c < 8)  # away from the boundary condition
    np.testing.assert_allclose(out[inside, 2, 2], c[inside] ** 2, rtol=2e-3)


# ------------------------------------------------------------------ ROI partial volume (E8H9)


def test_roi_partial_volume_threshold() -> None:
    """Mask [0, 1, 1, 0] at 3 mm -> 2 mm. The new points sit at -1/6, 1/2, 7/6, 11/6, 5/2, 19/6
    where trilinear interpolation gives 0, 0.5, 1, 1, 0.5, 0."""
    mask = np.zeros((4, 3, 3), dtype=bool)
    mask[1:3] = True
    got = interpolate_mask(mask, spacing=(3.0, 1.0, 1.0), new_spacing=(2.0, 1.0, 1.0), partial_volume=0.5)
    np.testing.assert_array_equal(got[:, 1, 1], [False, True, True, True, True, False])
    got = interpolate_mask(mask, spacing=(3.0, 1.0, 1.0), new_spacing=(2.0, 1.0, 1.0), partial_volume=0.6)
    np.testing.assert_array_equal(got[:, 1, 1], [False, False, True, True, False, False])
    with pytest.raises(ValueError, match="partial_volume"):
        interpolate_mask(mask, spacing=(3.0, 1.0, 1.0), new_spacing=(2.0, 1.0, 1.0), partial_volume=0.0)


# ------------------------------------------------------------------ re-segmentation (USB3, 7ACA)


def test_range_resegmentation_is_a_closed_interval() -> None:
    vol = np.array([-1000, -500, 0, 400, 401], dtype=float).reshape(1, 1, 5)
    roi = np.ones_like(vol, dtype=bool)
    got = resegment(vol, roi, intensity_range=(-500, 400))
    np.testing.assert_array_equal(got.ravel(), [False, True, True, True, False])
    got = resegment(vol, roi, intensity_range=(-500, None))
    np.testing.assert_array_equal(got.ravel(), [False, True, True, True, True])


def test_outlier_filtering_three_sigma() -> None:
    """Values 0 (x19) and 100: mean 5, population sd sqrt(475) = 21.79; 5 + 3 sd = 70.4 drops the 100."""
    vals = np.zeros(20)
    vals[-1] = 100.0
    lo, hi = resegmentation_bounds(vals, outlier_sigma=3.0)
    assert lo == pytest.approx(5 - 3 * np.sqrt(475))
    assert hi == pytest.approx(5 + 3 * np.sqrt(475))
    vol = vals.reshape(1, 4, 5)
    got = resegment(vol, np.ones_like(vol, dtype=bool), outlier_sigma=3.0)
    assert got.sum() == 19 and not got.ravel()[-1]


def test_combined_resegmentation_intersects_the_intervals() -> None:
    vals = np.array([0.0] * 19 + [100.0])
    lo, hi = resegmentation_bounds(vals, intensity_range=(-10.0, 200.0), outlier_sigma=3.0)
    assert lo == -10.0
    assert hi == pytest.approx(5 + 3 * np.sqrt(475))


def test_resegmentation_keeps_voxels_outside_the_roi_out() -> None:
    vol = np.arange(8.0).reshape(2, 2, 2)
    roi = np.zeros_like(vol, dtype=bool)
    roi[0] = True
    got = resegment(vol, roi, intensity_range=(None, None))
    np.testing.assert_array_equal(got, roi)


# ------------------------------------------------------------------ discretisation (K15C, Q3RU)


def test_fixed_bin_number() -> None:
    """N_g = 2 on [0, 4]: floor(2 x / 4) + 1 = 1, 1, 2, 2 and X_max -> N_g."""
    vol = np.array([0.0, 1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 5)
    d = discretise(vol, np.ones_like(vol, dtype=bool), method="fbn", bin_number=2)
    np.testing.assert_array_equal(d.levels.ravel(), [1, 1, 2, 2, 2])
    assert d.n_levels == 2


def test_fixed_bin_number_ignores_voxels_outside_the_mask() -> None:
    vol = np.array([-100.0, 0.0, 1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 6)
    roi = np.ones_like(vol, dtype=bool)
    roi[0, 0, 0] = False
    d = discretise(vol, roi, method="fbn", bin_number=4)
    np.testing.assert_array_equal(d.levels.ravel(), [0, 1, 2, 3, 4, 4])


def test_fixed_bin_size_starts_at_the_resegmentation_minimum() -> None:
    """w = 25 from -1000: -1000 -> 1, -976 -> 1, -975 -> 2, 0 -> 41, 24.9 -> 41, 25 -> 42."""
    vol = np.array([-1000.0, -976.0, -975.0, 0.0, 24.9, 25.0]).reshape(1, 1, 6)
    d = discretise(vol, np.ones_like(vol, dtype=bool), method="fbs", bin_width=25.0, minimum=-1000.0)
    np.testing.assert_array_equal(d.levels.ravel(), [1, 1, 2, 41, 41, 42])
    assert d.n_levels == 42


def test_fixed_bin_size_without_minimum_uses_the_roi_minimum() -> None:
    vol = np.array([3.0, 4.0, 5.5, 9.0]).reshape(1, 2, 2)
    d = discretise(vol, np.ones_like(vol, dtype=bool), method="fbs", bin_width=2.0)
    np.testing.assert_array_equal(d.levels.ravel(), [1, 1, 2, 4])
    with pytest.raises(ValueError, match="exceeds the lowest"):
        discretise(vol, np.ones_like(vol, dtype=bool), method="fbs", bin_width=2.0, minimum=5.0)


def test_discretisation_rejects_bad_arguments() -> None:
    vol = np.ones((1, 2, 2))
    roi = np.ones_like(vol, dtype=bool)
    with pytest.raises(ValueError, match="bin_number"):
        discretise(vol, roi, method="fbn")
    with pytest.raises(ValueError, match="bin_width"):
        discretise(vol, roi, method="fbs", bin_width=0.0)
    with pytest.raises(ValueError, match="method"):
        discretise(vol, roi, method="lloyd")
    with pytest.raises(ValueError, match="empty"):
        discretise(vol, ~roi, method="fbn", bin_number=2)


# ------------------------------------------------------------------ IVH discretisation


def test_ivh_curve_of_the_digital_phantom_table() -> None:
    """The manual's IVH table of the digital phantom: G = [1, 6], w = 1."""
    values = np.array([1] * 50 + [3] * 1 + [4] * 16 + [6] * 7, dtype=float)
    levels, gamma, nu = ivh_curve(discretise_ivh(values, method="none"))
    np.testing.assert_allclose(levels, [1, 2, 3, 4, 5, 6])
    np.testing.assert_allclose(gamma, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(np.round(nu, 3), [1.0, 0.324, 0.324, 0.311, 0.095, 0.095])
    f = ivh_features(discretise_ivh(values, method="none"))
    assert f["ivh.v10"] == pytest.approx(24 / 74) and f["ivh.v90"] == pytest.approx(7 / 74)
    assert (f["ivh.i10"], f["ivh.i90"]) == (5.0, 2.0)


def test_ivh_fixed_bin_size_uses_bin_centres_and_the_range() -> None:
    values = np.array([-1000.0, -999.0, -997.4, 399.0])
    data = discretise_ivh(values, method="fbs", bin_width=2.5, intensity_range=(-1000.0, 400.0))
    np.testing.assert_allclose(data.values, [-998.75, -998.75, -996.25, 398.75])
    assert (data.range_min, data.range_max, data.interval) == (-998.75, 398.75, 2.5)


def test_ivh_fixed_bin_number_is_on_levels() -> None:
    values = np.linspace(0.0, 1.0, 11)
    data = discretise_ivh(values, method="fbn", bin_number=1000)
    assert (data.range_min, data.range_max, data.interval) == (1.0, 1000.0, 1.0)
    assert data.values.min() == 1 and data.values.max() == 1000


def test_ivh_half_open_range_takes_the_maximum() -> None:
    data = discretise_ivh(np.array([-10.0, 5.0, 42.0]), method="none", intensity_range=(-500.0, None))
    assert (data.range_min, data.range_max) == (-500.0, 42.0)


def test_partial_volume_tie_is_included() -> None:
    """256 voxels of 0.78125 mm to 2 mm: grid point 12 sits at index 0.78 + 12 * 2.56 = 31.5 exactly,
    midway between ROI voxel 31 and background voxel 32, so its fraction is 0.5 >= delta. Floating
    point puts it a few ulp off; the point must still be in the ROI."""
    mask = np.zeros((1, 3, 256), dtype=bool)
    mask[:, :, :32] = True
    g = interpolation_grid(mask.shape, spacing=(1.0, 1.0, 0.78125), new_spacing=(1.0, 1.0, 2.0))
    assert g.coordinates(2)[12] == pytest.approx(31.5, abs=1e-12)
    got = interpolate_mask(mask, spacing=(1.0, 1.0, 0.78125), new_spacing=(1.0, 1.0, 2.0), partial_volume=0.5)
    assert got[0, 1, 12] and not got[0, 1, 13]
