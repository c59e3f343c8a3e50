"""Out of core: Zarr int16 volume -> Gaussian -> Otsu (chunked histogram) -> labels -> Zarr, under a memory budget.

Run: ``python -m bench.bench_out_of_core [--size 1024 2048 2048] [--budget-gib 2] [--workdir DIR] [--keep]``.

The input (default 1024 x 2048 x 2048 int16 = 8 GiB) is written to a Zarr store by a
*separate process*, so this process's peak RSS (``resource.getrusage`` ru_maxrss, and
a psutil sampler) covers only imports + the pipeline
(:func:`imaging.streaming.smooth_threshold_label`). Correctness is checked on
sampled sub-blocks (Gaussian vs scipy; labels > 0 exactly where smoothed > threshold;
labels consistent across slab borders) and, for volumes up to 64 Mvoxel, against the
whole in-core result. Temporary stores are deleted unless ``--keep``.
"""

from __future__ import annotations

import argparse
import pathlib
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import numpy as np

CHUNKS = (8, 512, 512)


def _compressor() -> Any:
    from zarr.codecs import BloscCodec

    return BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def generate(path: str, shape: tuple[int, int, int], seed: int = 0) -> None:
    """Write a seeded CT-like int16 volume slab by slab (tile of structures + per-slab noise)."""
    import zarr

    from bench.bench_voxel_ops import synthetic_ct

    z = zarr.create_array(store=path, shape=shape, chunks=CHUNKS, dtype="int16", compressors=_compressor(), overwrite=True)
    tile = synthetic_ct((64, shape[1], shape[2]), seed=seed)
    rng = np.random.default_rng(seed + 1)
    step = 64
    for a in range(0, shape[0], step):
        b = min(shape[0], a + step)
        blk = np.roll(tile[: b - a], shift=(int(rng.integers(0, shape[1] // 8)), int(rng.integers(0, shape[2] // 8))), axis=(1, 2))
        blk = blk + rng.integers(-15, 16, size=blk.shape, dtype=np.int16)
        z[a:b] = blk


class PeakSampler(threading.Thread):
    def __init__(self, period: float = 0.05) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.period = period
        self.peak = 0
        self._stop_evt = threading.Event()

    def run(self) -> None:
        while not self._stop_evt.is_set():
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(self.period)

    def stop(self) -> int:
        self._stop_evt.set()
        self.join()
        return self.peak


def _du(path: pathlib.Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, nargs=3, default=(1024, 2048, 2048))
    ap.add_argument("--budget-gib", type=float, default=2.0)
    ap.add_argument("--sigma-mm", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="parent folder for the temporary stores (default: system temp)")
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--no-write", action="store_true", help="do not merge rows into bench/results.json")
    ap.add_argument("--generate-only", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    shape = tuple(int(v) for v in args.size)
    if args.generate_only:
        generate(args.generate_only, shape)  # type: ignore[arg-type]
        return {}

    import zarr

    from bench._results import merge_results
    from imaging import streaming as ST

    budget = int(args.budget_gib * 2**30)
    nvox = int(np.prod(shape))
    root = pathlib.Path(tempfile.mkdtemp(prefix="medflow-ooc-", dir=args.workdir))
    src_path, sm_path, lab_path = root / "ct.zarr", root / "smoothed.zarr", root / "labels.zarr"
    print(f"volume {shape} int16 = {nvox * 2 / 2**30:.2f} GiB; budget {args.budget_gib} GiB; threads {args.threads}; stores in {root}")
    try:
        t0 = time.perf_counter()
        repo = pathlib.Path(__file__).resolve().parents[1]
        subprocess.run([sys.executable, "-m", "bench.bench_out_of_core", "--size", *map(str, shape), "--generate-only", str(src_path)],
                       check=True, cwd=repo)
        t_gen = time.perf_counter() - t0
        print(f"input written by a child process in {t_gen:.1f} s ({_du(src_path) / 2**30:.2f} GiB on disk)")

        src = zarr.open_array(str(src_path), mode="r")
        smoothed = zarr.create_array(store=str(sm_path), shape=shape, chunks=CHUNKS, dtype="float32", compressors=_compressor())
        labels = zarr.create_array(store=str(lab_path), shape=shape, chunks=CHUNKS, dtype="int32", compressors=_compressor())
        rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        sampler = PeakSampler()
        sampler.start()
        res = ST.smooth_threshold_label(src, smoothed, labels, spacing=(1.0, 1.0, 1.0), sigma_mm=args.sigma_mm,
                                        memory_budget_bytes=budget, n_threads=args.threads)
        peak_sampled = sampler.stop()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        sec = res["seconds"]
        print(f"\nthreshold {res['threshold']:.3f}, {res['n_labels']} components")
        for k in ("gaussian", "otsu", "label", "total"):
            print(f"  {k:9s} {sec[k]:7.1f} s  {nvox / sec[k] / 1e6:7.1f} Mvoxel/s")
        print(f"peak RSS (ru_maxrss) {peak / 2**30:.2f} GiB (before the pipeline {rss_before / 2**30:.2f} GiB), "
              f"sampled {peak_sampled / 2**30:.2f} GiB; budget {args.budget_gib:.2f} GiB: "
              f"{'OK' if peak <= budget else 'OVER BUDGET'}")
        print(f"stores: smoothed {_du(sm_path) / 2**30:.2f} GiB, labels {_du(lab_path) / 2**30:.2f} GiB")

        # ---- correctness on samples
        import scipy.ndimage as ndi

        checks: dict[str, Any] = {}
        rng = np.random.default_rng(0)
        r = int(4 * args.sigma_mm + 0.5)
        diffs = []
        for _ in range(3):
            c = [int(rng.integers(0, n)) for n in shape]
            lo = [max(0, v - 40) for v in c]
            hi = [min(n, v + 40) for v, n in zip(c, shape, strict=True)]
            glo = [max(0, v - r) for v in lo]
            ghi = [min(n, v + r) for v, n in zip(hi, shape, strict=True)]
            block = np.asarray(src[glo[0]:ghi[0], glo[1]:ghi[1], glo[2]:ghi[2]], dtype=np.float64)
            ref = ndi.gaussian_filter(block, args.sigma_mm)
            # compare voxels whose kernel lies inside the block, or is mirrored at the true volume border
            ok = tuple(slice(0 if g == 0 else r, (gh - g) if gh == n else (gh - g) - r)
                       for g, gh, n in zip(glo, ghi, shape, strict=True))
            got = np.asarray(smoothed[glo[0]:ghi[0], glo[1]:ghi[1], glo[2]:ghi[2]])
            diffs.append(float(np.abs(got[ok] - ref[ok]).max()))
        checks["gaussian_max_abs_diff_vs_scipy"] = max(diffs)
        thr = res["threshold"]
        consistent = True
        for z0 in rng.integers(0, shape[0] - 2, size=4):
            sm = np.asarray(smoothed[z0:z0 + 2])
            lb = np.asarray(labels[z0:z0 + 2])
            consistent &= bool(np.array_equal(lb > 0, sm > thr))
            # a label seen on two adjacent planes at face-touching voxels must be the same label
            both = (lb[0] > 0) & (lb[1] > 0)
            consistent &= bool(np.array_equal(lb[0][both], lb[1][both]))
        checks["labels_match_threshold_and_cross_plane"] = consistent
        if nvox <= 64 * 2**20:
            full_sm = np.asarray(smoothed[:])
            ref_lab, ref_n = ndi.label(full_sm > thr)
            checks["labels_identical_to_scipy_in_core"] = bool(ref_n == res["n_labels"] and np.array_equal(np.asarray(labels[:]), ref_lab))
        print("checks:", checks)
        row = {"operation": "out_of_core_gaussian_otsu_label", "tool": "medflow", "mvoxel_per_s": round(nvox / sec["total"] / 1e6, 2),
               "ratio": 1.0, "shape": list(shape), "gib": round(nvox * 2 / 2**30, 2), "budget_gib": args.budget_gib,
               "peak_rss_gib": round(peak / 2**30, 3), "peak_rss_sampled_gib": round(peak_sampled / 2**30, 3),
               "seconds": {k: round(v, 2) for k, v in sec.items()}, "threads": args.threads, "n_labels": res["n_labels"],
               "threshold": res["threshold"], "checks": checks}
        if not args.no_write:
            merge_results([row], benchmark="bench_out_of_core")
        return row
    finally:
        if args.keep:
            print(f"kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
            print(f"removed {root}")


if __name__ == "__main__":
    main()
