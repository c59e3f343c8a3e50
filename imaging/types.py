"""Type aliases and option sets shared by the pure modules.

One vocabulary everywhere: ``volume``, ``mask``, ``labels``, ``spacing``, ``affine``.
"""

from __future__ import annotations

from typing import Literal, TypeAlias

import dask.array as da
import numpy as np
import numpy.typing as npt

#: A volume in memory (numpy) or chunked and lazy (dask).
ArrayLike: TypeAlias = np.ndarray | da.Array

FloatArray: TypeAlias = npt.NDArray[np.floating]
BoolArray: TypeAlias = npt.NDArray[np.bool_]
IntArray: TypeAlias = npt.NDArray[np.integer]

#: Voxel size in millimetres, in array-axis order.
Spacing: TypeAlias = tuple[float, ...]
#: 4x4 homogeneous matrix, array index -> patient LPS millimetres.
Affine: TypeAlias = npt.NDArray[np.float64]

Interpolation = Literal["nearest", "linear", "cubic"]
BoundaryMode = Literal["constant", "nearest", "reflect", "mirror", "wrap"]
"""Padding at the volume border (IBSI-2: zero=constant, nearest, periodic=wrap, mirror=reflect)."""
Denoiser = Literal["none", "gaussian", "median", "bilateral", "nl_means", "anisotropic_diffusion"]
Normalisation = Literal["none", "zscore", "percentile", "window", "suv"]
Thresholding = Literal["otsu", "multi_otsu", "isocontour"]
Connectivity = Literal[1, 2, 3]
Discretisation = Literal["fbn", "fbs"]
Stage = Literal["collection", "preprocessing", "processing", "analysis", "discovery", "report"]

# --- IBSI-2 convolutional filters (imaging/filters, imaging/filter_spec.py) ---
IBSIBoundary = Literal["zero", "nearest", "periodic", "mirror"]
"""IBSI-2 boundary condition. NOTE: IBSI "mirror" (d c b a | a b c d) is scipy.ndimage mode ``reflect``
and numpy.pad mode ``symmetric``; IBSI "periodic" is scipy ``wrap``; IBSI "zero" is scipy ``constant`` (cval 0)."""
FilterType = Literal["mean", "log", "laws", "gabor", "wavelet"]
FilterDimensions = Literal["2D", "3D"]
"""2D: in-plane per slice (array axes 1 and 2); 3D: volumetric."""
Pooling = Literal["max", "min", "average"]
"""Pooling of the response maps of rotated filters (IBSI-2 rotation invariance)."""
GaborResponse = Literal["modulus", "real", "imaginary"]
EnhanceMethod = Literal["log", "gamma", "equalize", "clahe"]

# --- IBSI-1 feature extraction (imaging/features) ---
FeatureFamily = Literal["morph", "loc", "stat", "ih", "ivh", "cm", "rlm", "szm", "dzm", "ngt", "ngl"]
"""IBSI-1 feature families by their manual prefix (morphology, local intensity, statistics, intensity
histogram, intensity-volume histogram, GLCM, GLRLM, GLSZM, GLDZM, NGTDM, NGLDM)."""
IvhDiscretisation = Literal["none", "fbs", "fbn"]
TextureDimension = Literal["2d", "2.5d", "3d"]

# --- preprocessing, segmentation, detection (imaging/preprocess.py, segment.py, detect.py) ---
BiasFieldMethod = Literal["polynomial", "n4"]
"""MR bias-field correction: log-domain Legendre polynomial fit (pure numpy) or SimpleITK N4."""
Conductance = Literal["exponential", "quadratic"]
"""Perona-Malik edge-stopping function: exp(-(d/k)^2) or 1/(1+(d/k)^2)."""
RegistrationMetric = Literal["mattes_mi", "mean_squares", "correlation"]
RegistrationTransform = Literal["rigid", "affine"]
BlobMethod = Literal["log", "dog"]
"""Scale-space blob detector: Laplacian of Gaussian or difference of Gaussians."""
