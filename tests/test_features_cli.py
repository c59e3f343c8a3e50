"""Presets, settings YAML, input checks and provenance of ``medflow.features_cli.run_features``."""

from __future__ import annotations

import concurrent.futures
import pathlib

import numpy as np
import pandas as pd
import pytest

from imaging.features import PRESETS, FeatureSettings, extract_features
from medflow.features_cli import (
    FeatureSettingsError,
    load_feature_settings,
    run_features,
    select_roi,
    settings_digest,
)
from storage.images import write_nifti


def test_preset_names() -> None:
    assert set(PRESETS) == {"ibsi-digital-phantom", "ibsi-config-a", "ibsi-config-b", "ibsi-config-c",
                            "ibsi-config-d", "ibsi-config-e"}


def test_presets_follow_the_ibsi_configuration_table() -> None:
    a, b, c, d, e = (PRESETS[f"ibsi-config-{x}"] for x in "abcde")
    assert a.new_spacing is None and a.resegmentation_range == (-500, 400)
    assert (a.discretisation, a.bin_width, a.texture_dims) == ("fbs", 25.0, ("2d", "2.5d"))
    assert (b.interpolation_dim, b.in_plane_spacing, b.interpolation, b.intensity_rounding) == \
        ("2d", (2.0, 2.0), "linear", True)
    assert (b.discretisation, b.bin_number, b.roi_partial_volume) == ("fbn", 32, 0.5)
    assert (c.new_spacing, c.resegmentation_range, c.bin_width) == ((2.0, 2.0, 2.0), (-1000, 400), 25.0)
    assert (c.ivh_discretisation, c.ivh_bin_width, c.texture_dims) == ("fbs", 2.5, ("3d",))
    assert (d.resegmentation_range, d.outlier_sigma, d.bin_number) == (None, 3.0, 32)
    assert (e.interpolation, e.roi_interpolation, e.outlier_sigma) == ("cubic", "linear", 3.0)
    assert (e.resegmentation_range, e.ivh_discretisation, e.ivh_bin_number) == ((-1000, 400), "fbn", 1000)
    for s in (a, b, c, d, e):
        assert (s.glcm_distance, s.ngtdm_distance, s.ngldm_distance, s.ngldm_coarseness) == (1, 1, 1, 0)


def test_settings_validation_messages() -> None:
    with pytest.raises(ValueError, match="bin_width"):
        FeatureSettings(discretisation="fbs")
    with pytest.raises(ValueError, match="bin_number"):
        FeatureSettings(discretisation="fbn")
    with pytest.raises(ValueError, match="lower bound exceeds"):
        FeatureSettings(bin_width=1.0, resegmentation_range=(10.0, 0.0))
    with pytest.raises(ValueError):
        FeatureSettings(bin_width=1.0, families=("stat", "glcm"))  # type: ignore[arg-type]


@pytest.fixture()
def toy_files(tmp_path: pathlib.Path) -> tuple[pathlib.Path, pathlib.Path]:
    rng = np.random.default_rng(0)
    vol = rng.integers(-100, 100, size=(6, 12, 12)).astype(np.int16)
    mask = np.zeros(vol.shape, dtype=np.uint8)
    mask[1:5, 3:9, 2:10] = 1
    mask[2:4, 5:7, 4:8] = 2
    affine = np.array([[0, 0, 0.8, 10.0], [0, 0.8, 0, -5.0], [2.5, 0, 0, 30.0], [0, 0, 0, 1.0]])
    write_nifti(tmp_path / "img.nii.gz", vol, affine)
    write_nifti(tmp_path / "mask.nii.gz", mask, affine)
    return tmp_path / "img.nii.gz", tmp_path / "mask.nii.gz"


def test_yaml_settings_with_a_preset_base(tmp_path: pathlib.Path) -> None:
    p = tmp_path / "s.yaml"
    p.write_text("preset: ibsi-config-c\nbin_width: 10\nfamilies: [stat, ih]\n")
    s = load_feature_settings(p)
    assert s.bin_width == 10.0 and s.families == ("stat", "ih") and s.new_spacing == (2.0, 2.0, 2.0)
    p.write_text("discretisation: fbn\n")
    with pytest.raises(FeatureSettingsError, match="bin_number"):
        load_feature_settings(p)
    p.write_text("bin_width: -1\n")
    with pytest.raises(FeatureSettingsError, match="field 'bin_width'"):
        load_feature_settings(p)
    p.write_text("preset: nope\n")
    with pytest.raises(FeatureSettingsError, match="unknown preset"):
        load_feature_settings(p)
    p.write_text("- a\n- b\n")
    with pytest.raises(FeatureSettingsError, match="mapping"):
        load_feature_settings(p)


