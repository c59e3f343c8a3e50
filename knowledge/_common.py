"""Shared helpers of the case-table analyses (argument checks, standardisation, Wilson interval, results)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, get_args

import numpy as np
import pandas as pd
from scipy import stats

from knowledge.crossval import CVResult
from knowledge.learn import to_jsonable
from knowledge.types import OutcomeKind

#: Columns that identify a case, in order; only ``patient_key`` is required.
KEY_COLUMNS: tuple[str, ...] = ("patient_key", "volume_key", "roi")

#: Clinical columns that would directly identify a person (DICOM PS3.15 Annex E style names,
#: normalised: lower case, no spaces/underscores). A pseudonymised clinical table has none.
_IDENTIFYING = frozenset(
    {
        "patientname",
        "patientsname",
        "name",
        "firstname",
        "lastname",
        "surname",
        "patientid",
        "mrn",
        "medicalrecordnumber",
        "patientbirthdate",
        "patientsbirthdate",
        "birthdate",
        "dateofbirth",
        "dob",
        "patientaddress",
        "patientsaddress",
        "address",
        "accessionnumber",
        "socialsecuritynumber",
        "ssn",
        "phone",
        "telephone",
        "email",
    }
)


# ============================================================================ helpers


def _check_table(table: Any, name: str = "table") -> pd.DataFrame:
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"{name} must be a pandas DataFrame, got {type(table).__name__}")
    if table.columns.duplicated().any():
        dup = sorted(map(str, table.columns[table.columns.duplicated()].unique()))
        raise ValueError(f"{name} has duplicated column names: {dup}")
    return table


def _check_columns(table: pd.DataFrame, columns: Sequence[str], what: str) -> list[str]:
    if isinstance(columns, str):
        raise TypeError(f"{what} must be a sequence of column names, got the string {columns!r}")
    cols = list(columns)
    missing = [c for c in cols if c not in table.columns]
    if missing:
        raise ValueError(f"{what} not in the table: {missing}")
    if len(set(cols)) != len(cols):
        raise ValueError(f"{what} has duplicates: {cols}")
    return cols


def _check_column(table: pd.DataFrame, column: str, what: str) -> str:
    if not isinstance(column, str):
        raise TypeError(f"{what} must be a column name (str), got {column!r}")
    if column not in table.columns:
        raise ValueError(f"{what} {column!r} is not a column of the table")
    return column


def _check_seed(random_state: Any) -> int:
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)) or random_state < 0:
        raise ValueError(f"random_state must be a non-negative int, got {random_state!r}")
    return int(random_state)


def _check_pos_int(name: str, value: Any, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(value)


def _py(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def case_key_columns(table: pd.DataFrame) -> list[str]:
    """The key columns present in ``table`` (``patient_key`` first; it is required)."""
    _check_table(table)
    if "patient_key" not in table.columns:
        raise ValueError("the case table needs a 'patient_key' column (pseudonymous patient key)")
    return [c for c in KEY_COLUMNS if c in table.columns]


def numeric_feature_columns(table: pd.DataFrame, *, exclude: Sequence[str] = ()) -> list[str]:
    """Numeric, non-boolean columns of ``table`` that are not keys and not in ``exclude``."""
    _check_table(table)
    skip = set(KEY_COLUMNS) | set(exclude)
    return [
        str(c)
        for c in table.columns
        if c not in skip
        and pd.api.types.is_numeric_dtype(table[c].dtype)
        and not pd.api.types.is_bool_dtype(table[c].dtype)
    ]


@dataclass
class _Standardised:
    """Median-imputed, z-scored features; the statistics to map new cases the same way."""

    z: np.ndarray
    columns: list[str]
    dropped: dict[str, str]
    center: pd.Series
    scale: pd.Series
    median: pd.Series

    def transform(self, frame: pd.DataFrame) -> np.ndarray:
        x = frame.reindex(columns=self.columns).astype(float)
        x = x.fillna(self.median)
        return ((x - self.center) / self.scale).to_numpy()


def _standardise(table: pd.DataFrame, feature_columns: Sequence[str]) -> _Standardised:
    cols = _check_columns(table, feature_columns, "feature_columns")
    if not cols:
        raise ValueError("feature_columns must name at least one column")
    bad = [c for c in cols if not pd.api.types.is_numeric_dtype(table[c].dtype)]
    if bad:
        raise TypeError(f"feature columns must be numeric; non-numeric: {bad}")
    x = table[cols].astype(float)
    inf = [c for c in cols if np.isinf(x[c].to_numpy()).any()]
    if inf:
        raise ValueError(f"feature columns contain infinite values: {inf}")
    dropped: dict[str, str] = {}
    keep = []
    for c in cols:
        col = x[c]
        if col.notna().sum() == 0:
            dropped[c] = "all values missing"
        elif col.nunique(dropna=True) < 2:
            dropped[c] = "constant"
        else:
            keep.append(c)
    x = x[keep]
    median = x.median()
    x = x.fillna(median)
    center = x.mean()
    scale = x.std(ddof=0)
    # a column with 2+ distinct values has scale > 0 unless imputation made it constant-like
    scale = scale.where(scale > 0, 1.0)
    z = ((x - center) / scale).to_numpy() if keep else np.empty((len(table), 0))
    return _Standardised(z=z, columns=keep, dropped=dropped, center=center, scale=scale, median=median)


def _keys_frame(table: pd.DataFrame) -> pd.DataFrame:
    return table[case_key_columns(table)].reset_index(drop=True)


def _outcome_kind(values: pd.Series, kind: str) -> str:
    """``binary`` / ``categorical`` / ``continuous`` for a label/outcome column (NaN dropped)."""
    if kind not in get_args(OutcomeKind):
        raise ValueError(f"kind must be one of {get_args(OutcomeKind)}, got {kind!r}")
    nunique = values.nunique(dropna=True)
    numeric = pd.api.types.is_numeric_dtype(values.dtype) and not pd.api.types.is_bool_dtype(values.dtype)
    if kind == "continuous" and not numeric:
        raise ValueError(f"a continuous outcome must be numeric, got dtype {values.dtype}")
    if kind != "auto":
        return kind
    if not numeric:
        return "binary" if nunique <= 2 else "categorical"
    v = values.dropna().to_numpy(dtype=float)
    integral = bool(np.all(np.isclose(v, np.round(v))))
    if nunique <= 2 and (integral or set(np.unique(v)) <= {0.0, 1.0}):
        return "binary"
    if integral and nunique <= 10:
        return "categorical"
    return "continuous"


def _wilson(successes: int, n: int, confidence: float) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion (Wilson 1927)."""
    if n == 0:
        return (math.nan, math.nan)
    z = stats.norm.ppf(0.5 + confidence / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


class _ResultMixin:
    status: str
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable data (DataFrames as row records, NaN as None)."""
        out: dict[str, Any] = {}
        for name in self.__dataclass_fields__:  # type: ignore[attr-defined]
            if name.startswith("_"):
                continue
            value = getattr(self, name)
            if isinstance(value, (_Standardised, CVResult)):
                continue
            out[name] = to_jsonable(value)
        return out
