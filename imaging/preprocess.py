"""Preprocessing: resampling, intensity normalisation, denoising, bias-field correction, fusion.

Every function accepts numpy arrays (computed on 2 threads with the compiled
kernels of :mod:`imaging.kernels`) and dask arrays (chunk-parallel: filters via
``map_overlap`` with ``boundary="none"`` -- each block applies the filter's own
border rule, which at the volume border is the global rule, and the overlap
``depth`` covers the filter's reach inside -- and resampling over the chunks of the
*output* grid, each block reading back the input region it needs plus a margin).
Dask results equal the numpy results; numpy results equal scipy.ndimage /
scikit-image (tests).

Resampling follows IBSI 1 (section 2.4, "interpolation"): the new grid keeps the
centre of the old one, ``n_new = ceil(n * spacing / new_spacing)`` per axis, and
output index ``j`` samples input coordinate
``(n - 1) / 2 + (j - (n_new - 1) / 2) * new_spacing / spacing``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import dask
import dask.array as da
import numpy as np
import scipy.ndimage as ndi

from imaging import kernels as K
from imaging import segment as S
from imaging.types import Interpolation
from imaging.voxelgrid import block_depth, sigma_voxels
from imaging.voxelgrid import spacing3 as _spacing3

__all__ = [
    "sigma_voxels",
    "ibsi_grid",
    "resample",
    "resample_mask",
    "resample_to_grid",
    "register_rigid",
    "normalise",
    "suv_factor",
    "gaussian",
    "median",
    "bilateral",
    "nl_means",
    "anisotropic_diffusion",
    "denoise",
    "bias_field_correction",
]

_ORDERS = {"nearest": 0, "linear": 1, "cubic": 3}


def _is_dask(x: Any) -> bool:
    return isinstance(x, da.Array)


def _as_volume(volume: Any, name: str = "volume") -> Any:
    if _is_dask(volume):
        vol = volume
    elif isinstance(volume, np.ndarray):
        vol = volume
    else:
        try:
            vol = np.asarray(volume)
        except Exception as exc:  # pragma: no cover - defensive
            raise TypeError(f"{name} must be a numpy or dask array, got {type(volume).__name__}") from exc
    if vol.ndim != 3:
        raise ValueError(f"{name} must be 3-D, got shape {tuple(vol.shape)!r}")
    if not (np.issubdtype(vol.dtype, np.number) or vol.dtype == np.bool_) or np.issubdtype(vol.dtype, np.complexfloating):
        raise TypeError(f"{name} must be real-valued, got dtype {vol.dtype}")
    return vol


def _order(interpolation: str) -> int:
    if interpolation not in _ORDERS:
        raise ValueError(f"interpolation must be one of {tuple(_ORDERS)}, got {interpolation!r}")
    return _ORDERS[interpolation]


# ---------------------------------------------------------------------------------------------
# Resampling
# ---------------------------------------------------------------------------------------------


def ibsi_grid(
    shape: Sequence[int], spacing: Sequence[float], new_spacing: Sequence[float]
) -> tuple[tuple[int, int, int], list[np.ndarray], np.ndarray]:
    """IBSI centre-aligned output grid.

    Returns
    -------
    new_shape : 3 ints
    coords : list of 3 float64 arrays
        Input index coordinate sampled by each output index, per axis.
    index_map : ndarray (4, 4)
        Homogeneous map from output indices to input indices (diagonal scale + shift);
        ``new_affine = affine @ index_map``.
    """
    sp = _spacing3(spacing)
    nsp = _spacing3(new_spacing, "new_spacing")
    new_shape = []
    coords = []
    index_map = np.eye(4)
    for a in range(3):
        n = int(shape[a])
        r = nsp[a] / sp[a]
        m = max(1, int(math.ceil(round(n * sp[a] / nsp[a], 6))))
        x0 = (n - 1) / 2.0 - (m - 1) / 2.0 * r
        new_shape.append(m)
        coords.append(x0 + r * np.arange(m, dtype=np.float64))
        index_map[a, a] = r
        index_map[a, 3] = x0
    return (new_shape[0], new_shape[1], new_shape[2]), coords, index_map


def _default_affine(spacing: Sequence[float]) -> np.ndarray:
    aff = np.eye(4)
    aff[[0, 1, 2], [0, 1, 2]] = _spacing3(spacing)
    return aff


def _check_affine(affine: Any, name: str) -> np.ndarray:
    aff = np.asarray(affine, dtype=np.float64)
    if aff.shape != (4, 4) or not np.all(np.isfinite(aff)) or abs(np.linalg.det(aff[:3, :3])) < 1e-12:
        raise ValueError(f"{name} must be an invertible 4x4 matrix, got {affine!r}")
    return aff


def _out_chunks(volume: Any, out_shape: Sequence[int], chunks: Any) -> tuple[tuple[int, ...], ...]:
    if chunks is None:
        chunks = volume.chunksize if _is_dask(volume) else tuple(out_shape)
    return da.core.normalize_chunks(chunks, tuple(int(s) for s in out_shape))


def _region(cmin: float, cmax: float, n: int, margin: int, mode: str) -> tuple[int, int]:
    """Input index range ``[lo, hi)`` needed for coordinates in ``[cmin, cmax]``."""
    if mode in ("reflect", "mirror") and (cmin < -margin / 2 or cmax > n - 1 + margin / 2):
        return 0, n  # far outside: reflections may reach anywhere
    lo = int(math.floor(cmin)) - margin
    hi = int(math.ceil(cmax)) + 1 + margin
    lo = min(max(lo, 0), n - 1)
    hi = max(min(hi, n), lo + 1)
    return lo, hi


def _assemble(blocks: dict[tuple[int, ...], Any], grid: tuple[int, ...]) -> da.Array:
    def nest(prefix: tuple[int, ...]) -> Any:
        if len(prefix) == len(grid):
            return blocks[prefix]
        return [nest(prefix + (i,)) for i in range(grid[len(prefix)])]

    return da.block(nest(()))


def _cubic_axes(region: np.ndarray, local_coords: Sequence[np.ndarray], mode: str, cval: float) -> np.ndarray:
    """Cubic B-spline sampling of a separable affine grid (scipy's zoom/shift path)."""
    scale = [float(c[1] - c[0]) if c.size > 1 else 1.0 for c in local_coords]
    offset = [float(c[0]) for c in local_coords]
    out_shape = tuple(c.size for c in local_coords)
    return ndi.affine_transform(
        np.asarray(region, dtype=np.float32), scale, offset=offset, output_shape=out_shape, order=3, mode=mode,
        cval=cval, output=np.float32, prefilter=True,
    )


def _sample_separable(region: np.ndarray, local_coords: Sequence[np.ndarray], order: int, mode: str, cval: float, n_threads: int | None) -> np.ndarray:
    if order in (0, 1):
        return K.resample_separable(region, local_coords, order=order, mode=mode, cval=cval, n_threads=n_threads)
    return _cubic_axes(region, local_coords, mode, cval)


def _resample_coords(volume: Any, coords: list[np.ndarray], order: int, mode: str, cval: float, chunks: Any, n_threads: int | None) -> Any:
    out_shape = tuple(c.size for c in coords)
    if not _is_dask(volume):
        return _sample_separable(np.asarray(volume), coords, order, mode, cval, n_threads)
    margin = 2 if order <= 1 else 16
    out_chunks = _out_chunks(volume, out_shape, chunks)
    grid = tuple(len(c) for c in out_chunks)
    starts = [np.concatenate([[0], np.cumsum(c)]) for c in out_chunks]
    dtype = volume.dtype if order == 0 else np.dtype(np.float32)
    blocks = {}
    for bid in np.ndindex(*grid):
        sl_coords = [coords[a][starts[a][bid[a]] : starts[a][bid[a] + 1]] for a in range(3)]
        reg = [_region(float(c.min()), float(c.max()), int(volume.shape[a]), margin, mode) for a, c in enumerate(sl_coords)]
        region = volume[tuple(slice(lo, hi) for lo, hi in reg)]
        local = [c - lo for c, (lo, _) in zip(sl_coords, reg, strict=True)]
        shape = tuple(c.size for c in sl_coords)
        task = dask.delayed(_sample_separable)(region, local, order, mode, cval, 1)
        blocks[bid] = da.from_delayed(task, shape=shape, dtype=dtype, meta=np.empty((0, 0, 0), dtype=dtype))
    return _assemble(blocks, grid)


def resample(
    volume: Any,
    *,
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    interpolation: Interpolation = "linear",
    affine: Any = None,
    mode: str = "nearest",
    cval: float = 0.0,
    chunks: Any = None,
    n_threads: int | None = None,
) -> tuple[Any, np.ndarray]:
    """Resample a volume to a new voxel spacing on the IBSI centre-aligned grid.

    Parameters
    ----------
    volume : ndarray or dask array, shape (n0, n1, n2)
    spacing, new_spacing : 3 floats, mm, array-axis order
    interpolation : {"nearest", "linear", "cubic"}
        scipy.ndimage spline orders 0, 1 and 3 (cubic B-spline with prefilter).
    affine : ndarray (4, 4), optional
        Index -> LPS mm of the input (default: ``diag(spacing)``).
    mode : {"nearest", "reflect", "mirror", "constant", "grid-constant"}
        scipy.ndimage boundary mode for samples outside the input.
    cval : float
        Value outside for the constant modes.
    chunks : dask chunks for the output grid, optional
        Default: the input's chunk size (dask) -- each output chunk reads its input
        region plus a margin (2 voxels; 16 for cubic, where the prefilter's
        influence has decayed below 1e-8).
    n_threads : int, optional
        Threads for numpy input (default: all cores).

    Returns
    -------
    resampled : ndarray or dask array
        float32 for linear/cubic, the input dtype for nearest. Equals
        ``scipy.ndimage.map_coordinates(volume, coords, order, mode=mode)`` on the
        grid of :func:`ibsi_grid`.
    new_affine : ndarray (4, 4)
    """
    vol = _as_volume(volume)
    order = _order(interpolation)
    K.interp_mode_code(mode)
    sp = _spacing3(spacing)
    aff = _default_affine(sp) if affine is None else _check_affine(affine, "affine")
    _, coords, index_map = ibsi_grid(vol.shape, sp, new_spacing)
    out = _resample_coords(vol, coords, order, mode, cval, chunks, n_threads)
    return out, aff @ index_map


def resample_mask(
    mask: Any,
    *,
    spacing: Sequence[float],
    new_spacing: Sequence[float],
    partial_volume: float = 0.5,
    affine: Any = None,
    chunks: Any = None,
    n_threads: int | None = None,
) -> tuple[Any, np.ndarray]:
    """Resample a mask by linear interpolation of its indicator and ``>= partial_volume`` (IBSI 2.4).

    Returns a bool mask on the same grid as :func:`resample` and its affine.
    """
    if not 0.0 < partial_volume <= 1.0:
        raise ValueError(f"partial_volume must be in (0, 1], got {partial_volume!r}")
    m = _as_volume(mask, "mask")
    m = m.astype(np.float32) if _is_dask(m) else np.asarray(m, dtype=np.float32)
    out, new_aff = resample(m, spacing=spacing, new_spacing=new_spacing, interpolation="linear", affine=affine,
                            mode="nearest", chunks=chunks, n_threads=n_threads)
    # float32 rounding: 0.5 of a two-voxel average must count as 0.5
    return out >= np.float32(partial_volume) - np.float32(1e-6), new_aff


def _affine_block(region: np.ndarray, mat: np.ndarray, off: np.ndarray, shape: tuple[int, ...], order: int, mode: str, cval: float, dtype: Any, n_threads: int | None) -> np.ndarray:
    if order in (0, 1):
        return K.affine_resample(region, mat, off, shape, order=order, mode=mode, cval=cval, out_dtype=dtype, n_threads=n_threads)
    return ndi.affine_transform(np.asarray(region, dtype=np.float32), mat, offset=off, output_shape=shape, order=3,
                                mode=mode, cval=cval, output=np.float32, prefilter=True)


def resample_to_grid(
    moving: Any,
    *,
    moving_affine: Any,
    target_shape: Sequence[int],
    target_affine: Any,
    transform: Any = None,
    interpolation: Interpolation = "linear",
    mode: str = "constant",
    cval: float = 0.0,
    chunks: Any = None,
    n_threads: int | None = None,
) -> Any:
    """Put a volume onto another grid (e.g. PET or MR onto the CT grid).

    Target voxel ``j`` is at ``p = target_affine @ j`` (LPS mm); ``transform`` (4x4,
    default identity) maps it to the moving image's space ``q = transform @ p`` (the
    ITK/SimpleITK convention of :func:`register_rigid`: fixed -> moving points); the
    value is interpolated at moving index ``inverse(moving_affine) @ q``.

    Returns float32 (linear/cubic) or the moving dtype (nearest); equals
    ``scipy.ndimage.affine_transform`` with the composed matrix. Dask input: output
    chunks (``chunks``, default the moving chunk size) each read the bounding box of
    their pre-image plus a margin.
    """
    mov = _as_volume(moving, "moving")
    order = _order(interpolation)
    K.interp_mode_code(mode)
    maff = _check_affine(moving_affine, "moving_affine")
    taff = _check_affine(target_affine, "target_affine")
    tr = np.eye(4) if transform is None else _check_affine(transform, "transform")
    shape = tuple(int(s) for s in target_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"target_shape must be 3 positive ints, got {target_shape!r}")
    full = np.linalg.inv(maff) @ tr @ taff
    mat, off = full[:3, :3], full[:3, 3]
    dtype = mov.dtype if order == 0 else np.dtype(np.float32)
    if not _is_dask(mov):
        return _affine_block(np.asarray(mov), mat, off, shape, order, mode, cval, dtype, n_threads)
    margin = 2 if order <= 1 else 16
    out_chunks = _out_chunks(mov, shape, chunks)
    grid = tuple(len(c) for c in out_chunks)
    starts = [np.concatenate([[0], np.cumsum(c)]) for c in out_chunks]
    blocks = {}
    for bid in np.ndindex(*grid):
        b0 = np.array([starts[a][bid[a]] for a in range(3)], dtype=np.float64)
        b1 = np.array([starts[a][bid[a] + 1] - 1 for a in range(3)], dtype=np.float64)
        corners = np.array([[c0, c1, c2] for c0 in (b0[0], b1[0]) for c1 in (b0[1], b1[1]) for c2 in (b0[2], b1[2])])
        pre = corners @ mat.T + off
        bshape = tuple(int(b1[a] - b0[a] + 1) for a in range(3))
        reg = [_region(float(pre[:, a].min()), float(pre[:, a].max()), int(mov.shape[a]), margin, mode) for a in range(3)]
        region = mov[tuple(slice(lo, hi) for lo, hi in reg)]
        lo = np.array([r[0] for r in reg], dtype=np.float64)
        local_off = mat @ b0 + off - lo
        task = dask.delayed(_affine_block)(region, mat, local_off, bshape, order, mode, cval, dtype, 1)
        blocks[bid] = da.from_delayed(task, shape=bshape, dtype=dtype, meta=np.empty((0, 0, 0), dtype=dtype))
    return _assemble(blocks, grid)


# ---------------------------------------------------------------------------------------------
# Registration (SimpleITK, optional)
# ---------------------------------------------------------------------------------------------


def _sitk() -> Any:
    try:
        import SimpleITK as sitk
    except ImportError as exc:  # pragma: no cover - SimpleITK is in requirements.lock
        raise ImportError("this function needs SimpleITK (pip install SimpleITK); it is optional for the rest of imaging") from exc
    return sitk


def _to_sitk(volume: Any, affine: np.ndarray) -> Any:
    """SimpleITK image with medflow geometry: array ``[i0, i1, i2]`` is ITK index ``(i2, i1, i0)``."""
    sitk = _sitk()
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.asarray(volume), dtype=np.float32))
    cols = affine[:3, [2, 1, 0]]
    sp = np.linalg.norm(cols, axis=0)
    img.SetSpacing([float(s) for s in sp])
    img.SetDirection([float(v) for v in (cols / sp).ravel()])
    img.SetOrigin([float(v) for v in affine[:3, 3]])
    return img


