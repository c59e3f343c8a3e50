"""Shared machinery of the IBSI-2 filters: boundary vocabularies, validation, chunk-parallel stages,
separable convolution and the right-angle rotation group.

A filter is built from one or more *stages*. A stage is a function of a block that extends the block
at its border with the stage's boundary condition (scipy.ndimage mode) and returns a block of the
same shape. On numpy input a stage runs once on the whole volume. On dask input it runs through
``map_overlap`` with ``depth`` equal to the kernel radius and the IBSI boundary mapped to dask's
``boundary``, so the result equals the numpy result voxel for voxel (the padding of the block interior
is overwritten by neighbour data, the padding at the true border is the boundary condition).

Multi-stage filters (Laws energy maps, wavelet levels > 1) are separate stages on purpose: the
second stage extends the *response* of the first with the boundary condition, as IBSI-2 (and the
reference implementations) do, which is not the same as extending the input once.
"""

from __future__ import annotations

import itertools
import numbers
from collections.abc import Callable, Sequence
from typing import Any, cast

import dask.array as da
import numpy as np
import numpy.typing as npt
from scipy import ndimage as ndi

from imaging.types import ArrayLike, IBSIBoundary, Pooling

BOUNDARIES: tuple[str, ...] = ("zero", "nearest", "periodic", "mirror")
POOLINGS: tuple[str, ...] = ("max", "min", "average")

#: IBSI-2 boundary condition -> scipy.ndimage ``mode``.
SCIPY_MODE: dict[str, str] = {
    "zero": "constant",
    "nearest": "nearest",
    "periodic": "wrap",
    "mirror": "reflect",
}
#: IBSI-2 boundary condition -> numpy.pad ``mode``.
NUMPY_MODE: dict[str, str] = {
    "zero": "constant",
    "nearest": "edge",
    "periodic": "wrap",
    "mirror": "symmetric",
}
#: IBSI-2 boundary condition -> dask ``map_overlap`` ``boundary`` (dask "reflect" repeats the edge voxel,
#: like numpy "symmetric").
DASK_BOUNDARY: dict[str, Any] = {
    "zero": 0.0,
    "nearest": "nearest",
    "periodic": "periodic",
    "mirror": "reflect",
}

WORK_DTYPE = np.float64  # kernels and float64 outputs

Block = npt.NDArray[np.float64]
BlockFn = Callable[[Block], Block]


# ----------------------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------------------


def check_volume(volume: Any) -> ArrayLike:
    """Return ``volume`` as a numpy or dask array after checking it is a real 3-D array."""
    if not isinstance(volume, da.Array):
        volume = np.asarray(volume)
    if volume.ndim != 3:
        raise ValueError(
            f"volume must be a 3-D array [axis0, axis1, axis2], got ndim={volume.ndim} "
            f"(shape {tuple(volume.shape)!r})"
        )
    if np.issubdtype(volume.dtype, np.complexfloating) or not (
        np.issubdtype(volume.dtype, np.number) or volume.dtype == np.bool_
    ):
        raise TypeError(f"volume must have a real numeric dtype, got {volume.dtype!r}")
    if 0 in volume.shape:
        raise ValueError(f"volume must not be empty, got shape {tuple(volume.shape)!r}")
    return cast(ArrayLike, volume)


def check_spacing(spacing: Any, ndim: int = 3) -> tuple[float, ...]:
    """Validate ``spacing`` (mm, array-axis order) and return it as a tuple of floats."""
    try:
        values = tuple(float(s) for s in spacing)
    except TypeError as exc:
        raise TypeError(
            f"spacing must be a sequence of {ndim} positive floats (mm), got {spacing!r}"
        ) from exc
    if len(values) != ndim or not all(np.isfinite(v) and v > 0 for v in values):
        raise ValueError(
            f"spacing must be {ndim} positive finite values in mm (array-axis order), got {spacing!r}"
        )
    return values


def check_boundary(boundary: Any) -> IBSIBoundary:
    if boundary not in BOUNDARIES:
        raise ValueError(
            f"boundary must be one of {BOUNDARIES} (IBSI-2 names; 'mirror' is scipy 'reflect'), "
            f"got {boundary!r}"
        )
    return cast(IBSIBoundary, boundary)


def check_dimensions(dimensions: Any) -> int:
    """Return 2 or 3 for ``"2D"`` / ``"3D"``."""
    if dimensions not in ("2D", "3D"):
        raise ValueError(f"dimensions must be '2D' (in-plane, axes 1 and 2) or '3D', got {dimensions!r}")
    return 2 if dimensions == "2D" else 3


