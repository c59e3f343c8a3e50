"""FilterSpec validation, apply_filter dispatch and the ``medflow filter`` body (run_filter)."""

from __future__ import annotations

import math
import pathlib

import numpy as np
import pytest
from pydantic import ValidationError

from imaging.filter_spec import FilterSpec, apply_filter
from imaging.filters import gabor_filter, laplacian_of_gaussian, laws_filter, mean_filter, wavelet_filter
from medflow.filter_cli import FilterSpecError, load_filter_spec, run_filter, slab_chunks
from storage.images import read_image, write_nifti

VOL = np.random.default_rng(5).normal(size=(9, 10, 11))
SP = (2.0, 1.0, 1.0)


def test_apply_filter_dispatches_to_each_filter() -> None:
    cases = [
        (
            {"filter_type": "mean", "support_voxels": 3, "boundary": "zero"},
            mean_filter(VOL, support_voxels=3, boundary="zero"),
        ),
        (
            {"filter_type": "log", "sigma_mm": 2.0, "boundary": "nearest", "dimensions": "2D"},
            laplacian_of_gaussian(
                VOL, spacing=SP, sigma_mm=2.0, truncate=4.0, boundary="nearest", dimensions="2D"
            ),
        ),
        (
            {
                "filter_type": "laws",
                "laws_kernels": "l5e5e5",
                "rotation_invariance": True,
                "pooling": "max",
                "energy_distance": 2,
            },
            laws_filter(
                VOL,
                kernels="L5E5E5",
                boundary="mirror",
                rotation_invariance=True,
                pooling="max",
                energy_distance=2,
            ),
        ),
        (
            {
                "filter_type": "gabor",
                "sigma_mm": 2.0,
                "gabor_lambda_mm": 3.0,
                "gabor_gamma": 0.5,
                "gabor_theta": "pi/3",
                "dimensions": "2D",
                "truncate": 2.0,
                "response": "real",
            },
            gabor_filter(
                VOL,
                spacing=SP,
                sigma_mm=2.0,
                lambda_mm=3.0,
                gamma=0.5,
                theta=math.pi / 3,
                truncate=2.0,
                boundary="mirror",
                response="real",
            ),
        ),
        (
            {
                "filter_type": "wavelet",
                "wavelet": "db2",
                "subband": "lhl",
                "level": 2,
                "boundary": "periodic",
            },
            wavelet_filter(VOL, wavelet="db2", subband="LHL", level=2, boundary="periodic"),
        ),
    ]
    for data, expected in cases:
        spec = FilterSpec.model_validate(data)
        got = apply_filter(VOL, spec, spacing=SP)
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected)


def test_angles_accept_multiples_of_pi() -> None:
    base = {
        "filter_type": "gabor",
        "sigma_mm": 1.0,
        "gabor_lambda_mm": 2.0,
        "gabor_gamma": 1.0,
        "dimensions": "2D",
    }
    assert FilterSpec(**base, gabor_theta="5*pi/4").gabor_theta == pytest.approx(5 * math.pi / 4)
    assert FilterSpec(**base, gabor_theta="-pi").gabor_theta == pytest.approx(-math.pi)
    assert FilterSpec(**base, gabor_theta=0.5).gabor_theta == 0.5
    with pytest.raises(ValidationError, match="gabor_theta"):
        FilterSpec(**base, gabor_theta="quarter")


@pytest.mark.parametrize(
    ("data", "word"),
    [
        ({"filter_type": "median"}, "filter_type"),
        ({"filter_type": "mean"}, "support_voxels"),
        ({"filter_type": "mean", "support_voxels": 4}, "support_voxels"),
        ({"filter_type": "mean", "support_voxels": 3, "sigma_mm": 1.0}, "sigma_mm"),
        ({"filter_type": "mean", "support_voxels": 3, "boundary": "reflect"}, "boundary"),
        ({"filter_type": "mean", "support_voxels": 3, "colour": "red"}, "colour"),
        ({"filter_type": "log", "sigma_mm": -1.0}, "sigma_mm"),
        ({"filter_type": "log", "sigma_mm": 1.0, "truncate": 0}, "truncate"),
        ({"filter_type": "log", "sigma_mm": 1.0, "pooling": "max"}, "pooling"),
        ({"filter_type": "laws", "laws_kernels": "L5Q5E5"}, "laws_kernels"),
        ({"filter_type": "laws", "laws_kernels": "L5E5", "dimensions": "3D"}, "dimensions"),
        ({"filter_type": "laws", "laws_kernels": "L5E5E5", "rotation_invariance": True}, "pooling"),
        ({"filter_type": "laws", "laws_kernels": "L5E5E5", "response": "energy"}, "energy_distance"),
        ({"filter_type": "laws", "laws_kernels": "L5E5E5", "response": "modulus"}, "response"),
        (
            {"filter_type": "gabor", "sigma_mm": 1.0, "gabor_lambda_mm": 2.0, "gabor_gamma": 1.0},
            "gabor_theta",
        ),
        (
            {
                "filter_type": "gabor",
                "sigma_mm": 1.0,
                "gabor_lambda_mm": 2.0,
                "gabor_gamma": 1.0,
                "gabor_theta": 0,
                "dimensions": "2D",
                "rotation_invariance": True,
                "pooling": "average",
            },
            "gabor_theta_step",
        ),
        (
            {
                "filter_type": "gabor",
                "sigma_mm": 1.0,
                "gabor_lambda_mm": 2.0,
                "gabor_gamma": 1.0,
                "gabor_theta": 0,
            },
            "pooling",
        ),
        ({"filter_type": "wavelet", "wavelet": "db99", "subband": "LLL"}, "wavelet"),
        ({"filter_type": "wavelet", "wavelet": "db2", "subband": "LL"}, "subband"),
        ({"filter_type": "wavelet", "wavelet": "db2", "subband": "LLL", "level": 0}, "level"),
    ],
)
def test_spec_errors_name_the_field(data: dict, word: str) -> None:
    with pytest.raises(ValidationError, match=word):
        FilterSpec.model_validate(data)


