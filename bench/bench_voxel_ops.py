"""Per-voxel operations: medflow vs scipy.ndimage (1 thread), scikit-image, SimpleITK (all threads), cc3d.

Run: ``python -m bench.bench_voxel_ops [--shape 400 512 512] [--repeat 3]``.

A seeded synthetic CT-like int16 volume (body, lungs, bone, lesions, noise) is
processed by each tool in the same run; every tool gets the same policy (one untimed
warm-up call, then ``--repeat`` timed calls; the median is reported). The table gives
Mvoxel/s (output voxels per second) and medflow's throughput divided by each peer's;
each row records the threads the tool used. Each medflow result is checked against the scipy oracle (max abs diff).
Slow peers (scipy/scikit-image/SimpleITK median) are timed on a slab of the volume;
the throughput (per voxel) is what is compared. Streaming ops are also reported
as a fraction of the memory-copy bandwidth measured with ``np.copyto`` on an
array of the same size in the same run. Rows are merged into ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable
from typing import Any

import numpy as np

THREADS = 2


def synthetic_ct(shape: tuple[int, int, int], seed: int = 0) -> np.ndarray:
    """CT-like int16 volume in HU: air, body ellipse, two lungs, spine/ribs, lesions, noise (seeded)."""
    rng = np.random.default_rng(seed)
    n0, n1, n2 = shape
    y, x = np.meshgrid(np.linspace(-1, 1, n1, dtype=np.float32), np.linspace(-1, 1, n2, dtype=np.float32), indexing="ij")
    vol = np.empty(shape, dtype=np.int16)
    lesions = [(rng.uniform(0.1, 0.9) * n0, rng.uniform(-0.5, 0.5), rng.uniform(-0.6, 0.6), rng.uniform(0.02, 0.08))
               for _ in range(40)]
    for z in range(n0):
        t = z / max(n0 - 1, 1)
        s = np.float32(1.0 + 0.1 * np.sin(2 * np.pi * t))
        body = (x / (0.85 * s)) ** 2 + (y / (0.6 * s)) ** 2 < 1
        lung_l = ((x + 0.38) / 0.28) ** 2 + ((y + 0.05) / (0.4 * (0.5 + t))) ** 2 < 1
        lung_r = ((x - 0.38) / 0.28) ** 2 + ((y + 0.05) / (0.4 * (0.5 + t))) ** 2 < 1
        spine = (x / 0.09) ** 2 + ((y - 0.42) / 0.09) ** 2 < 1
        sl = np.full((n1, n2), -1000.0, dtype=np.float32)
        sl[body] = 40.0
        sl[lung_l | lung_r] = -820.0
        sl[spine] = 700.0
        for zc, yc, xc, r in lesions:
            dz = (z - zc) / n0
            rr = r * r - dz * dz
            if rr > 0:
                sl[(x - xc) ** 2 + (y - yc) ** 2 < rr] = 60.0
        sl += rng.normal(0.0, 20.0, size=(n1, n2)).astype(np.float32)
        vol[z] = np.clip(sl, -1024, 3071).astype(np.int16)
    return vol


def best_time(fn: Callable[[], Any], repeat: int, *, warmup: bool = True) -> tuple[float, Any]:
    """The benchmark policy for every tool: one untimed call (unless ``warmup=False``), then ``repeat``
    timed calls; returns the median wall time and the last result (:func:`bench._common.timed`)."""
    from bench._common import timed

    t = timed(fn, repeat=repeat, warmup=1 if warmup else 0)
    return t.median, t.result


def _sitk(threads: int) -> Any:
    try:
        import SimpleITK as sitk
    except ImportError:
        return None
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(threads)
    return sitk


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(400, 512, 512))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="do not merge rows into bench/results.json")
    args = ap.parse_args(argv)

    import scipy.ndimage as ndi

    from bench._results import merge_results
    from imaging import kernels as K
    from imaging import preprocess as P
    from imaging import segment as S

    shape = tuple(args.shape)
    rep = max(1, args.repeat)
    sitk = _sitk(os.cpu_count() or THREADS)
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; medflow threads={THREADS}; "
          f"volume {shape} int16 ({np.prod(shape) / 1e6:.0f} Mvoxel)")
    t0 = time.perf_counter()
    vol = synthetic_ct(shape)
    print(f"synthetic CT generated in {time.perf_counter() - t0:.1f} s")
    nvox = vol.size
    rows: list[dict[str, Any]] = []
    notes: dict[str, str] = {}

    def record(op: str, results: dict[str, tuple[float, int]], extra: dict[str, Any] | None = None) -> None:
        med = results["medflow"][1] / results["medflow"][0] / 1e6
        for tool, (sec, n) in results.items():
            mv = n / sec / 1e6
            row = {"operation": op, "tool": tool, "mvoxel_per_s": round(mv, 2), "ratio": round(med / mv, 3),
                   "seconds": round(sec, 4), "n_voxels": int(n), "shape": list(shape),
                   "processes": 1, "threads": THREADS if tool in ("medflow", "dask_image") else (1 if tool in ("scipy", "skimage", "numpy") else os.cpu_count())}
            if extra and tool == "medflow":
                row.update(extra)
            rows.append(row)

    # ------------------------------------------------------------------ Gaussian sigma = 2 mm
    sp = (1.0, 1.0, 1.0)
    out = np.empty(shape, np.float32)
    P.gaussian(vol[:16], spacing=sp, sigma_mm=2.0)  # compile
    t_med, _ = best_time(lambda: P.gaussian(vol, spacing=sp, sigma_mm=2.0, out=out, n_threads=THREADS), rep)
    ref = np.empty(shape, np.float32)
    t_sci, _ = best_time(lambda: ndi.gaussian_filter(vol, 2.0, output=ref), rep)
    diff = float(np.abs(out - ref).max())
    res = {"medflow": (t_med, nvox), "scipy": (t_sci, nvox)}
    sub = vol[:100]
    from skimage.filters import gaussian as sk_gaussian

    t_sk, _ = best_time(lambda: sk_gaussian(sub, sigma=2.0, preserve_range=True), rep)
    res["skimage"] = (t_sk, sub.size)
    if sitk is not None:
        img = sitk.GetImageFromArray(vol.astype(np.float32))
        t_it, _ = best_time(lambda: sitk.SmoothingRecursiveGaussian(img, 2.0), rep)
        res["simpleitk"] = (t_it, nvox)
        del img
    try:
        import dask.array as da
        from dask_image.ndfilters import gaussian_filter as dig

        dv = da.from_array(vol, chunks=(100, shape[1], shape[2]))

        def run_dask_image() -> None:
            da.store(dig(dv.astype(np.float32), 2.0), ref, scheduler="threads", num_workers=THREADS)

        t_di, _ = best_time(run_dask_image, rep)
        res["dask_image"] = (t_di, nvox)
    except ImportError:
        pass
    record("gaussian_sigma2", res, {"max_abs_diff_vs_scipy": diff})
    notes["gaussian_sigma2"] = f"max |medflow - scipy| = {diff:.2e} HU (float32); skimage timed on {sub.shape}"

    # ------------------------------------------------------------------ median 3x3x3 int16
    mo = np.empty(shape, np.int16)
    P.median(vol[:8], size=3)
    t_med, _ = best_time(lambda: P.median(vol, size=3, out=mo, n_threads=THREADS), rep)
    sub = vol[:40]
    t_sci, ref_m = best_time(lambda: ndi.median_filter(sub, size=3), rep)
    equal = bool(np.array_equal(ref_m, P.median(sub, size=3)))
    res = {"medflow": (t_med, nvox), "scipy": (t_sci, sub.size)}
    from skimage.filters import median as sk_median

    t_sk, _ = best_time(lambda: sk_median(sub, footprint=np.ones((3, 3, 3), bool)), rep)
    res["skimage"] = (t_sk, sub.size)
    if sitk is not None:
        sub_it = vol[:100]
        img = sitk.GetImageFromArray(sub_it)
        t_it, r_it = best_time(lambda: sitk.Median(img, [1, 1, 1]), rep)
        res["simpleitk"] = (t_it, sub_it.size)
        del img, r_it
    record("median_3x3x3_int16", res, {"identical_to_scipy": equal})
    notes["median_3x3x3_int16"] = f"bit-identical to scipy on {sub.shape}: {equal}; scipy/skimage on {sub.shape}, SimpleITK on (100, ...)"

    # ------------------------------------------------------------------ resampling (linear) to 1 mm
    sp_in, sp_out = (1.5, 0.8, 0.8), (1.0, 1.0, 1.0)
    new_shape, coords, index_map = P.ibsi_grid(shape, sp_in, sp_out)
    nout = int(np.prod(new_shape))
    P.resample(vol[:8, :64, :64], spacing=sp_in, new_spacing=sp_out)
    t_med, r_med = best_time(lambda: P.resample(vol, spacing=sp_in, new_spacing=sp_out, interpolation="linear", n_threads=THREADS)[0], rep)
    diag = [index_map[a, a] for a in range(3)]
    off = [index_map[a, 3] for a in range(3)]
    t_sci, r_sci = best_time(lambda: ndi.affine_transform(vol, diag, offset=off, output_shape=new_shape, order=1,
                                                         mode="nearest", output=np.float32), rep)
    diff = float(np.abs(r_med - r_sci).max())
    del r_sci
    res = {"medflow": (t_med, nout), "scipy": (t_sci, nout)}
    from skimage.transform import resize

    t_sk, _ = best_time(lambda: resize(vol[:100], (int(new_shape[0] * 100 / shape[0]), new_shape[1], new_shape[2]),
                                      order=1, mode="edge", anti_aliasing=False, preserve_range=True), rep)
    res["skimage"] = (t_sk, int(new_shape[0] * 100 / shape[0]) * new_shape[1] * new_shape[2])
    if sitk is not None:
        img = sitk.GetImageFromArray(vol)
        img.SetSpacing(sp_in[::-1])
        origin = [off[a] * sp_in[a] for a in range(3)][::-1]

        def run_sitk() -> Any:
            return sitk.Resample(img, list(new_shape[::-1]), sitk.Transform(), sitk.sitkLinear, origin, sp_out[::-1],
                                 img.GetDirection(), 0.0, sitk.sitkFloat32)

        t_it, r_it = best_time(run_sitk, rep)
        res["simpleitk"] = (t_it, nout)
        del img, r_it
    record("resample_linear_to_1mm", res, {"max_abs_diff_vs_scipy": diff, "output_shape": list(new_shape)})
    notes["resample_linear_to_1mm"] = f"{shape} @ {sp_in} mm -> {new_shape} @ 1 mm (IBSI grid); max |medflow - scipy| = {diff:.2e}"
    del r_med

    # ------------------------------------------------------------------ Otsu threshold (histogram)
    t_med, thr = best_time(lambda: S.otsu_threshold(vol), rep)
    from skimage.filters import threshold_otsu

    t_sk, thr_sk = best_time(lambda: threshold_otsu(vol), rep)
    res = {"medflow": (t_med, nvox), "skimage": (t_sk, nvox)}
    if sitk is not None:
        img = sitk.GetImageFromArray(vol)
        f = sitk.OtsuThresholdImageFilter()
        t_it, _ = best_time(lambda: f.Execute(img), rep)
        res["simpleitk"] = (t_it, nvox)
        del img
    record("otsu_threshold", res, {"threshold": thr, "equal_to_skimage": bool(thr == thr_sk)})
    notes["otsu_threshold"] = f"threshold {thr} (skimage {thr_sk})"

    # ------------------------------------------------------------------ connected components
    mask = vol > thr
    # blobby mask with tens of thousands of components: smoothed white noise above 1 SD
    noise = np.random.default_rng(1).standard_normal(shape, dtype=np.float32)
    smooth = K.gaussian_filter(noise, (1.5, 1.5, 1.5), n_threads=THREADS)
    many = smooth > smooth[::4, ::4, ::4].std()
    del noise, smooth
    for op, m in (("label_otsu_mask_conn1", mask), ("label_many_components_conn1", many)):
        # every tool gets one untimed warm-up call (JIT/cache loading, first-touch of output pages)
        t_med, (lab, n) = best_time(lambda m=m: S.label(m, connectivity=1), rep)
        t_sci, (lab_s, n_s) = best_time(lambda m=m: ndi.label(m), rep)
        same = bool(n == n_s and np.array_equal(lab, lab_s))
        del lab_s
        res = {"medflow": (t_med, nvox), "scipy": (t_sci, nvox)}
        from skimage.measure import label as sk_label

        t_sk, _ = best_time(lambda m=m: sk_label(m, connectivity=1), rep)
        res["skimage"] = (t_sk, nvox)
        try:
            import cc3d

            t_cc, _ = best_time(lambda m=m: cc3d.connected_components(m, connectivity=6), rep)
            res["cc3d"] = (t_cc, nvox)
        except ImportError:
            pass
        if sitk is not None:
            img = sitk.GetImageFromArray(m.view(np.uint8))
            t_it, _ = best_time(lambda img=img: sitk.ConnectedComponent(img, False), rep)
            res["simpleitk"] = (t_it, nvox)
            del img
        record(op, res, {"n_components": n, "identical_to_scipy": same})
        notes[op] = f"{n} components; identical to scipy.ndimage.label: {same}"
        del lab

    # ------------------------------------------------------------------ streaming per-voxel ops
    # copy bandwidth and the streaming op are timed alternately (best of 2 x repeat + 1 each), so both
    # see the same machine state on this shared 2-core box
    src32 = vol.astype(np.float32)
    dst32 = np.empty_like(src32)
    win = np.empty(shape, np.float32)
    P.normalise(vol[:2], method="window", window=(-160, 240))
    # (the fraction of copy bandwidth uses these alternated minima; the tool comparison uses the policy median)
    t_copy = t_win_alt = float("inf")
    for _ in range(2 * rep + 1):
        t_copy = min(t_copy, best_time(lambda a=dst32, b=src32: np.copyto(a, b), 1, warmup=False)[0])
        t_win_alt = min(t_win_alt, best_time(lambda w=win: P.normalise(vol, method="window", window=(-160, 240),
                                                                        out=w, n_threads=THREADS), 1, warmup=False)[0])
    copy_gbs = 2 * src32.nbytes / t_copy / 1e9
    del src32, dst32
    t_win, _ = best_time(lambda w=win: P.normalise(vol, method="window", window=(-160, 240), out=w,
                                                   n_threads=THREADS), rep)
    t_np, _ = best_time(lambda w=win: np.clip(vol, -160, 240, out=w, casting="unsafe"), rep)
    win_gbs = (vol.nbytes + win.nbytes) / t_win_alt / 1e9
    res = {"medflow": (t_win, nvox), "numpy": (t_np, nvox)}
    if sitk is not None:
        img = sitk.GetImageFromArray(vol)
        t_it, _ = best_time(lambda: sitk.Clamp(img, sitk.sitkFloat32, -160, 240), rep)
        res["simpleitk"] = (t_it, nvox)
        del img
    record("window_clip_int16_to_float32", res, {"gb_per_s": round(win_gbs, 2), "copy_gb_per_s": round(copy_gbs, 2),
                                                 "fraction_of_copy_bandwidth": round(win_gbs / copy_gbs, 3)})
    notes["window_clip_int16_to_float32"] = (f"{win_gbs:.1f} GB/s moved = {win_gbs / copy_gbs:.0%} of np.copyto "
                                             f"({copy_gbs:.1f} GB/s, float32 {shape}); into a preallocated output")
    del win
    try:
        from imaging.enhance import log_transform
    except ImportError:
        log_transform = None
        notes["log_transform"] = "imaging.enhance.log_transform not available: not benchmarked"
    if log_transform is not None:
        log_transform(vol[:2])
        log_out = np.empty(vol.shape, dtype=np.float32)  # preallocated, as for window/clip
        t_log, r_log = best_time(lambda: log_transform(vol, out=log_out), rep)
        lo = float(vol.min())
        t_np, r_np = best_time(lambda: np.log1p(vol.astype(np.float32) - np.float32(lo)), rep)
        diff = float(np.abs(r_log - r_np).max())
        del r_log, r_np
        log_gbs = (vol.nbytes + 4 * nvox) / t_log / 1e9
        res = {"medflow": (t_log, nvox), "numpy": (t_np, nvox)}
        if sitk is not None:
            img = sitk.GetImageFromArray(vol)
            shifted = sitk.Cast(img, sitk.sitkFloat32) - (lo - 1.0)
            t_it, _ = best_time(lambda: sitk.Log(shifted), rep)
            res["simpleitk"] = (t_it, nvox)
            del img, shifted
        record("log_transform", res, {"gb_per_s": round(log_gbs, 2), "copy_gb_per_s": round(copy_gbs, 2),
                                      "fraction_of_copy_bandwidth": round(log_gbs / copy_gbs, 3),
                                      "max_abs_diff_vs_numpy": diff})
        notes["log_transform"] = (f"imaging.enhance.log_transform (integer table lookup into a preallocated "
                                  f"output): {log_gbs:.1f} GB/s = "
                                  f"{log_gbs / copy_gbs:.0%} of copy bandwidth; max |diff| vs numpy {diff:.1e}")

    # ------------------------------------------------------------------ report
    print(f"\n{'operation':34s} {'tool':11s} {'Mvox/s':>9s} {'medflow/tool':>13s}")
    for r in rows:
        print(f"{r['operation']:34s} {r['tool']:11s} {r['mvoxel_per_s']:9.1f} {r['ratio']:13.2f}")
    print()
    for op, note in notes.items():
        print(f"- {op}: {note}")
    by = {(r["operation"], r["tool"]): r for r in rows}
    print("\ntargets:")
    for op in ("gaussian_sigma2", "median_3x3x3_int16"):
        sci = by.get((op, "scipy"), {}).get("ratio", float("nan"))
        itk = by.get((op, "simpleitk"), {}).get("ratio", float("nan"))
        ok = sci >= 1.6 and itk >= 1.3
        print(f"  {op}: {sci:.2f}x scipy (>= 1.6), {itk:.2f}x SimpleITK (>= 1.3): {'PASS' if ok else 'FAIL'}")
    for op in ("label_otsu_mask_conn1", "label_many_components_conn1"):
        worst = min(by.get((op, t), {}).get("ratio", float("inf")) for t in ("simpleitk", "cc3d"))
        print(f"  {op}: {worst:.2f}x the faster of SimpleITK/cc3d (>= 1.0): {'PASS' if worst >= 1.0 else 'FAIL'}")
    for op in ("window_clip_int16_to_float32", "log_transform"):
        r = by.get((op, "medflow"))
        if r:
            frac = r["fraction_of_copy_bandwidth"]
            print(f"  {op}: {frac:.0%} of copy bandwidth (>= 50%): {'PASS' if frac >= 0.5 else 'FAIL'}")
    if not args.no_write:
        merge_results(rows, benchmark="bench_voxel_ops",
                      run_facts={"policy": f"1 untimed warm-up + {rep} timed calls per tool; median"})
        print("\nmerged into bench/results.json")
    return rows


if __name__ == "__main__":
    main()