def _transform_matrix(tx: Any) -> np.ndarray:
    """4x4 matrix of a (composite) affine-type SimpleITK transform acting on points."""
    p0 = np.array(tx.TransformPoint((0.0, 0.0, 0.0)))
    mat = np.eye(4)
    for i in range(3):
        e = [0.0, 0.0, 0.0]
        e[i] = 1.0
        mat[:3, i] = np.array(tx.TransformPoint(tuple(e))) - p0
    mat[:3, 3] = p0
    return mat


def register_rigid(
    fixed: Any,
    moving: Any,
    *,
    fixed_spacing: Sequence[float],
    moving_spacing: Sequence[float],
    fixed_affine: Any = None,
    moving_affine: Any = None,
    metric: str = "mattes_mi",
    transform: str = "rigid",
    histogram_bins: int = 50,
    sampling_fraction: float = 0.2,
    iterations: int = 200,
    shrink_factors: Sequence[int] = (4, 2, 1),
    smoothing_sigmas_mm: Sequence[float] = (2.0, 1.0, 0.0),
    learning_rate: float = 2.0,
    min_step: float = 1e-4,
    seed: int = 0,
) -> np.ndarray:
    """Rigid (or affine) registration with SimpleITK's ``ImageRegistrationMethod``.

    Parameters
    ----------
    fixed, moving : ndarray or dask array (computed), shape (n0, n1, n2)
    fixed_spacing, moving_spacing : 3 floats, mm
        Used when the affine is not given (then ``diag(spacing)``).
    fixed_affine, moving_affine : ndarray (4, 4), optional
    metric : {"mattes_mi", "mean_squares", "correlation"}
        Mattes mutual information (multi-modal, e.g. PET/MR to CT) by default.
    transform : {"rigid", "affine"}
    histogram_bins, sampling_fraction, iterations, shrink_factors, smoothing_sigmas_mm, learning_rate, min_step, seed :
        Metric and regular-step gradient-descent settings (learning rate and minimum step
        in physical-shift-scaled units, i.e. about mm); random sampling is seeded, so
        results are repeatable.

    Returns
    -------
    ndarray (4, 4)
        Maps fixed-space LPS points to moving-space LPS points (ITK convention);
        pass it as ``transform`` to :func:`resample_to_grid` with the fixed grid as target.
    """
    sitk = _sitk()
    if metric not in ("mattes_mi", "mean_squares", "correlation"):
        raise ValueError(f"metric must be 'mattes_mi', 'mean_squares' or 'correlation', got {metric!r}")
    if transform not in ("rigid", "affine"):
        raise ValueError(f"transform must be 'rigid' or 'affine', got {transform!r}")
    if not 0.0 < sampling_fraction <= 1.0:
        raise ValueError(f"sampling_fraction must be in (0, 1], got {sampling_fraction!r}")
    if len(shrink_factors) != len(smoothing_sigmas_mm):
        raise ValueError(f"shrink_factors and smoothing_sigmas_mm must have equal length, got {shrink_factors!r}, {smoothing_sigmas_mm!r}")
    fv = _as_volume(fixed.compute() if _is_dask(fixed) else fixed, "fixed")
    mv = _as_volume(moving.compute() if _is_dask(moving) else moving, "moving")
    faff = _default_affine(fixed_spacing) if fixed_affine is None else _check_affine(fixed_affine, "fixed_affine")
    maff = _default_affine(moving_spacing) if moving_affine is None else _check_affine(moving_affine, "moving_affine")
    f_img = _to_sitk(fv, faff)
    m_img = _to_sitk(mv, maff)
    base = sitk.Euler3DTransform() if transform == "rigid" else sitk.AffineTransform(3)
    init = sitk.CenteredTransformInitializer(f_img, m_img, base, sitk.CenteredTransformInitializerFilter.GEOMETRY)
    reg = sitk.ImageRegistrationMethod()
    if metric == "mattes_mi":
        reg.SetMetricAsMattesMutualInformation(numberOfHistogramBins=int(histogram_bins))
    elif metric == "mean_squares":
        reg.SetMetricAsMeanSquares()
    else:
        reg.SetMetricAsCorrelation()
    reg.SetMetricSamplingStrategy(reg.RANDOM)
    reg.SetMetricSamplingPercentage(float(sampling_fraction), int(seed))
    reg.SetInterpolator(sitk.sitkLinear)
    reg.SetOptimizerAsRegularStepGradientDescent(learningRate=float(learning_rate), minStep=float(min_step),
                                                 numberOfIterations=int(iterations), gradientMagnitudeTolerance=1e-8)
    reg.SetOptimizerScalesFromPhysicalShift()
    reg.SetShrinkFactorsPerLevel([int(s) for s in shrink_factors])
    reg.SetSmoothingSigmasPerLevel([float(s) for s in smoothing_sigmas_mm])
    reg.SmoothingSigmasAreSpecifiedInPhysicalUnitsOn()
    reg.SetInitialTransform(init, inPlace=False)
    final = reg.Execute(f_img, m_img)
    return _transform_matrix(final)