def test_apply_filter_rejects_non_spec() -> None:
    with pytest.raises(TypeError, match="spec"):
        apply_filter(VOL, {"filter_type": "mean"}, spacing=SP)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------------------
# run_filter (body of `medflow filter`)
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture()
def image(tmp_path: pathlib.Path) -> pathlib.Path:
    affine = np.array([[0.0, 0.0, 1.0, -10.0], [0.0, 1.0, 0.0, 5.0], [2.0, 0.0, 0.0, 3.0], [0, 0, 0, 1.0]])
    path = tmp_path / "img.nii.gz"
    write_nifti(path, (VOL * 100).astype(np.int16), affine)
    return path


def _yaml(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    p = tmp_path / "f.yaml"
    p.write_text(text)
    return p


def test_run_filter_writes_response_with_input_geometry(image: pathlib.Path, tmp_path: pathlib.Path) -> None:
    spec_path = _yaml(tmp_path, "filter_type: log\nsigma_mm: 2.0\nboundary: mirror\n")
    out = run_filter(image, spec_path, tmp_path / "sub" / "resp.nii.gz")
    res, src = read_image(out), read_image(image)
    np.testing.assert_allclose(res.affine, src.affine)
    assert res.spacing == pytest.approx(src.spacing) and res.volume.dtype == np.float32
    expected = laplacian_of_gaussian(
        src.volume, spacing=src.spacing, sigma_mm=2.0, truncate=4.0, boundary="mirror"
    )
    np.testing.assert_allclose(res.volume, expected, rtol=1e-6, atol=1e-4)
    # dask path with chunks crossing borders gives the same map
    out2 = run_filter(image, spec_path, tmp_path / "resp2.nii", chunks=(3, 4, 5))
    np.testing.assert_allclose(read_image(out2).volume, res.volume, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("filter_type: mean\nsupport_voxels: 4\n", "support_voxels"),
        ("filter_type: log\nsigma: 2.0\n", "sigma"),
        ("filter_type: log\nsigma_mm: [1, 2\n", "not valid YAML"),
        ("- mean\n", "mapping"),
    ],
)
def test_run_filter_reports_bad_yaml_field(
    image: pathlib.Path, tmp_path: pathlib.Path, text: str, word: str
) -> None:
    with pytest.raises(FilterSpecError, match=word) as info:
        run_filter(image, _yaml(tmp_path, text), tmp_path / "o.nii.gz")
    assert "f.yaml" in str(info.value)
    assert not (tmp_path / "o.nii.gz").exists()


def test_run_filter_argument_errors(image: pathlib.Path, tmp_path: pathlib.Path) -> None:
    spec_path = _yaml(tmp_path, "filter_type: mean\nsupport_voxels: 3\n")
    with pytest.raises(ValueError, match="out"):
        run_filter(image, spec_path, tmp_path / "o.png")
    with pytest.raises(FileNotFoundError, match="filter YAML"):
        load_filter_spec(tmp_path / "missing.yaml")


def test_slab_chunks() -> None:
    assert slab_chunks((300, 512, 512)) == (16, 512, 512)
    assert slab_chunks((2, 4, 4)) == (2, 4, 4)
    assert slab_chunks((10, 5000, 5000)) == (1, 5000, 5000)


def test_docs_show_every_preset_verbatim() -> None:
    """docs/filters.md carries one YAML example per IBSI-2 phase-1 test, identical to the shipped preset."""
    from medflow.filter_cli import PRESETS_DIR

    docs = (pathlib.Path(__file__).resolve().parents[1] / "docs" / "filters.md").read_text()
    presets = sorted(PRESETS_DIR.glob("*.yaml"))
    assert len(presets) >= 8
    for p in presets:
        assert f"### {p.stem}\n\n```yaml\n{p.read_text().rstrip()}\n```" in docs, p.name
