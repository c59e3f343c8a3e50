"""The pipeline's path for per-voxel operations: float32 Zarr (``storage.volumes``) -> Dask chunks -> Zarr.

Run: ``python -m bench.bench_zarr_path [--shape 200 512 512] [--repeat 3] [--threads 2]``.

:mod:`bench.bench_voxel_ops` times kernels on in-memory int16 arrays with preallocated
outputs. The pipeline instead opens a float32 volume written by
:func:`storage.volumes.write_array` (the codec and chunking the pipeline writes), runs the
operation on the dask array :func:`storage.volumes.open_array` gives, and writes the result
with :func:`storage.volumes.write_array` (staged, then renamed), on Dask's threaded
scheduler with ``--threads`` workers (as ``tasks.common.dask_context`` does). This module
times exactly that, for each operation, next to:

* ``medflow_in_memory``: read the whole array (``read_numpy``), the medflow kernel on
  numpy with ``--threads`` threads, write it back (the same store and codec);
* ``dask_image``: the same Zarr in and out through ``dask_image.ndfilters`` (Gaussian,
  median), the natural Dask peer;
* ``scipy``: read the whole array, ``scipy.ndimage`` (1 thread), write it back.

Every tool gets the policy of :func:`bench._common.timed`: one untimed warm-up, then
``--repeat`` timed runs (median and minimum reported); the output folder is deleted
untimed before each run. Every output is read back and compared with scipy's
(max abs difference). Mvoxel/s = output voxels / median wall time, Zarr read and write
included. Rows are merged into ``bench/results.json``.
"""

from __future__ import annotations

import argparse
import pathlib
import shutil
import tempfile
from collections.abc import Callable
from typing import Any

import numpy as np

from bench._common import timed