def test_run_features_with_yaml_and_label(toy_files: tuple[pathlib.Path, pathlib.Path],
                                         tmp_path: pathlib.Path) -> None:
    img, mask = toy_files
    settings = tmp_path / "s.yaml"
    settings.write_text("bin_width: 10\nresegmentation_range: [-100, null]\nfamilies: [stat, ih, cm]\n"
                        "texture_dims: ['3d']\n")
    out = tmp_path / "out" / "f.csv"
    table = run_features(img, mask, preset=None, settings_file=settings, roi="2", out=out)
    written = pd.read_csv(out, keep_default_na=False)
    assert len(written) == len(table) and set(written["family"]) == {"stat", "ih", "cm"}
    assert (written["roi"].astype(str) == "2").all() and (written["settings_name"] == "s.yaml").all()
    # label 2 is a 2 x 2 x 4 block
    vox = written.set_index("feature")["value"]
    assert float(vox["stat.mean"]) == pytest.approx(
        float(np.mean(_read_block(img, mask, 2))), rel=1e-12)
    assert written["settings_digest"].iloc[0] == settings_digest(load_feature_settings(settings))


def _read_block(img: pathlib.Path, mask: pathlib.Path, label: int) -> np.ndarray:
    from storage.images import read_image

    return read_image(img).volume[read_image(mask).volume == label]


def test_run_features_errors(toy_files: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path) -> None:
    img, mask = toy_files
    out = tmp_path / "f.csv"
    with pytest.raises(ValueError, match="exactly one"):
        run_features(img, mask, preset=None, settings_file=None, roi="1", out=out)
    with pytest.raises(ValueError, match="exactly one"):
        run_features(img, mask, preset="ibsi-config-a", settings_file=tmp_path / "x.yaml", roi="1", out=out)
    with pytest.raises(ValueError, match="unknown preset"):
        run_features(img, mask, preset="ibsi-config-z", settings_file=None, roi="1", out=out)
    with pytest.raises(ValueError, match="2 labels"):
        run_features(img, mask, preset="ibsi-config-a", settings_file=None, roi=None, out=out)
    with pytest.raises(ValueError, match="not a label value"):
        run_features(img, mask, preset="ibsi-config-a", settings_file=None, roi="GTV", out=out)
    other = tmp_path / "small.nii.gz"
    write_nifti(other, np.ones((6, 12, 11), dtype=np.uint8), np.eye(4))
    with pytest.raises(ValueError, match=r"\(6, 12, 12\).*\(6, 12, 11\)"):
        run_features(img, other, preset="ibsi-config-a", settings_file=None, roi=None, out=out)
    moved = tmp_path / "moved.nii.gz"
    write_nifti(moved, np.ones((6, 12, 12), dtype=np.uint8), np.eye(4))
    with pytest.raises(ValueError, match="different geometry"):
        run_features(img, moved, preset="ibsi-config-a", settings_file=None, roi=None, out=out)
    assert not out.exists()


def test_select_roi() -> None:
    m = np.array([[[0, 1, 2, 2]]])
    np.testing.assert_array_equal(select_roi(m, "2"), [[[False, False, True, True]]])
    with pytest.raises(ValueError, match="empty"):
        select_roi(m, "3")


def test_reader_hook(toy_files: tuple[pathlib.Path, pathlib.Path], tmp_path: pathlib.Path) -> None:
    from storage.images import read_image

    seen: list[pathlib.Path] = []

    def reader(path: pathlib.Path):
        seen.append(path)
        return read_image(path)

    img, mask = toy_files
    run_features(img, mask, preset="ibsi-config-a", settings_file=None, roi="1", out=tmp_path / "f.csv",
                 reader=reader)
    assert seen == [img, mask]


