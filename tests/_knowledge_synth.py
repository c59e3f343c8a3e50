"""Synthetic long feature tables for the knowledge tests: the sts clinical sheet's patients,
CT/PET/MR GTV features of pure noise plus (optionally) a few PET features that carry the label."""

from __future__ import annotations

import numpy as np
import pandas as pd

STS_SCHEMA = {
    "columns": [
        {"name": "Patient ID", "role": "identifier", "type": "categorical"},
        {"name": "Age", "role": "predictor", "type": "numeric"},
        {"name": "Sex", "role": "predictor", "type": "binary"},
        {"name": "Histological type", "role": "predictor", "type": "categorical"},
        {"name": "MSKCC type", "role": "predictor", "type": "categorical"},
        {"name": "Site of primary STS", "role": "predictor", "type": "categorical"},
        {"name": "Grade", "role": "predictor", "type": "categorical"},
        {"name": "Time – diagnosis to MRI scan (days)", "role": "predictor", "type": "numeric"},
        {"name": "Time – MRI scan to PET scan (days)", "role": "predictor", "type": "numeric"},
        {"name": "Treatment", "role": "treatment", "type": "categorical"},
        {"name": "Outcome (recurrence, mets)", "role": "post_baseline", "type": "categorical"},
        {"name": "lung_mets", "role": "label", "type": "binary",
         "derive": {"source": "Outcome (recurrence, mets)", "contains": ["lung"]}},
        {"name": "Time – diagnosis to outcome (days)", "role": "post_baseline", "type": "numeric"},
        {"name": "Status (NED, AWD, D)", "role": "event", "type": "categorical", "event_values": ["D"]},
        {"name": "Time – diagnosis to last follow-up (days)", "role": "time", "type": "numeric",
         "time_of": "Status (NED, AWD, D)"},
    ],
    "missing_tokens": ["N/A", "NA", ""],
}


def read_clinical(shared_data) -> pd.DataFrame:
    # the test reads the sheet (tests may open files; knowledge/ may not)
    return pd.read_csv(shared_data / "sts_cohort" / "clinical.csv", dtype=str, keep_default_na=False)


def long_features(keys: list[str], labels: np.ndarray | None, *, n_noise: int = 40, signal: float = 2.0,
                  missing_mr: tuple[str, ...] = (), seed: int = 0) -> pd.DataFrame:
    """Long feature rows (the pipeline's layout) for ``keys``; PET ``stat.signal*`` carry ``labels``."""
    rng = np.random.default_rng(seed)
    rows = []
    for i, key in enumerate(keys):
        for folder, modality in (("CT", "CT"), ("PET", "PT"), ("MR_T1", "MR")):
            if modality == "MR" and key in missing_mr:
                continue
            vol = f"{key}-{folder}"
            for j in range(n_noise):
                rows.append((key, vol, f"GTV_Mass_{folder}", "reference", modality, "stat", f"noise{j}", "",
                             "original", float(rng.normal())))
            if modality == "PT" and labels is not None:
                for j in range(2):
                    rows.append((key, vol, f"GTV_Mass_{folder}", "reference", modality, "stat", f"signal{j}", "",
                                 "original", float(signal * labels[i] + rng.normal())))
    return pd.DataFrame(rows, columns=["patient_key", "volume_key", "roi_name", "roi_source", "modality", "family",
                                       "feature", "aggregation", "image", "value"])