# ---------------------------------------------------------------------------------------------
# Intensity normalisation
# ---------------------------------------------------------------------------------------------


def suv_factor(*, injected_dose_bq: float, patient_weight_kg: float, decay_time_s: float, half_life_s: float) -> float:
    """Body-weight SUV factor: ``SUVbw = activity [Bq/mL] * factor``.

    ``factor = weight [g] / (dose [Bq] * 2 ** (-decay_time / half_life))`` -- the
    injected dose decay-corrected to the acquisition start (DICOM PS3.3 C.8.9.1
    Radiopharmaceutical Information; QIBA/UPICT SUV definition, 1 g/mL tissue density).
    """
    for name, v in (("injected_dose_bq", injected_dose_bq), ("patient_weight_kg", patient_weight_kg), ("half_life_s", half_life_s)):
        if not (isinstance(v, (int, float, np.floating, np.integer)) and math.isfinite(v) and v > 0):
            raise ValueError(f"{name} must be a positive number, got {v!r}")
    if not (math.isfinite(decay_time_s) and decay_time_s >= 0):
        raise ValueError(f"decay_time_s must be >= 0, got {decay_time_s!r}")
    dose = float(injected_dose_bq) * 2.0 ** (-float(decay_time_s) / float(half_life_s))
    return float(patient_weight_kg) * 1000.0 / dose


