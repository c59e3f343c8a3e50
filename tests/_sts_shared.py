"""One pipeline run of ../shared/data/sts_cohort per test session, shared by the cohort-report and case-base tests.

(A plain cached function rather than a fixture: pytest would run a session fixture imported
into two modules twice.)
"""

from __future__ import annotations

import functools
import pathlib
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
CONFIG = REPO / "docs" / "sts_cohort.yaml"


@functools.cache
def sts_run(shared: str) -> dict:
    """Run ``medflow run <cohort>/dicom --clinical <cohort>/clinical.csv --config docs/sts_cohort.yaml``."""
    from flows.pipeline import pipeline
    from medflow.config import load_config

    cohort = pathlib.Path(shared) / "sts_cohort"
    root = pathlib.Path(tempfile.mkdtemp(prefix="medflow-sts-"))
    cfg = load_config(CONFIG, source=str(cohort / "dicom"), workspace=str(root / "ws"),
                      clinical=str(cohort / "clinical.csv"))
    t0 = time.perf_counter()
    summary = pipeline(cfg)
    ws = pathlib.Path(summary["workspace"])
    return {"summary": summary, "seconds": time.perf_counter() - t0, "config": cfg, "ws": ws, "cohort": cohort,
            "discovery": ws / summary["discovery"], "report": ws / summary["report"]}
