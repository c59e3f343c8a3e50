"""Similar-case reasoning on a per-ROI case table: nearest cases and kNN prediction (leave-one-patient-out)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    pairwise_distances,
    roc_auc_score,
)

from knowledge._common import (
    KEY_COLUMNS,
    _check_column,
    _check_columns,
    _check_pos_int,
    _check_table,
    _keys_frame,
    _outcome_kind,
    _ResultMixin,
    _standardise,
    _Standardised,
    case_key_columns,
)
from knowledge.learn import _py, single_threaded
from knowledge.types import NeighbourWeights, OutcomeKind, SimilarityMetric

# ====================================================================== similar cases


@dataclass
class SimilarCasesResult(_ResultMixin):
    """Nearest neighbours of every case on standardised features (similar-case reasoning).

    ``neighbours`` has one row per (case, rank): the case's key columns, ``rank`` (1 = most
    similar), the neighbour's key columns prefixed ``neighbour_``, ``distance``,
    ``same_patient`` and the neighbour's ``outcome_columns``. Use :meth:`query` for a case
    that is not in the reference set.
    """

    status: str
    reason: str
    k: int = 0
    metric: str = "euclidean"
    n_cases: int = 0
    features_used: list[str] = field(default_factory=list)
    features_dropped: dict[str, str] = field(default_factory=dict)
    outcome_columns: list[str] = field(default_factory=list)
    neighbours: pd.DataFrame | None = None
    _reference: pd.DataFrame | None = field(default=None, repr=False)
    _std: _Standardised | None = field(default=None, repr=False)

    def query(
        self, case: pd.Series | pd.DataFrame, *, k: int | None = None, exclude_same_patient: bool = False
    ) -> pd.DataFrame:
        """The ``k`` reference cases most similar to ``case`` (a row with the feature columns).

        A reference case with the same key columns as ``case`` (the case itself) is excluded;
        with ``exclude_same_patient`` so is every case of the same ``patient_key``.
        Returns the reference keys, ``rank``, ``distance``, ``same_patient`` and the outcome columns.
        """
        if self.status != "ok" or self._std is None or self._reference is None:
            raise ValueError(f"no reference cases to query (status={self.status!r}: {self.reason})")
        row = case.to_frame().T if isinstance(case, pd.Series) else case
        if len(row) != 1:
            raise ValueError(f"case must be a single row, got {len(row)} rows")
        k = self.k if k is None else _check_pos_int("k", k)
        zq = self._std.transform(row)
        zr = self._std.z
        d = pairwise_distances(zq, zr, metric=self.metric)[0]
        ref = self._reference
        keys = [c for c in KEY_COLUMNS if c in ref.columns]
        mask = np.zeros(len(ref), dtype=bool)
        present = [c for c in keys if c in row.columns]
        if present:
            same_case = np.ones(len(ref), dtype=bool)
            for c in present:
                same_case &= ref[c].to_numpy() == row[c].iloc[0]
            mask |= same_case & (len(present) == len(keys))
        same_patient = (
            ref["patient_key"].to_numpy() == row["patient_key"].iloc[0]
            if "patient_key" in row.columns
            else np.zeros(len(ref), dtype=bool)
        )
        if exclude_same_patient:
            mask |= same_patient
        d = np.where(mask, np.inf, d)
        order = np.argsort(d, kind="stable")
        order = order[np.isfinite(d[order])][:k]
        out = ref.iloc[order].reset_index(drop=True)
        out.insert(len(keys), "rank", np.arange(1, order.size + 1))
        out.insert(len(keys) + 1, "distance", d[order])
        out.insert(len(keys) + 2, "same_patient", same_patient[order])
        return out


@single_threaded
def similar_cases(
    table: pd.DataFrame,
    *,
    feature_columns: Sequence[str],
    k: int = 5,
    metric: SimilarityMetric = "euclidean",
    outcome_columns: Sequence[str] = (),
    exclude_same_patient: bool = False,
) -> SimilarCasesResult:
    """For each case, its ``k`` nearest *other* cases on standardised features.

    Features are median-imputed and z-scored over the table (constant/all-missing columns
    dropped), so every feature weighs the same. Ties are broken by table order.

    Parameters
    ----------
    k : int
        Neighbours per case (reduced to the number of available other cases).
    metric : {"euclidean", "manhattan", "cosine"}
    outcome_columns : sequence of str
        Columns (known outcomes, labels) copied to each neighbour row.
    exclude_same_patient : bool
        Do not return other ROIs/volumes of the same patient as neighbours.
    """
    _check_table(table)
    _check_pos_int("k", k)
    if metric not in get_args(SimilarityMetric):
        raise ValueError(f"metric must be one of {get_args(SimilarityMetric)}, got {metric!r}")
    outcomes = _check_columns(table, outcome_columns, "outcome_columns")
    keys = case_key_columns(table)
    n = len(table)
    std = _standardise(table, feature_columns)
    res = SimilarCasesResult(
        status="skipped",
        reason="",
        k=0,
        metric=metric,
        n_cases=n,
        features_used=std.columns,
        features_dropped=std.dropped,
        outcome_columns=outcomes,
    )
    if n < 2:
        res.reason = f"similar-case reasoning needs at least 2 cases: got {n}"
        return res
    if not std.columns:
        res.reason = "no usable feature (all constant or missing across cases)"
        return res
    reference = table[[*keys, *[c for c in outcomes if c not in keys]]].reset_index(drop=True)
    res._reference, res._std = reference, std
    d = pairwise_distances(std.z, metric=metric)
    np.fill_diagonal(d, np.inf)
    pk = reference["patient_key"].to_numpy()
    same = pk[:, None] == pk[None, :]
    if exclude_same_patient:
        d[same] = np.inf
    k_eff = min(k, n - 1)
    order = np.argsort(d, axis=1, kind="stable")[:, :k_eff]
    rows = []
    for i in range(n):
        for r, j in enumerate(order[i]):
            if not np.isfinite(d[i, j]):
                continue
            row = {c: reference.at[i, c] for c in keys}
            row["rank"] = r + 1
            for c in keys:
                row[f"neighbour_{c}"] = reference.at[j, c]
            row["distance"] = float(d[i, j])
            row["same_patient"] = bool(same[i, j])
            for c in outcomes:
                row[f"neighbour_{c}"] = _py(reference.at[j, c])
            rows.append(row)
    res.neighbours = pd.DataFrame(rows)
    if not rows:
        res.reason = "no neighbours: every other case belongs to the same patient"
        return res
    res.status, res.k = "ok", k_eff
    if k_eff < k:
        res.reason = f"k reduced from {k} to {k_eff} (only {n} cases)"
    return res


# ================================================================= kNN case prediction


@dataclass
class SimilarPredictionResult(_ResultMixin):
    """k-nearest-neighbour case prediction, evaluated leave-one-(patient-)out.

    ``predictions`` holds, per labelled case, its keys, ``true``, ``predicted`` and (for
    class labels) ``probability`` of the positive/each class, and ``n_neighbours``.
    """

    status: str
    reason: str
    label: str = ""
    outcome_kind: str = ""
    k: int = 0
    metric: str = "euclidean"
    weights: str = "uniform"
    evaluation: str = ""
    classes: list[Any] = field(default_factory=list)
    positive_label: Any = None
    n_cases: int = 0
    metrics: dict[str, float] = field(default_factory=dict)
    predictions: pd.DataFrame | None = None


@single_threaded
def predict_from_similar(
    table: pd.DataFrame,
    *,
    feature_columns: Sequence[str],
    label: str,
    k: int = 5,
    metric: SimilarityMetric = "euclidean",
    weights: NeighbourWeights = "uniform",
    kind: OutcomeKind = "auto",
    exclude_same_patient: bool = True,
    pos_label: Any = None,
) -> SimilarPredictionResult:
    """Predict each labelled case from its ``k`` most similar labelled cases (leave-one-out).

    For every labelled case the standardisation (median imputation, z-scores) is refitted
    on the *other* labelled cases, so the evaluation is a proper leave-one-out; with
    ``exclude_same_patient`` (default) every case of the same patient is left out too
    (leave-one-patient-out), because ROIs of one patient are not independent.

    Class labels: the prediction is the (distance-)weighted majority and ``probability`` the
    weighted vote share; metrics are accuracy, balanced accuracy, ROC AUC and Brier score
    (binary). Continuous outcomes: weighted mean; metrics MAE, RMSE and Spearman rho.
    """
    _check_table(table)
    _check_column(table, label, "label")
    _check_pos_int("k", k)
    if metric not in get_args(SimilarityMetric):
        raise ValueError(f"metric must be one of {get_args(SimilarityMetric)}, got {metric!r}")
    if weights not in get_args(NeighbourWeights):
        raise ValueError(f"weights must be one of {get_args(NeighbourWeights)}, got {weights!r}")
    case_key_columns(table)
    _standardise(table, feature_columns)  # argument validation (columns exist, numeric, finite)
    cols = list(feature_columns)
    data = table[table[label].notna()].reset_index(drop=True)
    n = len(data)
    res = SimilarPredictionResult(
        status="skipped",
        reason="",
        label=label,
        k=k,
        metric=metric,
        weights=weights,
        evaluation="leave-one-patient-out" if exclude_same_patient else "leave-one-out",
        n_cases=n,
    )
    if n < 3:
        res.reason = f"case prediction needs at least 3 labelled cases: got {n}"
        return res
    n_patients = int(data["patient_key"].nunique())
    if exclude_same_patient and n_patients < 3:
        res.reason = (
            f"leave-one-patient-out prediction needs labelled cases of at least 3 patients: got {n_patients}"
        )
        return res
    okind = _outcome_kind(data[label], kind)
    res.outcome_kind = okind
    y = data[label].to_numpy()
    classes = np.array([])
    if okind != "continuous":
        classes = np.array(sorted(pd.unique(y).tolist(), key=lambda v: (str(type(v)), v)), dtype=object)
        if classes.size < 2:
            res.reason = f"case prediction needs at least two label classes: only {classes.tolist()}"
            return res
        res.classes = [_py(c) for c in classes]
        if classes.size == 2:
            if pos_label is None:
                pos_label = classes[1]
            elif pos_label not in classes.tolist():
                raise ValueError(f"pos_label must be one of {classes.tolist()}, got {pos_label!r}")
            res.positive_label = _py(pos_label)
    pk = data["patient_key"].to_numpy()
    x_all = data[cols].to_numpy(dtype=float)
    preds: list[Any] = []
    probas: list[np.ndarray] = []
    n_used: list[int] = []
    for i in range(n):
        train = np.ones(n, dtype=bool)
        train[i] = False
        if exclude_same_patient:
            train &= pk != pk[i]
        # standardisation refitted without the held-out case(s), as _standardise does
        xt = x_all[train]
        usable = ~np.all(np.isnan(xt), axis=0) if xt.shape[0] else np.zeros(len(cols), dtype=bool)
        if usable.any():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                med = np.nanmedian(xt[:, usable], axis=0)
            xt = np.where(np.isnan(xt[:, usable]), med, xt[:, usable])
            sd = xt.std(axis=0)
            keep = sd > 0
            xt, med, sd = xt[:, keep], med[keep], sd[keep]
        if not usable.any() or xt.shape[1] == 0:
            preds.append(None)
            probas.append(np.full(max(classes.size, 1), np.nan))
            n_used.append(0)
            continue
        mu = xt.mean(axis=0)
        xq = x_all[i, usable][keep]
        xq = np.where(np.isnan(xq), med, xq)
        d = pairwise_distances(((xq - mu) / sd)[None, :], (xt - mu) / sd, metric=metric)[0]
        kk = min(k, d.size)
        nn = np.argsort(d, kind="stable")[:kk]
        dn = d[nn]
        if weights == "distance":
            w = np.where(dn[:, None] == 0, 1.0, 0.0)[:, 0] if np.any(dn == 0) else 1.0 / dn
        else:
            w = np.ones(kk)
        yn = y[train][nn]
        n_used.append(kk)
        if okind == "continuous":
            preds.append(float(np.sum(w * yn.astype(float)) / np.sum(w)))
            probas.append(np.array([np.nan]))
        else:
            votes = np.array([w[yn == c].sum() for c in classes]) / w.sum()
            probas.append(votes)
            preds.append(classes[int(np.argmax(votes))])  # ties: first class in sorted order
    out = _keys_frame(data)
    out["true"] = y
    out["predicted"] = preds
    out["n_neighbours"] = n_used
    predicted = out["n_neighbours"] > 0
    if not predicted.any():
        res.reason = "no case has a labelled case from another patient to compare with"
        res.predictions = out
        return res
    k_max = int(out.loc[predicted, "n_neighbours"].max())
    if okind != "continuous":
        pr = np.vstack(probas)
        if classes.size == 2:
            j = int(np.flatnonzero(classes == pos_label)[0])
            out["probability"] = pr[:, j]
        else:
            for j, c in enumerate(classes):
                out[f"probability_{c}"] = pr[:, j]
        yt, yp = y[predicted.to_numpy()], np.asarray(out.loc[predicted, "predicted"].tolist(), dtype=object)
        m: dict[str, float] = {
            "accuracy": float(accuracy_score(yt.astype(str), yp.astype(str))),
            "balanced_accuracy": float(balanced_accuracy_score(yt.astype(str), yp.astype(str))),
        }
        if classes.size == 2:
            pos_true = yt == pos_label
            p = out.loc[predicted, "probability"].to_numpy(dtype=float)
            m["roc_auc"] = float(roc_auc_score(pos_true, p)) if np.unique(pos_true).size == 2 else math.nan
            m["brier"] = float(brier_score_loss(pos_true, p))
        res.metrics = m
    else:
        yt = y[predicted.to_numpy()].astype(float)
        yp = out.loc[predicted, "predicted"].to_numpy(dtype=float)
        err = yp - yt
        rho = stats.spearmanr(yt, yp)[0] if np.unique(yt).size > 1 and np.unique(yp).size > 1 else math.nan
        res.metrics = {
            "mae": float(np.mean(np.abs(err))),
            "rmse": float(np.sqrt(np.mean(err**2))),
            "spearman_rho": float(rho),
        }
    res.predictions = out
    res.metrics["n_evaluated"] = int(predicted.sum())
    res.k = k_max
    res.status = "ok"
    notes = []
    if k_max < k:
        notes.append(f"k reduced from {k} to {k_max} (available labelled cases)")
    if (~predicted).any():
        notes.append(f"{int((~predicted).sum())} case(s) not predicted (no other patient)")
    if n < 30:
        notes.append(f"fewer than 30 labelled cases ({n}): figures are not reliable")
    res.reason = "; ".join(notes)
    return res