def check_positive(name: str, value: Any, *, integer: bool = False, odd: bool = False) -> Any:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(
            f"{name} must be a {'positive integer' if integer else 'positive number'}, got {value!r}"
        )
    v = float(value)
    if integer and (not np.isfinite(v) or int(v) != v):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if not np.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be > 0, got {value!r}")
    if odd and int(v) % 2 == 0:
        raise ValueError(f"{name} must be odd so that the filter is centred on the voxel, got {value!r}")
    return int(v) if integer else v


def check_pooling(pooling: Any, *, rotation_invariance: bool, name: str = "pooling") -> Pooling | None:
    if pooling is None or pooling == "none":
        if rotation_invariance:
            raise ValueError(
                f"{name} must be one of {POOLINGS} when rotation_invariance is True, got {pooling!r}"
            )
        return None
    if pooling not in POOLINGS:
        raise ValueError(f"{name} must be one of {POOLINGS} or None, got {pooling!r}")
    return cast(Pooling, pooling)


def check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    if not np.issubdtype(dt, np.floating):
        raise TypeError(f"dtype must be a floating dtype, got {dtype!r}")
    return dt


# ----------------------------------------------------------------------------------------------------------
# stages
# ----------------------------------------------------------------------------------------------------------


def work_dtype(dtype: np.dtype) -> np.dtype:
    """Working precision for an output ``dtype``: float32 for float32 (or smaller) outputs, else float64.

    scipy.ndimage accumulates every 1-D line in double precision, so a float32 working copy only rounds
    between passes (relative error ~1e-7, far below the IBSI-2 1% tolerance) and halves memory traffic.
    """
    return np.dtype(np.float64) if np.dtype(dtype).itemsize >= 8 else np.dtype(np.float32)


def as_work(volume: ArrayLike, dtype: np.dtype) -> ArrayLike:
    """Cast ``volume`` to the working dtype of output ``dtype`` (lazily for dask)."""
    wd = work_dtype(dtype)
    return volume.astype(wd, copy=False) if volume.dtype != wd else volume


def run_stage(
    volume: ArrayLike,
    fn: BlockFn,
    *,
    radius: Sequence[int],
    boundary: IBSIBoundary,
) -> ArrayLike:
    """Run one filter stage on a numpy array (directly) or a dask array (``map_overlap``).

    Parameters
    ----------
    volume : ndarray or dask array, shape (n0, n1, n2), float32 or float64 (the stage output dtype too)
    fn : callable block -> block of the same shape and dtype; extends the block border with ``boundary``
        (scipy mode ``SCIPY_MODE[boundary]``).
    radius : int per axis
        Kernel radius (voxels) of the stage along each axis: the overlap ``depth``. An axis whose radius
        reaches the array size is made one chunk (depth 0), so ``fn`` applies the boundary itself.
    boundary : IBSI-2 boundary condition.
    """
    out_dtype = np.dtype(volume.dtype)
    if not isinstance(volume, da.Array):
        return np.asarray(fn(np.asarray(volume)), dtype=out_dtype)
    depth: dict[int, int] = {}
    whole: dict[int, int] = {}
    for ax, r in enumerate(radius):
        r = int(r)
        if r <= 0 or volume.numblocks[ax] == 1:
            depth[ax] = 0
        elif r >= volume.shape[ax]:
            # dask cannot overlap deeper than the array: one chunk along this axis, fn pads it
            whole[ax] = -1
            depth[ax] = 0
        else:
            depth[ax] = r
    lazy: da.Array = volume.rechunk(whole) if whole else volume

    def _block(block: np.ndarray) -> np.ndarray:
        return np.asarray(fn(np.asarray(block, dtype=out_dtype)), dtype=out_dtype)

    return lazy.map_overlap(
        _block,
        depth=depth,
        boundary=DASK_BOUNDARY[boundary],
        dtype=out_dtype,
        meta=np.empty((0,) * lazy.ndim, dtype=out_dtype),
    )


def finish(volume: ArrayLike, dtype: np.dtype) -> ArrayLike:
    return volume.astype(dtype, copy=False) if volume.dtype != dtype else volume


# ----------------------------------------------------------------------------------------------------------
# separable convolution, rotations, pooling
# ----------------------------------------------------------------------------------------------------------


def odd_kernel(kernel: npt.ArrayLike) -> np.ndarray:
    """Return a 1-D kernel of odd length: even-length kernels get a trailing zero, so the centre tap is
    ``len // 2`` (the convention of scipy.ndimage.convolve1d and of the IBSI-2 reference implementations)."""
    k = np.asarray(kernel, dtype=WORK_DTYPE).ravel()
    if k.size % 2 == 0:
        k = np.append(k, 0.0)
    return k


