"""First-order IBSI-1 features: local intensity, intensity statistics, intensity
histogram and intensity-volume histogram.

Every function returns a ``dict`` mapping the IBSI feature key (``stat.mean``)
to a float.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi
from scipy import signal

from imaging.features.preprocess import IvhData

#: Radius (mm) of the 1 cm^3 sphere of the local intensity features: (3 / (4 pi))^(1/3) cm.
PEAK_RADIUS_MM = 10.0 * (3.0 / (4.0 * np.pi)) ** (1.0 / 3.0)


def sphere_kernel(spacing: tuple[float, ...], radius_mm: float = PEAK_RADIUS_MM) -> np.ndarray:
    """Boolean kernel of the voxels whose centres lie within ``radius_mm`` of the centre voxel."""
    sp = np.asarray(spacing, dtype=np.float64)
    half = np.floor(radius_mm / sp + 1e-9).astype(int)
    grids = np.meshgrid(*[np.arange(-h, h + 1) * s for h, s in zip(half, sp, strict=True)], indexing="ij")
    dist2 = sum(g * g for g in grids)
    return dist2 <= radius_mm * radius_mm * (1 + 1e-12)


def local_intensity_features(image: np.ndarray, intensity_mask: np.ndarray, *,
                             spacing: tuple[float, ...]) -> dict[str, float]:
    """Local (VJGA) and global (0F91) intensity peak.

    The mean intensity of all image voxels (inside or outside the ROI) whose
    centres lie within the 1 cm^3 sphere around a centre voxel; voxels beyond
    the image border do not count. ``image`` must extend at least one sphere
    radius beyond the ROI wherever the original image does.

    Parameters
    ----------
    image : ndarray (n0, n1, n2), float
        The (interpolated) image, not masked.
    intensity_mask : ndarray of bool
    spacing : tuple of 3 float, mm
    """
    img = np.asarray(image, dtype=np.float64)
    m = np.asarray(intensity_mask, dtype=bool)
    kernel = sphere_kernel(spacing).astype(np.float64)
    # only the centres inside the ROI matter: crop to the ROI bounding box plus the kernel radius
    idx = np.nonzero(m)
    half = [(k - 1) // 2 for k in kernel.shape]
    lo = [max(int(i.min()) - h, 0) for i, h in zip(idx, half, strict=True)]
    hi = [min(int(i.max()) + h + 1, n) for i, h, n in zip(idx, half, img.shape, strict=True)]
    sl = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
    sub, msub = img[sl], m[sl]
    if kernel.size <= 343:
        total = ndi.correlate(sub, kernel, mode="constant", cval=0.0)
        count = ndi.correlate(np.ones_like(sub), kernel, mode="constant", cval=0.0)
    else:
        total = signal.fftconvolve(sub, kernel, mode="same")
        count = np.rint(signal.fftconvolve(np.ones_like(sub), kernel, mode="same"))
    mean = total / count
    vals = sub[msub]
    peaks = mean[msub]
    local = float(peaks[vals == vals.max()].max())
    return {"loc.peak.local": local, "loc.peak.global": float(peaks.max())}


def _moments(x: np.ndarray) -> tuple[float, float, float, float]:
    mu = float(x.mean())
    d = x - mu
    var = float(np.mean(d * d))
    if var == 0.0:
        return mu, 0.0, 0.0, 0.0
    skew = float(np.mean(d ** 3) / var ** 1.5)
    kurt = float(np.mean(d ** 4) / var ** 2 - 3.0)
    return mu, var, skew, kurt


def _dispersion(x: np.ndarray, prefix: str) -> dict[str, float]:
    """Features shared by the statistics and the histogram families (same definitions)."""
    mu, var, skew, kurt = _moments(x)
    p10, p25, p50, p75, p90 = np.percentile(x, [10, 25, 50, 75, 90])
    robust = x[(x >= p10) & (x <= p90)]
    out = {
        f"{prefix}.mean": mu,
        f"{prefix}.var": var,
        f"{prefix}.skew": skew,
        f"{prefix}.kurt": kurt,
        f"{prefix}.median": float(p50),
        f"{prefix}.min": float(x.min()),
        f"{prefix}.p10": float(p10),
        f"{prefix}.p90": float(p90),
        f"{prefix}.max": float(x.max()),
        f"{prefix}.iqr": float(p75 - p25),
        f"{prefix}.range": float(x.max() - x.min()),
        f"{prefix}.mad": float(np.mean(np.abs(x - mu))),
        f"{prefix}.rmad": float(np.mean(np.abs(robust - robust.mean()))),
        f"{prefix}.medad": float(np.mean(np.abs(x - p50))),
        f"{prefix}.cov": float(np.sqrt(var) / mu) if mu != 0 else float("nan"),
        f"{prefix}.qcod": float((p75 - p25) / (p75 + p25)) if (p75 + p25) != 0 else float("nan"),
    }
    return out


def statistics_features(values: np.ndarray) -> dict[str, float]:
    """Intensity-based statistical features (UHIW) of the intensity-mask voxels.

    Population (biased) moments; kurtosis is the *excess* kurtosis (IPH6);
    percentiles use linear interpolation between order statistics.
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ValueError("values is empty: the intensity mask holds no voxel")
    out = _dispersion(x, "stat")
    out["stat.energy"] = float(np.sum(x * x))
    out["stat.rms"] = float(np.sqrt(np.mean(x * x)))
    return out


