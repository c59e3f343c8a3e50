"""Case bases: the per-ROI case table, and the patient-level multimodal case base.

:func:`case_table` turns long feature rows into one row per case (patient/volume/ROI);
:func:`patient_case_base` widens them to one row per patient (per timepoint), with every
modality and ROI role side by side, and joins the baseline clinical predictors.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pandas as pd

if TYPE_CHECKING:
    from knowledge.roles import CaseSchema


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


#: DICOM modality -> case-base prefix
_MODALITY = {"CT": "CT", "PT": "PT", "PET": "PT", "MR": "MR", "MRI": "MR"}
#: key columns of the patient-level case base
KEY = "patient_key"


def modality_code(value: object) -> str:
    """``CT``/``PT``/``MR`` for a DICOM modality or a series folder name (``PET`` -> ``PT``, ``MR_T1`` -> ``MR``)."""
    text = str(value).upper().strip()
    if text in _MODALITY:
        return _MODALITY[text]
    head = text.replace("-", "_").split("_")[0]
    return _MODALITY.get(head, head or "OT")


def roi_role(name: object, source: object = None) -> str:
    """Role of an ROI from its name: ``GTV_Mass_CT`` -> ``GTV``; automatic masks -> ``auto``."""
    if str(source or "").lower() == "auto":
        return "auto"
    text = str(name).strip()
    head = text.replace("-", "_").replace(" ", "_").split("_")[0]
    return head.upper() if head else "ROI"


class CaseBase:
    """A patient-level multimodal case base.

    Attributes
    ----------
    table : DataFrame
        One row per patient (per ``patient_key``, ``timepoint`` when given); imaging columns
        ``"<MOD>:<ROIROLE>:<feature>"``, baseline clinical predictors ``clin:<column>``
        (``clin:<column>=<level>`` one-hot for categoricals, NaN where unknown), then the
        schema's label/event/time/treatment columns under their own names.
    feature_columns, clinical_columns : list of str
    missing : DataFrame
        ``patient_key`` x modality, True where the patient has no image of that modality.
    modality_tables : dict
        Modality -> per-ROI case table (:func:`case_table`).
    """

    def __init__(self, table: pd.DataFrame, feature_columns: list[str], clinical_columns: list[str],
                 missing: pd.DataFrame, modality_tables: dict[str, pd.DataFrame]) -> None:
        self.table = table
        self.feature_columns = feature_columns
        self.clinical_columns = clinical_columns
        self.missing = missing
        self.modality_tables = modality_tables

    def __repr__(self) -> str:
        return (f"CaseBase({len(self.table)} patients, {len(self.feature_columns)} imaging and "
                f"{len(self.clinical_columns)} clinical columns)")


def clinical_design(clinical: pd.DataFrame, schema: CaseSchema) -> tuple[pd.DataFrame, list[str]]:
    """Baseline clinical predictors as model columns, plus the schema's outcome columns.

    Parameters
    ----------
    clinical : DataFrame
        Clinical sheet (one row per patient), not modified.
    schema : knowledge.roles.CaseSchema

    Returns
    -------
    (DataFrame, list of str)
        ``patient_key`` + ``clin:`` columns + label/event/time/treatment columns; the ``clin:`` names.
        Numeric predictors stay numeric (NaN when unknown); categorical/binary predictors are
        one-hot ``clin:<column>=<level>`` with NaN in every level column where unknown (imputed
        inside the cross-validation folds, never here).
    """
    from knowledge.roles import apply_schema

    typed = apply_schema(clinical, schema, rename_identifier=True)
    if KEY not in typed.columns:
        raise ValueError("the case schema declares no identifier column: clinical rows cannot meet their images")
    parts = [typed[[KEY]].astype(str)]
    clin_cols: list[str] = []
    for col in schema.columns:
        if col.role != "predictor":
            continue
        values = typed[col.name]
        if col.type == "numeric":
            name = f"clin:{col.name}"
            parts.append(pd.to_numeric(values, errors="coerce").astype(float).rename(name))
            clin_cols.append(name)
        else:
            levels = sorted(values.dropna().astype(str).unique())
            for level in levels:
                name = f"clin:{col.name}={level}"
                onehot = (values.astype("string") == level).astype(float)
                onehot[values.isna()] = float("nan")
                parts.append(onehot.rename(name))
                clin_cols.append(name)
    keep = [c.name for c in schema.columns if c.role in ("label", "event", "time", "treatment")]
    parts.extend(typed[c] for c in keep)
    out = pd.concat(parts, axis=1)
    if out[KEY].duplicated().any():
        dup = out.loc[out[KEY].duplicated(), KEY].iloc[0]
        raise ValueError(f"clinical table has several rows for patient {dup!r}; one row per patient is expected")
    return out, clin_cols


def patient_case_base(features_long: pd.DataFrame, clinical: pd.DataFrame | None = None, *,
                      schema: CaseSchema | None = None, include_auto: bool = False) -> CaseBase:
    """One row per patient: every modality x ROI role side by side, plus baseline clinical predictors.

    Parameters
    ----------
    features_long : DataFrame
        Long feature rows as the pipeline writes them (``patient_key, volume_key, roi_name,
        modality, family, feature, value`` [+ ``aggregation``, ``image``, ``roi_source``,
        ``timepoint``]); not modified.
    clinical : DataFrame or None
        Clinical sheet; needs ``schema`` (its identifier must hold the same pseudonymous keys).
    schema : knowledge.roles.CaseSchema or None
    include_auto : bool
        Also widen automatically segmented ROIs (role ``auto``).

    Returns
    -------
    CaseBase
        Missing modalities stay NaN in the table and are listed in ``.missing``; when one
        patient has several ROIs of one role in one modality the first (by ROI name) is used.
    """
    if not isinstance(features_long, pd.DataFrame):
        raise TypeError(f"features_long must be a DataFrame, got {type(features_long).__name__}")
    if clinical is not None and schema is None:
        raise ValueError("clinical given without schema: declare the clinical columns' roles (CaseSchema)")
    need = {"patient_key", "volume_key", "roi_name", "modality", "family", "feature", "value"}
    lacking = need - set(features_long.columns)
    if lacking and not features_long.empty:
        raise ValueError(f"features_long lacks columns {sorted(lacking)}")
    index = [KEY, "timepoint"] if "timepoint" in features_long.columns else [KEY]
    modality_tables: dict[str, pd.DataFrame] = {}
    wide = pd.DataFrame(columns=index)
    if not features_long.empty:
        rows = features_long
        source = rows["roi_source"] if "roi_source" in rows else pd.Series("", index=rows.index)
        if not include_auto:
            rows, source = rows[source.astype(str) != "auto"], source[source.astype(str) != "auto"]
        cases = case_table(rows, include_auto=include_auto)
        cases["modality"] = cases["modality"].map(modality_code)
        modality_tables = {m: t.reset_index(drop=True) for m, t in cases.groupby("modality", sort=True)}
        agg = (rows["aggregation"] if "aggregation" in rows else pd.Series("", index=rows.index)).fillna("")
        image = (rows["image"] if "image" in rows else pd.Series("original", index=rows.index)).fillna("original")
        prefix = image.astype(str).map(lambda v: "" if v == "original" else f"{v}.")
        # "<family>.<feature>[.<aggregation>]" exactly as the per-ROI case table names it (IBSI names that
        # carry their family, e.g. "morph.vol", read "morph.morph.vol": kept for compatibility with stored bases)
        feat = prefix + rows["family"].astype(str) + "." + rows["feature"].astype(str) + \
            agg.astype(str).map(lambda a: f".{a}" if a else "")
        roles = [roi_role(n, s) for n, s in zip(rows["roi_name"], source, strict=True)]
        long = rows.assign(_col=rows["modality"].map(modality_code) + ":" + pd.Series(roles, index=rows.index)
                           + ":" + feat)
        long = long.sort_values([*index, "roi_name"], kind="stable")
        wide = long.pivot_table(index=index, columns="_col", values="value", aggfunc="first").reset_index()
        wide.columns.name = None
        wide[KEY] = wide[KEY].astype(str)
    feature_columns = [c for c in wide.columns if c not in index]
    mods = sorted({c.split(":", 1)[0] for c in feature_columns})
    clin_cols: list[str] = []
    table = wide
    if clinical is not None and schema is not None:
        design, clin_cols = clinical_design(clinical, schema)
        table = wide.merge(design, on=KEY, how="outer") if len(wide) else design
    table = table.sort_values(index if set(index) <= set(table.columns) else [KEY]).reset_index(drop=True)
    miss = pd.DataFrame({m: table[[c for c in feature_columns if c.startswith(m + ":")]].isna().all(axis=1)
                         for m in mods}, index=table.index)
    miss.insert(0, KEY, table[KEY].to_numpy())
    return CaseBase(table, feature_columns, clin_cols, miss.reset_index(drop=True), modality_tables)
