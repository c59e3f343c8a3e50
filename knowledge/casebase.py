"""Case bases: the per-ROI case table, and the patient-level multimodal case base.

:func:`case_table` turns long feature rows into one row per case (patient/volume/ROI);
:func:`patient_case_base` widens them to one row per patient (per timepoint), with every
modality and ROI role side by side, and joins the baseline clinical predictors.
"""

from __future__ import annotations

import pandas as pd


def case_table(features: pd.DataFrame, *, include_auto: bool = False) -> pd.DataFrame:
    """Long feature rows -> one row per case (``patient_key, volume_key, roi, modality`` + features).

    The feature column name is ``family.feature.aggregation`` (aggregation omitted
    when the feature has none), prefixed by ``filter:<name>.`` for filter response maps.
    """
    need = {"patient_key", "volume_key", "roi_name", "family", "feature", "value"}
    missing = need - set(features.columns)
    if missing:
        raise ValueError(f"features table lacks columns {sorted(missing)}")
    rows = features if include_auto else features[features.get("roi_source", "") != "auto"]
    if rows.empty:
        return pd.DataFrame(columns=["patient_key", "volume_key", "roi", "modality"])
    agg = (rows["aggregation"] if "aggregation" in rows else pd.Series("", index=rows.index)).fillna("").astype(str)
    image = (rows["image"] if "image" in rows else pd.Series("original", index=rows.index)).fillna("original")
    prefix = image.astype(str).map(lambda v: "" if v == "original" else f"{v}.")
    long = rows.assign(roi=rows["roi_name"], feature_id=prefix + rows["family"].astype(str) + "."
                       + rows["feature"].astype(str) + agg.map(lambda a: f".{a}" if a else ""))
    wide = long.pivot_table(index=["patient_key", "volume_key", "roi"], columns="feature_id", values="value",
                            aggfunc="first").reset_index()
    wide.columns.name = None
    modality = long.drop_duplicates("volume_key").set_index("volume_key")["modality"]
    wide.insert(3, "modality", wide["volume_key"].map(modality))
    return wide