def main(argv: list[str] | None = None) -> list[dict[str, Any]]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", type=int, nargs=3, default=(200, 512, 512))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="parent of the temporary stores (default: system temp)")
    ap.add_argument("--no-write", action="store_true", help="do not merge rows into bench/results.json")
    args = ap.parse_args(argv)

    import dask
    import scipy.ndimage as ndi

    from bench.bench_voxel_ops import synthetic_ct
    from imaging import preprocess as P
    from storage.volumes import geometry, open_array, read_numpy, write_array

    shape = tuple(int(v) for v in args.shape)
    threads = int(args.threads)
    spacing = (1.0, 1.0, 1.0)
    affine = np.eye(4)
    root = pathlib.Path(tempfile.mkdtemp(prefix="medflow-bench-zarr-", dir=args.workdir))
    rows: list[dict[str, Any]] = []
    try:
        vol = synthetic_ct(shape).astype(np.float32)
        src = root / "src"
        write_array(src, vol, affine=affine, spacing=spacing)
        stored = sum(p.stat().st_size for p in src.rglob("*") if p.is_file())
        z = open_array(src)
        print(f"volume {shape} float32 ({vol.size / 1e6:.0f} Mvoxel, {vol.nbytes / 2**20:.0f} MiB; "
              f"{stored / 2**20:.0f} MiB stored), Zarr chunks {z.data.chunksize}; dask threads {threads}", flush=True)
        del z

        def pipeline_path(op: Callable[[Any], Any]) -> Callable[[pathlib.Path], None]:
            def run(out: pathlib.Path) -> None:
                arr = open_array(src)
                aff, sp = geometry(arr.attrs)
                with dask.config.set(scheduler="threads", num_workers=threads):
                    write_array(out, op(arr.data), affine=aff, spacing=sp)
            return run

        def whole_array(op: Callable[[np.ndarray], np.ndarray]) -> Callable[[pathlib.Path], None]:
            def run(out: pathlib.Path) -> None:
                arr, attrs = read_numpy(src)
                aff, sp = geometry(attrs)
                write_array(out, op(arr), affine=aff, spacing=sp)
            return run

        ops: dict[str, dict[str, Callable[[pathlib.Path], None]]] = {
            "gaussian_sigma2": {
                "medflow": pipeline_path(lambda a: P.gaussian(a, spacing=spacing, sigma_mm=2.0)),
                "medflow_in_memory": whole_array(lambda a: P.gaussian(a, spacing=spacing, sigma_mm=2.0,
                                                                      n_threads=threads)),
                "scipy": whole_array(lambda a: ndi.gaussian_filter(a, 2.0, output=np.float32)),
            },
            "median_3x3x3": {
                "medflow": pipeline_path(lambda a: P.median(a, size=3)),
                "medflow_in_memory": whole_array(lambda a: P.median(a, size=3, n_threads=threads)),
                "scipy": whole_array(lambda a: ndi.median_filter(a, size=3)),
            },
            "window_clip": {
                "medflow": pipeline_path(lambda a: P.normalise(a, method="window", window=(-160, 240))),
                "medflow_in_memory": whole_array(lambda a: P.normalise(a, method="window", window=(-160, 240),
                                                                       n_threads=threads)),
                "numpy": whole_array(lambda a: np.clip(a, -160, 240).astype(np.float32)),
            },
        }
        try:
            from dask_image.ndfilters import gaussian_filter as dig
            from dask_image.ndfilters import median_filter as dim

            ops["gaussian_sigma2"]["dask_image"] = pipeline_path(lambda a: dig(a, 2.0))
            ops["median_3x3x3"]["dask_image"] = pipeline_path(lambda a: dim(a, size=3))
        except ImportError:
            print("dask_image not installed: its rows are skipped")

        nvox = int(np.prod(shape))
        for op, tools in ops.items():
            ref_tool = "scipy" if "scipy" in tools else "numpy"
            results: dict[str, Any] = {}
            outputs: dict[str, np.ndarray] = {}
            for tool, fn in tools.items():
                out = root / f"out-{op}-{tool}"

                def clean(out: pathlib.Path = out) -> None:
                    shutil.rmtree(out, ignore_errors=True)

                t = timed(lambda fn=fn, out=out: fn(out), repeat=args.repeat, warmup=1, setup=clean)
                results[tool] = t
                outputs[tool] = read_numpy(out)[0]
                clean()
                print(f"  {op:16s} {tool:18s} median {t.median:7.3f} s  min {t.min:7.3f} s  "
                      f"{nvox / t.median / 1e6:8.1f} Mvoxel/s", flush=True)
            ref = outputs[ref_tool].astype(np.float64)
            med = nvox / results["medflow"].median / 1e6
            for tool, t in results.items():
                mv = nvox / t.median / 1e6
                diff = float(np.abs(outputs[tool].astype(np.float64) - ref).max())
                rows.append({"operation": f"zarr_float32_{op}", "tool": tool, "mvoxel_per_s": round(mv, 2),
                             "ratio": round(med / mv, 3), **t.as_dict(), "n_voxels": nvox, "shape": list(shape),
                             "dtype": "float32", "path": "zarr->dask->zarr" if tool in ("medflow", "dask_image")
                             else "zarr->numpy->zarr",
                             "threads": 1 if tool in ("scipy", "numpy") else threads, "processes": 1,
                             f"max_abs_diff_vs_{ref_tool}": diff})
            del outputs
        print(f"\n{'operation':28s} {'tool':18s} {'Mvox/s':>9s} {'medflow/tool':>13s} {'max|diff|':>10s}")
        for r in rows:
            diff = r.get("max_abs_diff_vs_scipy", r.get("max_abs_diff_vs_numpy"))
            print(f"{r['operation']:28s} {r['tool']:18s} {r['mvoxel_per_s']:9.1f} {r['ratio']:13.2f} {diff:10.2e}")
        if not args.no_write:
            from bench._results import merge_results

            merge_results(rows, benchmark="bench_zarr_path",
                          run_facts={"policy": f"1 untimed warm-up + {args.repeat} timed runs per tool; median"})
            print("\nmerged into bench/results.json")
        return rows
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