def test_every_preset_runs_and_threads_agree() -> None:
    """All presets run on a synthetic CT-like ROI; threaded extraction gives the same table."""
    rng = np.random.default_rng(5)
    g = np.mgrid[0:14, 0:30, 0:30].astype(float)
    r2 = ((g[0] - 7) * 2.5) ** 2 + ((g[1] - 15) * 0.9) ** 2 + ((g[2] - 14) * 0.9) ** 2
    vol = np.where(r2 < 100, 40 + 30 * rng.normal(size=r2.shape), -800 + 50 * rng.normal(size=r2.shape))
    vol = np.round(vol)
    mask = r2 < 110
    sp = (2.5, 0.9, 0.9)
    tables = {name: extract_features(vol, mask, spacing=sp, settings=s) for name, s in PRESETS.items()}
    for name, t in tables.items():
        assert t["value"].notna().all(), name
        assert t["ibsi_code"].str.len().gt(0).sum() >= len(t) - 1, name
    c = tables["ibsi-config-c"]
    assert set(c["aggregation"]) == {"", "3d_avg", "3d_vmrg", "3d"}
    a = tables["ibsi-config-a"]
    assert set(a["aggregation"]) == {"", "2d_avg", "2d_smrg", "2.5d_dmrg", "2.5d_vmrg", "2d", "2.5d"}
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        results = list(pool.map(lambda s: extract_features(vol, mask, spacing=sp, settings=s),
                                [PRESETS["ibsi-config-c"], PRESETS["ibsi-config-e"]] * 2))
    pd.testing.assert_frame_equal(results[0], tables["ibsi-config-c"])
    pd.testing.assert_frame_equal(results[3], tables["ibsi-config-e"])


def test_interpolated_roi_is_on_the_full_image_grid() -> None:
    """Cropping before interpolation must not move the grid: features equal those computed on the
    whole interpolated image (linear interpolation is local, so the crop margin makes them identical)."""
    from imaging.features.preprocess import interpolate_mask, interpolate_volume

    rng = np.random.default_rng(9)
    vol = np.round(rng.normal(size=(9, 23, 21)) * 50)
    mask = np.zeros(vol.shape, dtype=bool)
    mask[3:7, 8:15, 6:13] = True
    s = FeatureSettings(new_spacing=(1.5, 1.5, 1.5), interpolation="linear", roi_interpolation="linear",
                        intensity_rounding=True, bin_width=25.0, families=("stat", "morph", "loc"),
                        texture_dims=("3d",))
    sp = (2.0, 1.1, 1.3)
    got = extract_features(vol, mask, spacing=sp, settings=s).set_index("feature")["value"]
    full = np.round(interpolate_volume(vol, spacing=sp, new_spacing=(1.5, 1.5, 1.5), method="linear"))
    fmask = interpolate_mask(mask, spacing=sp, new_spacing=(1.5, 1.5, 1.5), method="linear")
    ref = extract_features(full, fmask, spacing=(1.5, 1.5, 1.5),
                           settings=s.model_copy(update={"new_spacing": None})).set_index("feature")["value"]
    pd.testing.assert_series_equal(got, ref, rtol=1e-10)


@pytest.mark.parametrize("shape", ["voxel", "line", "slice", "constant"])
def test_degenerate_rois_do_not_crash(shape: str) -> None:
    """Tiny or flat ROIs give NaN for undefined features (no pairs, zero axes, zero variance), never
    an exception or a warning."""
    import warnings

    rng = np.random.default_rng(0)
    vol = np.round(rng.normal(size=(5, 9, 9)) * 100)
    mask = np.zeros(vol.shape, dtype=bool)
    if shape == "voxel":
        mask[2, 4, 4] = True
    elif shape == "line":
        mask[2, 4, 1:8] = True
    elif shape == "slice":
        mask[2, 2:7, 2:7] = True
    else:
        mask[1:4, 2:7, 2:7] = True
        vol[mask] = 5.0
    for name in ("ibsi-config-a", "ibsi-config-c", "ibsi-config-d"):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            table = extract_features(vol, mask, spacing=(2.0, 1.0, 1.0), settings=PRESETS[name])
        values = table.set_index(["feature", "aggregation"])["value"]
        if name == "ibsi-config-a":  # no interpolation: the ROI is the mask itself
            assert values[("stat.mean", "")] == pytest.approx(float(vol[mask].mean()))
        if shape == "voxel" and name == "ibsi-config-a":
            assert np.isnan(values[("morph.moran.i", "")])
        if shape == "constant":
            assert values[("stat.var", "")] == 0.0 and np.isnan(values[("morph.moran.i", "")])