def histogram_features(levels: np.ndarray, n_levels: int) -> dict[str, float]:
    """Intensity histogram features (ZVCW) of the discretised grey levels ``1..n_levels``.

    The histogram runs over every level ``1..N_g`` (empty bins included); its
    gradient is the central difference inside and the one-sided difference at
    both ends; the mode is the most frequent level (ties: the one nearest the mean).
    """
    x = np.asarray(levels).ravel().astype(np.float64)
    if x.size == 0:
        raise ValueError("levels is empty: the intensity mask holds no voxel")
    out = _dispersion(x, "ih")
    hist = np.bincount(np.asarray(levels).ravel().astype(np.int64), minlength=n_levels + 1)[1:].astype(np.float64)
    g = np.arange(1, hist.size + 1, dtype=np.float64)
    p = hist / x.size
    nz = p > 0
    out["ih.entropy"] = float(-np.sum(p[nz] * np.log2(p[nz])))
    out["ih.uniformity"] = float(np.sum(p * p))
    modes = g[hist == hist.max()]
    out["ih.mode"] = float(modes[np.argmin(np.abs(modes - out["ih.mean"]))])
    grad = np.gradient(hist) if hist.size > 1 else np.zeros(1)
    out["ih.max.grad"] = float(grad.max())
    out["ih.max.grad.gl"] = float(g[np.argmax(grad)])
    out["ih.min.grad"] = float(grad.min())
    out["ih.min.grad.gl"] = float(g[np.argmin(grad)])
    return out


def ivh_curve(data: IvhData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Grey levels ``i`` of the total range G, their fractions gamma and volume fractions nu.

    ``nu_i = 1 - #(X < i) / N_v`` and ``gamma_i = (i - min G) / (max G - min G)``.
    """
    n = int(np.floor((data.range_max - data.range_min) / data.interval + 1e-9)) + 1
    levels = data.range_min + data.interval * np.arange(max(n, 1))
    x = np.sort(data.values)
    # tolerate floating noise in bin centres: compare with half an interval of slack
    below = np.searchsorted(x, levels - 1e-9 * max(1.0, abs(data.interval)), side="left")
    nu = 1.0 - below / x.size
    span = data.range_max - data.range_min
    gamma = (levels - data.range_min) / span if span > 0 else np.zeros_like(levels)
    return levels, gamma, nu


def ivh_features(data: IvhData) -> dict[str, float]:
    """Intensity-volume histogram features (P88C).

    ``V_x``: the largest volume fraction nu with an intensity fraction gamma >= x.
    ``I_x``: the lowest grey level i whose volume fraction nu <= x (the maximum
    grey level + w_d when none is). AUC by the trapezoidal rule over gamma.
    """
    levels, gamma, nu = ivh_curve(data)

    def v_at(frac: float) -> float:
        sel = gamma >= frac - 1e-12
        return float(nu[sel].max()) if np.any(sel) else 0.0

    def i_at(frac: float) -> float:
        sel = nu <= frac + 1e-12
        return float(levels[sel].min()) if np.any(sel) else float(levels.max() + data.interval)

    v10, v90, i10, i90 = v_at(0.10), v_at(0.90), i_at(0.10), i_at(0.90)
    auc = float(np.trapezoid(nu, gamma)) if levels.size > 1 else 0.0
    return {
        "ivh.v10": v10, "ivh.v90": v90, "ivh.i10": i10, "ivh.i90": i90,
        "ivh.v10minusv90": v10 - v90, "ivh.i10minusi90": i10 - i90, "ivh.auc": auc,
    }