def _affine_clip(volume: Any, lo: float, hi: float, scale: float, offset: float, out: np.ndarray | None, n_threads: int | None) -> Any:
    if _is_dask(volume):
        if out is not None:
            raise ValueError("out= is only supported for numpy input")
        return volume.map_blocks(lambda b: K.window_clip(b, lo, hi, scale=scale, offset=offset, n_threads=1),
                                 dtype=np.float32, meta=np.empty((0, 0, 0), dtype=np.float32))
    return K.window_clip(np.asarray(volume), lo, hi, scale=scale, offset=offset, out=out, n_threads=n_threads)


def _mean_std(volume: Any, mask: Any) -> tuple[float, float]:
    def s1(b: np.ndarray, m: np.ndarray | None) -> tuple[float, int]:
        v = (b if m is None else b[m]).astype(np.float64)
        return float(v.sum()), int(v.size)

    parts = S._blockwise(volume, mask, s1)
    n = sum(p[1] for p in parts)
    if n == 0:
        raise ValueError("mask selects no voxels")
    mu = sum(p[0] for p in parts) / n

    def s2(b: np.ndarray, m: np.ndarray | None) -> float:
        v = (b if m is None else b[m]).astype(np.float64) - mu
        return float(np.dot(v.ravel(), v.ravel()))

    var = sum(S._blockwise(volume, mask, s2)) / n
    return mu, math.sqrt(var)