def dilate_kernel(kernel: np.ndarray, factor: int) -> np.ndarray:
    """A trous dilation: insert ``factor - 1`` zeros between the taps (odd length preserved)."""
    if factor == 1:
        return kernel
    out = np.zeros((kernel.size - 1) * factor + 1, dtype=kernel.dtype)
    out[::factor] = kernel
    return out


def kernel_radius(kernel: np.ndarray) -> int:
    return (kernel.size - 1) // 2


def separable_convolve(
    block: np.ndarray, kernels: Sequence[np.ndarray | None], axes: Sequence[int], mode: str
) -> np.ndarray:
    """Convolve ``block`` with 1-D odd-length ``kernels`` along ``axes`` (``None`` = identity)."""
    out = block
    for k, ax in zip(kernels, axes, strict=True):
        if k is None:
            continue
        out = ndi.convolve1d(out, k, axis=ax, mode=mode, cval=0.0, output=block.dtype)
    return out


def right_angle_rotations(ndim: int) -> list[np.ndarray]:
    """The proper right-angle rotations of ``ndim``-space (24 in 3-D, 4 in 2-D) as signed permutation
    matrices with determinant +1, identity first (IBSI-2 rotation invariance)."""
    mats: list[np.ndarray] = []
    for perm in itertools.permutations(range(ndim)):
        for signs in itertools.product((1, -1), repeat=ndim):
            m = np.zeros((ndim, ndim), dtype=int)
            for i, j in enumerate(perm):
                m[i, j] = signs[i]
            if round(np.linalg.det(m)) == 1:
                mats.append(m)
    mats.sort(key=lambda m: (not np.array_equal(m, np.eye(ndim, dtype=int)),))
    return mats


def rotate_separable(kernels: Sequence[np.ndarray], rotation: np.ndarray) -> list[np.ndarray]:
    """Kernels of the rotated separable filter ``K'(x) = K(R^T x)``.

    ``kernels[j]`` acts along filter axis ``j``; the rotated filter uses kernel ``j`` along axis ``i``
    where ``R[i, j] != 0``, reversed when ``R[i, j] == -1`` (kernels are odd-length and centred).
    """
    out: list[np.ndarray] = [np.empty(0)] * len(kernels)
    for i in range(rotation.shape[0]):
        j = int(np.flatnonzero(rotation[i])[0])
        k = kernels[j]
        out[i] = k[::-1].copy() if rotation[i, j] < 0 else k
    return out


def kernel_key(kernels: Sequence[np.ndarray]) -> tuple[bytes, ...]:
    return tuple(np.ascontiguousarray(k).tobytes() + b"|" + str(k.size).encode() for k in kernels)


def unique_rotations(
    kernel_sets: Sequence[Sequence[np.ndarray]], ndim: int, rotation_invariance: bool
) -> list[list[list[np.ndarray]]]:
    """Rotate a chain of separable kernel sets together and drop duplicate chains.

    Every distinct rotated filter of the orbit is hit by the same number of rotations (orbit-stabiliser
    theorem), so max/min/average pooling over the distinct chains equals pooling over all rotations.
    """
    if not rotation_invariance:
        return [[list(ks) for ks in kernel_sets]]
    seen: set[tuple[tuple[bytes, ...], ...]] = set()
    chains: list[list[list[np.ndarray]]] = []
    for rot in right_angle_rotations(ndim):
        chain = [rotate_separable(ks, rot) for ks in kernel_sets]
        key = tuple(kernel_key(ks) for ks in chain)
        if key not in seen:
            seen.add(key)
            chains.append(chain)
    return chains


class Pool:
    """Running max/min/average pooling of response maps (numpy or dask)."""

    def __init__(self, pooling: Pooling | None):
        self.pooling = pooling
        self.acc: Any = None
        self.n = 0

    def add(self, x: Any) -> None:
        if self.acc is None:
            self.acc = x
        elif self.pooling == "max":
            self.acc = np.maximum(self.acc, x)
        elif self.pooling == "min":
            self.acc = np.minimum(self.acc, x)
        elif self.pooling == "average":
            self.acc = self.acc + x
        else:
            raise ValueError("more than one response map requires pooling")
        self.n += 1

    def result(self) -> Any:
        if self.acc is None:
            raise ValueError("no response map to pool")
        if self.pooling == "average" and self.n > 1:
            return self.acc / self.n
        return self.acc
