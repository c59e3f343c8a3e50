"""IBSI-2 phase-1 reference response maps, regenerated through ``medflow filter``'s body and the presets.

Pass criterion (IBSI-2 reference data README): every voxel within 1% of the reference map's range.
"""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

from imaging.filter_spec import apply_filter
from medflow.filter_cli import PRESETS_DIR, load_filter_spec, run_filter
from storage.images import read_image

#: test id -> phantom (the parameters live in the preset YAML)
PHASE1 = {
    "1.a.1": "checkerboard",
    "1.a.2": "checkerboard",
    "1.a.3": "checkerboard",
    "1.a.4": "checkerboard",
    "1.b.1": "impulse",
    "2.a": "impulse",
    "2.b": "checkerboard",
    "2.c": "checkerboard",
}


@pytest.fixture(scope="module")
def ibsi2(shared_data: pathlib.Path) -> pathlib.Path:
    root = shared_data / "ibsi2_filter_phantoms"
    if not root.is_dir():
        pytest.skip("ibsi2_filter_phantoms not in shared data")
    return root


def _phantom(root: pathlib.Path, name: str) -> pathlib.Path:
    return root / "nifti" / name / "image" / f"{name}.nii.gz"


def _reference(root: pathlib.Path, test_id: str) -> np.ndarray:
    return read_image(root / "reference_response_maps" / f"{test_id.replace('.', '_')}-ValidCRM.nii").volume


def _max_error_fraction(result: np.ndarray, reference: np.ndarray) -> float:
    span = float(reference.max() - reference.min())
    return float(np.max(np.abs(result.astype(np.float64) - reference.astype(np.float64)))) / span


@pytest.mark.parametrize("test_id", sorted(PHASE1))
def test_phase1_reference_map_via_run_filter(
    ibsi2: pathlib.Path, tmp_path: pathlib.Path, test_id: str
) -> None:
    out = run_filter(
        _phantom(ibsi2, PHASE1[test_id]), PRESETS_DIR / f"{test_id}.yaml", tmp_path / "out.nii.gz"
    )
    result = read_image(out)
    reference = _reference(ibsi2, test_id)
    assert result.volume.shape == reference.shape
    assert result.volume.dtype == np.float32
    src = read_image(_phantom(ibsi2, PHASE1[test_id]))
    np.testing.assert_allclose(result.affine, src.affine)
    assert _max_error_fraction(result.volume, reference) <= 0.01


@pytest.mark.parametrize("test_id", ["1.a.2", "1.a.4", "2.b", "2.c"])
def test_phase1_reference_map_dask_chunks_cross_borders(
    ibsi2: pathlib.Path, tmp_path: pathlib.Path, test_id: str
) -> None:
    """The same maps computed as dask arrays whose chunks are smaller than the kernel radius."""
    out = run_filter(
        _phantom(ibsi2, PHASE1[test_id]),
        PRESETS_DIR / f"{test_id}.yaml",
        tmp_path / "o.nii",
        chunks=(9, 13, 16),
    )
    assert _max_error_fraction(read_image(out).volume, _reference(ibsi2, test_id)) <= 0.01


@pytest.mark.parametrize(
    ("test_id", "wrong"),
    [
        ("1.a.1", {"boundary": "nearest"}),
        ("1.a.4", {"boundary": "periodic"}),
        ("1.a.2", {"boundary": "zero"}),
        ("1.b.1", {"dimensions": "3D"}),
        ("2.a", {"sigma_mm": 2.5}),
        ("2.b", {"boundary": "zero"}),
        ("2.c", {"dimensions": "3D"}),
    ],
)
def test_phase1_criterion_rejects_wrong_parameters(ibsi2: pathlib.Path, test_id: str, wrong: dict) -> None:
    """The 1% criterion is discriminating: a wrong boundary / dimensionality / sigma fails it."""
    spec = load_filter_spec(PRESETS_DIR / f"{test_id}.yaml")
    bad = spec.model_copy(update=wrong)
    img = read_image(_phantom(ibsi2, PHASE1[test_id]))
    result = np.asarray(apply_filter(img.volume, bad, spacing=img.spacing))
    assert _max_error_fraction(result, _reference(ibsi2, test_id)) > 0.01


def test_2d_filters_act_in_plane_axes_1_2(ibsi2: pathlib.Path) -> None:
    """2.c filtered in another plane (axes 0/1 via a transpose) no longer matches: the plane matters."""
    spec = load_filter_spec(PRESETS_DIR / "2.c.yaml")
    img = read_image(_phantom(ibsi2, "checkerboard"))
    vol = np.ascontiguousarray(np.transpose(img.volume, (2, 0, 1)))
    other = np.transpose(np.asarray(apply_filter(vol, spec, spacing=img.spacing)), (1, 2, 0))
    assert _max_error_fraction(other, _reference(ibsi2, "2.c")) > 0.01


def test_every_preset_parses_and_names_its_test() -> None:
    presets = sorted(PRESETS_DIR.glob("*.yaml"))
    ids = {p.name.removesuffix(".yaml") for p in presets}
    assert set(PHASE1) <= ids
    for p in presets:
        spec = load_filter_spec(p)
        assert spec.name == p.name.removesuffix(".yaml")