def normalise(
    volume: Any,
    *,
    method: str = "none",
    mask: Any = None,
    window: Sequence[float] | None = None,
    rescale: bool = False,
    percentiles: Sequence[float] = (1.0, 99.0),
    clip: bool = True,
    injected_dose_bq: float | None = None,
    patient_weight_kg: float | None = None,
    decay_time_s: float | None = None,
    half_life_s: float | None = None,
    out: np.ndarray | None = None,
    n_threads: int | None = None,
) -> Any:
    """Intensity normalisation; float32 output (numpy: threaded, optionally into ``out``).

    Parameters
    ----------
    method : {"none", "zscore", "percentile", "window", "suv"}
        * ``none``: cast to float32.
        * ``zscore``: ``(v - mean) / std`` with mean/std over ``mask`` (or all voxels).
        * ``percentile``: ``(v - p_lo) / (p_hi - p_lo)`` with exact percentiles
          ``percentiles`` over ``mask``; clipped to [0, 1] if ``clip``.
        * ``window``: clip to ``window = (lo, hi)`` (e.g. a HU window); rescaled to
          [0, 1] if ``rescale``.
        * ``suv``: activity concentration (Bq/mL) to body-weight SUV, see :func:`suv_factor`
          (needs ``injected_dose_bq``, ``patient_weight_kg``, ``decay_time_s``, ``half_life_s``).
    mask : bool array, optional
    out : float32 ndarray, optional
        Preallocated output (numpy only) -- avoids page-faulting a fresh array.

    Returns
    -------
    float32 ndarray or dask array
    """
    vol = _as_volume(volume)
    inf = math.inf
    if method == "none":
        return _affine_clip(vol, -inf, inf, 1.0, 0.0, out, n_threads)
    if method == "window":
        if window is None or len(window) != 2 or not window[1] > window[0]:
            raise ValueError(f"window must be (lo, hi) with hi > lo, got {window!r}")
        lo, hi = float(window[0]), float(window[1])
        if rescale:
            return _affine_clip(vol, lo, hi, 1.0 / (hi - lo), -lo / (hi - lo), out, n_threads)
        return _affine_clip(vol, lo, hi, 1.0, 0.0, out, n_threads)
    if method == "zscore":
        mu, sd = _mean_std(vol, mask)
        if sd == 0:
            raise ValueError("zscore: the selected voxels have zero standard deviation")
        return _affine_clip(vol, -inf, inf, 1.0 / sd, -mu / sd, out, n_threads)
    if method == "percentile":
        if len(percentiles) != 2 or not 0 <= percentiles[0] < percentiles[1] <= 100:
            raise ValueError(f"percentiles must be (lo, hi) with 0 <= lo < hi <= 100, got {percentiles!r}")
        p_lo, p_hi = (float(v) for v in S.percentile(vol, list(percentiles), mask=mask))
        if p_hi <= p_lo:
            raise ValueError(f"percentile: p{percentiles[0]} and p{percentiles[1]} are equal ({p_lo}); cannot rescale")
        a, b = (p_lo, p_hi) if clip else (-inf, inf)
        return _affine_clip(vol, a, b, 1.0 / (p_hi - p_lo), -p_lo / (p_hi - p_lo), out, n_threads)
    if method == "suv":
        if None in (injected_dose_bq, patient_weight_kg, decay_time_s, half_life_s):
            raise ValueError("suv needs injected_dose_bq, patient_weight_kg, decay_time_s and half_life_s")
        f = suv_factor(injected_dose_bq=injected_dose_bq, patient_weight_kg=patient_weight_kg,  # type: ignore[arg-type]
                       decay_time_s=decay_time_s, half_life_s=half_life_s)  # type: ignore[arg-type]
        return _affine_clip(vol, -inf, inf, f, 0.0, out, n_threads)
    raise ValueError(f"method must be one of ('none', 'zscore', 'percentile', 'window', 'suv'), got {method!r}")


# ---------------------------------------------------------------------------------------------
# Denoising
# ---------------------------------------------------------------------------------------------


def _overlap(volume: da.Array, fn: Callable[[np.ndarray], np.ndarray], depth: Sequence[int], dtype: Any, mode: str = "reflect") -> da.Array:
    """``map_overlap`` where each block applies the filter's own border rule.

    ``boundary="none"``: blocks on the volume border are not padded there, so the
    block function's ``mode`` is exactly the global border rule. Periodic ("wrap")
    borders need data from the opposite face, which dask's ``"periodic"`` padding supplies.
    """
    dt = np.dtype(dtype)
    boundary = "periodic" if mode == "wrap" else "none"
    return da.map_overlap(fn, volume, depth=block_depth(volume.numblocks, depth), boundary=boundary, dtype=dt,
                          meta=np.empty((0, 0, 0), dtype=dt))


