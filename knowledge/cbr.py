"""Patient-level case-based reasoning: the most similar stored patients, and how often they agree.

Features are standardised with the stored case base's statistics (median imputation is
NOT used for distances: a feature missing in either patient is simply not compared), the
distance is the root-mean-square standardised difference over the features both patients
have. The leave-one-out agreement re-selects the feature space without the held-out
patient, so its label never chooses the features that find its neighbour.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from knowledge._common import _wilson


class Standardiser:
    """Column means and SDs of a reference table (NaN-aware); applies to any table with those columns."""

    def __init__(self, table: pd.DataFrame, columns: list[str]) -> None:
        x = table[columns].to_numpy(dtype=float)
        x = np.where(np.isfinite(x), x, np.nan)
        self.columns = list(columns)
        with np.errstate(invalid="ignore"), _quiet():
            self.mean = np.nan_to_num(np.nanmean(x, axis=0))
            sd = np.nanstd(x, axis=0)
        self.sd = np.where(np.isfinite(sd) & (sd > 0), sd, 1.0)

    def __call__(self, table: pd.DataFrame) -> np.ndarray:
        x = table[self.columns].to_numpy(dtype=float)
        x = np.where(np.isfinite(x), x, np.nan)
        return (x - self.mean) / self.sd


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        warnings.simplefilter("ignore", UserWarning)  # f_classif on constant columns
        yield


def distances(query: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """RMS standardised difference over shared features, shape (n_query, n_reference); inf when none shared."""
    q = query[:, None, :]
    r = reference[None, :, :]
    diff2 = (q - r) ** 2
    both = np.isfinite(diff2)
    n = both.sum(axis=2)
    total = np.where(both, diff2, 0.0).sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.sqrt(total / n)
    return np.where(n > 0, d, np.inf)


def shared_features(za: np.ndarray, zb: np.ndarray, columns: list[str], top: int = 3) -> list[dict[str, Any]]:
    """The features on which two patients are closest (smallest standardised difference)."""
    diff = np.abs(za - zb)
    order = [j for j in np.argsort(diff, kind="stable") if np.isfinite(diff[j])][:top]
    return [{"feature": columns[j], "difference_sd": float(diff[j])} for j in order]


def neighbours(query: pd.DataFrame, query_keys: list[str], stored: pd.DataFrame, stored_keys: list[str],
               columns: list[str], *, k: int, outcomes: pd.DataFrame | None = None,
               exclude_self: bool = True) -> dict[str, list[dict[str, Any]]]:
    """The ``k`` nearest stored patients of every query patient.

    Parameters
    ----------
    query, stored : DataFrame
        Rows are patients; both hold ``columns``. Standardisation uses ``stored`` only.
    outcomes : DataFrame or None
        Index = stored keys; columns reported as each neighbour's outcome.
    exclude_self : bool
        Skip a stored patient with the query's own key.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    std = Standardiser(stored, columns)
    zq, zs = std(query), std(stored)
    d = distances(zq, zs)
    out: dict[str, list[dict[str, Any]]] = {}
    for i, key in enumerate(query_keys):
        order = [j for j in np.argsort(d[i], kind="stable") if not (exclude_self and stored_keys[j] == key)
                 and np.isfinite(d[i, j])][:k]
        out[key] = [{"patient_key": stored_keys[j], "distance": float(d[i, j]),
                     "outcome": _outcome(outcomes, stored_keys[j]),
                     "shared_features": shared_features(zq[i], zs[j], columns)} for j in order]
    return out


def _outcome(outcomes: pd.DataFrame | None, key: str) -> dict[str, Any]:
    if outcomes is None or key not in outcomes.index:
        return {}
    row = outcomes.loc[key]
    return {str(c): (None if pd.isna(v) else (v.item() if hasattr(v, "item") else v)) for c, v in row.items()}


def select_columns(table: pd.DataFrame, columns: list[str], y: np.ndarray, n: int) -> list[str]:
    """Top-``n`` columns by ANOVA F on median-imputed values (for the similarity space)."""
    from sklearn.feature_selection import f_classif

    x = table[columns].to_numpy(dtype=float)
    x = np.where(np.isfinite(x), x, np.nan)
    with _quiet():
        med = np.nan_to_num(np.nanmedian(x, axis=0))
        f, _ = f_classif(np.where(np.isnan(x), med, x), y)
    f = np.nan_to_num(f, nan=-1.0)
    order = np.argsort(-f, kind="stable")[:n]
    return [columns[j] for j in sorted(order)]


def loo_agreement(table: pd.DataFrame, columns: list[str], y: np.ndarray, *, n_features: int,
                  confidence: float = 0.95, groups: np.ndarray | None = None) -> dict[str, Any]:
    """Leave-one-out: does the nearest other patient have the same label?

    For each held-out patient the similarity space (top ``n_features`` by ANOVA F) and the
    standardisation are computed from the other patients only; with ``groups`` (patient keys of
    rows that are timepoints) every row of the held-out patient is left out.

    Returns
    -------
    dict
        ``agree``, ``n``, ``loo_agreement`` (fraction), ``loo_ci`` (Wilson interval),
        ``chance`` (agreement expected from the label frequencies alone).
    """
    n = len(table)
    agree = 0
    counted = 0
    for i in range(n):
        rest = np.array([j for j in range(n) if j != i and (groups is None or groups[j] != groups[i])])
        if len(rest) == 0:
            continue
        cols = select_columns(table.iloc[rest], columns, y[rest], n_features) if n_features else columns
        std = Standardiser(table.iloc[rest], cols)
        d = distances(std(table.iloc[[i]]), std(table.iloc[rest]))[0]
        if not np.isfinite(d).any():
            continue
        nearest = rest[int(np.argmin(d))]
        agree += int(y[nearest] == y[i])
        counted += 1
    lo, hi = _wilson(agree, counted, confidence) if counted else (math.nan, math.nan)
    p1 = float(np.mean(y)) if len(y) else math.nan
    return {"agree": int(agree), "n": int(counted), "loo_agreement": agree / counted if counted else math.nan,
            "loo_ci": [float(lo), float(hi)], "chance": p1 ** 2 + (1 - p1) ** 2}