def gaussian(
    volume: Any,
    *,
    spacing: Sequence[float],
    sigma_mm: float | Sequence[float],
    truncate: float = 4.0,
    mode: str = "reflect",
    cval: float = 0.0,
    out: np.ndarray | None = None,
    n_threads: int | None = None,
) -> Any:
    """Gaussian smoothing with sigma in mm (float32 out).

    Equals ``scipy.ndimage.gaussian_filter(volume.astype(float32), sigma_mm / spacing,
    mode=mode, truncate=truncate)`` within float32 rounding. Numpy input runs the
    separable compiled kernel on slabs of 2 threads (optionally into ``out``); dask
    input runs it per chunk with ``map_overlap`` (depth = kernel radius).
    """
    vol = _as_volume(volume)
    sig = sigma_voxels(spacing, sigma_mm)
    if mode not in K.MODES:
        raise ValueError(f"mode must be one of {K.MODES}, got {mode!r}")
    if not truncate > 0:
        raise ValueError(f"truncate must be > 0, got {truncate!r}")
    if _is_dask(vol):
        if out is not None:
            raise ValueError("out= is only supported for numpy input")
        depth = [len(K.gaussian_weights(s, truncate)) // 2 for s in sig]
        return _overlap(vol, lambda b: K.gaussian_filter(b, sig, truncate=truncate, mode=mode, cval=cval, n_threads=1), depth,
                        np.float32, mode)
    return K.gaussian_filter(np.asarray(vol), sig, truncate=truncate, mode=mode, cval=cval, out=out, n_threads=n_threads)


def _size3(size: int | Sequence[int]) -> tuple[int, int, int]:
    try:
        s = tuple(int(v) for v in size)  # type: ignore[union-attr]
    except TypeError:
        s = (int(size),) * 3  # type: ignore[arg-type]
    if len(s) != 3 or any(v < 1 or v % 2 == 0 for v in s):
        raise ValueError(f"size must be an odd int >= 1 (or 3 of them), got {size!r}")
    return s  # type: ignore[return-value]


def median(
    volume: Any,
    *,
    size: int | Sequence[int] = 3,
    mode: str = "reflect",
    cval: float = 0.0,
    out: np.ndarray | None = None,
    n_threads: int | None = None,
) -> Any:
    """Median filter over an odd box (same dtype out), identical to ``scipy.ndimage.median_filter``.

    Boxes of up to 125 voxels (3x3x3, 5x5x5, ...) use a compiled selection network
    on slabs of threads; larger boxes fall back to scipy.
    """
    vol = _as_volume(volume)
    s = _size3(size)
    if mode not in K.MODES:
        raise ValueError(f"mode must be one of {K.MODES}, got {mode!r}")
    use_net = math.prod(s) <= K.MAX_NETWORK_INPUTS

    def run(b: np.ndarray, threads: int | None, o: np.ndarray | None = None) -> np.ndarray:
        if use_net:
            return K.median_filter(b, s, mode=mode, cval=cval, out=o, n_threads=threads)
        r = ndi.median_filter(b, size=s, mode=mode, cval=cval)
        if o is not None:
            o[...] = r
            return o
        return r

    if _is_dask(vol):
        if out is not None:
            raise ValueError("out= is only supported for numpy input")
        return _overlap(vol, lambda b: run(b, 1), [v // 2 for v in s], vol.dtype, mode)
    return run(np.asarray(vol), n_threads, out)


def bilateral(
    volume: Any,
    *,
    spacing: Sequence[float],
    sigma_spatial_mm: float,
    sigma_range: float,
    truncate: float = 2.0,
    mode: str = "reflect",
    n_threads: int | None = None,
) -> Any:
    """3-D bilateral filter (Tomasi & Manduchi 1998), float32 out.

    ``out(x) = sum_y w_s(y - x) w_r(v(y) - v(x)) v(y) / sum_y w_s w_r`` with Gaussian
    spatial weights (sigma in mm, window radius ``ceil(truncate * sigma / spacing)`` per
    axis, spherical support) and Gaussian range weights (``sigma_range`` in intensity units).
    """
    vol = _as_volume(volume)
    sp = _spacing3(spacing)
    if not sigma_spatial_mm > 0:
        raise ValueError(f"sigma_spatial_mm must be > 0, got {sigma_spatial_mm!r}")
    if not sigma_range > 0:
        raise ValueError(f"sigma_range must be > 0, got {sigma_range!r}")
    if mode not in ("reflect", "mirror", "nearest", "wrap"):
        raise ValueError(f"mode must be one of ('reflect', 'mirror', 'nearest', 'wrap'), got {mode!r}")
    r = [max(0, int(math.ceil(truncate * sigma_spatial_mm / p))) for p in sp]
    g = np.meshgrid(*[np.arange(-ri, ri + 1) * p for ri, p in zip(r, sp, strict=True)], indexing="ij")
    d2 = g[0] ** 2 + g[1] ** 2 + g[2] ** 2
    wsp = np.where(d2 <= (truncate * sigma_spatial_mm) ** 2 + 1e-9, np.exp(-d2 / (2 * sigma_spatial_mm**2)), 0.0)
    inv = 1.0 / (2.0 * float(sigma_range) ** 2)

    def run(b: np.ndarray, threads: int | None) -> np.ndarray:
        maps = [K.boundary_index(int(n), ri, ri, mode) for n, ri in zip(b.shape, r, strict=True)]
        src = np.ascontiguousarray(b)
        out = np.empty(b.shape, dtype=np.float32)
        K.run_slabs(lambda a, c: K.bilateral_slices(src, 0, out[a:c], a, c, maps[0], maps[1], maps[2], r[0], r[1], r[2], wsp, inv),
                    b.shape[0], threads)
        return out

    if _is_dask(vol):
        return _overlap(vol, lambda b: run(b, 1), r, np.float32, mode)
    return run(np.asarray(vol), n_threads)


def nl_means(
    volume: Any,
    *,
    h: float,
    sigma: float = 0.0,
    patch_size: int = 3,
    patch_distance: int = 4,
    fast_mode: bool = True,
    per_slice: bool = False,
) -> Any:
    """Non-local means (``skimage.restoration.denoise_nl_means``), 3-D or per axis-0 slice; float32 out.

    Dask input: ``map_overlap`` with depth ``patch_distance + patch_size // 2`` (0 across
    slices when ``per_slice``), so every output voxel sees the same search window.
    """
    from skimage.restoration import denoise_nl_means

    vol = _as_volume(volume)
    if not h > 0:
        raise ValueError(f"h must be > 0, got {h!r}")
    if patch_size < 1 or patch_distance < 1:
        raise ValueError(f"patch_size and patch_distance must be >= 1, got {patch_size!r}, {patch_distance!r}")

    def run(b: np.ndarray) -> np.ndarray:
        x = np.asarray(b, dtype=np.float64)
        kw = dict(h=float(h), sigma=float(sigma), patch_size=int(patch_size), patch_distance=int(patch_distance),
                  fast_mode=bool(fast_mode), preserve_range=True, channel_axis=None)
        if per_slice:
            return np.stack([denoise_nl_means(x[i], **kw) for i in range(x.shape[0])]).astype(np.float32)
        return np.asarray(denoise_nl_means(x, **kw), dtype=np.float32)

    if _is_dask(vol):
        d = patch_distance + patch_size // 2
        return _overlap(vol, run, (0 if per_slice else d, d, d), np.float32)
    return run(np.asarray(vol))


def anisotropic_diffusion(
    volume: Any,
    *,
    spacing: Sequence[float],
    iterations: int = 5,
    kappa: float,
    time_step: float | None = None,
    conductance: str = "exponential",
    n_threads: int | None = None,
) -> Any:
    """Perona-Malik anisotropic diffusion, a fixed number of explicit steps (float64 math, float32 out).

    ``u <- u + dt * sum_neighbours g(|d| / h) d / h^2`` with ``d`` the difference to
    each of the 6 face neighbours, ``h`` the spacing along that axis, zero-flux
    borders, and ``g = exp(-(x/kappa)^2)`` ("exponential") or ``1 / (1 + (x/kappa)^2)``
    ("quadratic"). ``time_step`` defaults to half the stability limit
    ``1 / (2 * sum(1/h^2))``. Dask: ``map_overlap`` with depth = ``iterations``
    (information travels one voxel per step).
    """
    vol = _as_volume(volume)
    sp = _spacing3(spacing)
    if not isinstance(iterations, (int, np.integer)) or iterations < 1:
        raise ValueError(f"iterations must be an int >= 1, got {iterations!r}")
    if not kappa > 0:
        raise ValueError(f"kappa must be > 0, got {kappa!r}")
    if conductance not in ("exponential", "quadratic"):
        raise ValueError(f"conductance must be 'exponential' or 'quadratic', got {conductance!r}")
    inv_h2 = np.array([1.0 / p**2 for p in sp])
    limit = 1.0 / (2.0 * inv_h2.sum())
    dt = 0.5 * limit if time_step is None else float(time_step)
    if not 0 < dt <= limit:
        raise ValueError(f"time_step must be in (0, {limit:.6g}] for stability, got {time_step!r}")
    quad = conductance == "quadratic"

    def run(b: np.ndarray, threads: int | None) -> np.ndarray:
        bufs = [np.array(b, dtype=np.float64, copy=True), np.empty(b.shape, dtype=np.float64)]
        for it in range(int(iterations)):
            u, v = bufs[it % 2], bufs[(it + 1) % 2]

            def step(a: int, c: int, u: np.ndarray = u, v: np.ndarray = v) -> None:
                K.perona_malik_step(u, v, a, c, inv_h2, float(kappa) ** 2, dt, quad)

            K.run_slabs(step, u.shape[0], threads)
        return bufs[int(iterations) % 2].astype(np.float32)

    if _is_dask(vol):
        return _overlap(vol, lambda b: run(b, 1), [int(iterations)] * 3, np.float32)
    return run(np.asarray(vol), n_threads)


def denoise(volume: Any, *, method: str, spacing: Sequence[float], **params: Any) -> Any:
    """Dispatch to a denoiser by name (``imaging.types.Denoiser``); ``params`` go to that function."""
    if method == "none":
        return volume
    if method == "gaussian":
        return gaussian(volume, spacing=spacing, **params)
    if method == "median":
        return median(volume, **params)
    if method == "bilateral":
        return bilateral(volume, spacing=spacing, **params)
    if method == "nl_means":
        return nl_means(volume, **params)
    if method == "anisotropic_diffusion":
        return anisotropic_diffusion(volume, spacing=spacing, **params)
    raise ValueError(f"method must be one of ('none', 'gaussian', 'median', 'bilateral', 'nl_means', 'anisotropic_diffusion'), got {method!r}")


# ---------------------------------------------------------------------------------------------
# MR bias field
# ---------------------------------------------------------------------------------------------


def _legendre_terms(order: int) -> list[tuple[int, int, int]]:
    return [(p, q, r) for p in range(order + 1) for q in range(order + 1 - p) for r in range(order + 1 - p - q)]


def _legendre_1d(n: int, idx: np.ndarray, order: int) -> np.ndarray:
    t = 2.0 * idx / max(n - 1, 1) - 1.0
    return np.stack([np.polynomial.legendre.legval(t, np.eye(order + 1)[k]) for k in range(order + 1)])


def _log_field_block(shape_full: tuple[int, ...], ranges: Sequence[tuple[int, int]], coefs: np.ndarray, terms: list[tuple[int, int, int]], order: int) -> np.ndarray:
    P = [_legendre_1d(shape_full[a], np.arange(ranges[a][0], ranges[a][1], dtype=np.float64), order) for a in range(3)]
    out = np.zeros(tuple(b - a for a, b in ranges), dtype=np.float64)
    for p in range(order + 1):
        g = np.zeros((out.shape[1], out.shape[2]))
        for c, (pp, q, r) in zip(coefs, terms, strict=True):
            if pp == p and c != 0:
                g += c * np.outer(P[1][q], P[2][r])
        out += P[0][p][:, None, None] * g[None]
    return out


def bias_field_correction(
    volume: Any,
    *,
    mask: Any = None,
    method: str = "polynomial",
    order: int = 3,
    shrink: int = 4,
    iterations: int = 3,
    spacing: Sequence[float] | None = None,
    n4_iterations: Sequence[int] = (50, 50, 30, 20),
) -> tuple[Any, Any]:
    """Multiplicative MR bias-field correction; returns ``(corrected, field)`` (float32).

    ``method="polynomial"`` (pure numpy): fit ``log v = log b + log u`` inside the mask
    with a 3-D Legendre polynomial of total degree ``order`` on a ``shrink``-subsampled
    grid, trimming voxels whose residual exceeds 2.5 robust SDs for ``iterations``
    rounds; the field is normalised to geometric mean 1 in the mask and evaluated
    per chunk (dask input stays lazy). ``method="n4"`` uses SimpleITK's
    ``N4BiasFieldCorrectionImageFilter`` (optional dependency; in core).

    Parameters
    ----------
    mask : bool array, optional
        Tissue to fit; default ``volume > Otsu threshold`` (of the subsampled volume).
    """
    vol = _as_volume(volume)
    if method not in ("polynomial", "n4"):
        raise ValueError(f"method must be 'polynomial' or 'n4', got {method!r}")
    if not isinstance(shrink, (int, np.integer)) or shrink < 1:
        raise ValueError(f"shrink must be an int >= 1, got {shrink!r}")
    sub = vol[::shrink, ::shrink, ::shrink]
    sub = np.asarray(sub.compute() if _is_dask(sub) else sub, dtype=np.float64)
    if mask is None:
        msub = sub > S.otsu_threshold(sub)
    else:
        if tuple(mask.shape) != tuple(vol.shape):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match volume shape {tuple(vol.shape)}")
        ms = mask[::shrink, ::shrink, ::shrink]
        msub = np.asarray(ms.compute() if _is_dask(ms) else ms, dtype=bool)
    msub &= sub > 0
    if msub.sum() < 50:
        raise ValueError("bias_field_correction: fewer than 50 positive voxels in the (subsampled) mask")
    if method == "n4":
        return _n4(vol, mask, spacing, shrink, n4_iterations)
    if not isinstance(order, (int, np.integer)) or order < 0:
        raise ValueError(f"order must be an int >= 0, got {order!r}")
    terms = _legendre_terms(int(order))
    idx = np.nonzero(msub)
    P = [_legendre_1d(int(vol.shape[a]), np.arange(0, int(vol.shape[a]), shrink, dtype=np.float64), int(order)) for a in range(3)]
    A = np.stack([P[0][p][idx[0]] * P[1][q][idx[1]] * P[2][r][idx[2]] for p, q, r in terms], axis=1)
    y = np.log(sub[idx])
    keep = np.ones(y.size, dtype=bool)
    coefs = np.zeros(len(terms))
    for _ in range(max(1, int(iterations))):
        coefs, *_ = np.linalg.lstsq(A[keep], y[keep], rcond=None)
        res = y - A @ coefs
        med = np.median(res[keep])
        mad = 1.4826 * np.median(np.abs(res[keep] - med))
        if mad == 0:
            break
        keep = np.abs(res - med) <= 2.5 * mad
    coefs = coefs.copy()
    coefs[terms.index((0, 0, 0))] -= float(np.mean(A @ coefs))  # geometric mean of the field in the mask = 1
    shape_full = tuple(int(s) for s in vol.shape)
    if _is_dask(vol):
        def fblock(block: np.ndarray, block_info: dict | None = None) -> np.ndarray:
            assert block_info is not None
            loc = block_info[0]["array-location"]
            return np.exp(_log_field_block(shape_full, loc, coefs, terms, int(order))).astype(np.float32)

        field = vol.map_blocks(fblock, dtype=np.float32, meta=np.empty((0, 0, 0), dtype=np.float32))
        return (vol.astype(np.float32) / field).astype(np.float32), field
    field = np.exp(_log_field_block(shape_full, [(0, n) for n in shape_full], coefs, terms, int(order))).astype(np.float32)
    return (np.asarray(vol, dtype=np.float32) / field).astype(np.float32), field


def _n4(vol: Any, mask: Any, spacing: Sequence[float] | None, shrink: int, n4_iterations: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    sitk = _sitk()
    v = np.asarray(vol.compute() if _is_dask(vol) else vol, dtype=np.float32)
    img = sitk.GetImageFromArray(v)
    if spacing is not None:
        img.SetSpacing([float(s) for s in _spacing3(spacing)[::-1]])
    if mask is None:
        m = (v > S.otsu_threshold(v)).astype(np.uint8)
    else:
        m = np.asarray(mask.compute() if _is_dask(mask) else mask, dtype=np.uint8)
    mimg = sitk.GetImageFromArray(m)
    mimg.CopyInformation(img)
    small = sitk.Shrink(img, [int(shrink)] * 3)
    msmall = sitk.Shrink(mimg, [int(shrink)] * 3)
    corr = sitk.N4BiasFieldCorrectionImageFilter()
    corr.SetMaximumNumberOfIterations([int(i) for i in n4_iterations])
    corr.Execute(small, msmall)
    log_field = sitk.GetArrayFromImage(corr.GetLogBiasFieldAsImage(img))
    field = np.exp(log_field).astype(np.float32)
    return (v / field).astype(np.float32), field
