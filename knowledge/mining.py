"""Case mining: clustering with feature profiles, univariate associations with FDR control; clinical join."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (
    silhouette_score,
)

from knowledge._common import (
    _IDENTIFYING,
    KEY_COLUMNS,
    _check_column,
    _check_columns,
    _check_pos_int,
    _check_seed,
    _check_table,
    _keys_frame,
    _outcome_kind,
    _ResultMixin,
    _standardise,
    case_key_columns,
    numeric_feature_columns,
)
from knowledge.learn import _py, single_threaded
from knowledge.types import OutcomeKind

# ====================================================================== join_clinical


def join_clinical(
    features: pd.DataFrame,
    clinical: pd.DataFrame | None,
    *,
    key: str = "patient_key",
    how: str = "left",
    feature_column: str | Sequence[str] = "feature",
    value_column: str = "value",
    separator: str = "__",
) -> pd.DataFrame:
    """One row per case: pivot a long feature table and join patient-level clinical data.

    Parameters
    ----------
    features : DataFrame
        Either *long* - case key columns (``patient_key`` [+ ``volume_key``] [+ ``roi``]),
        ``feature_column`` and ``value_column``; other columns are ignored - or already
        *wide* (one row per case; recognised by the absence of ``value_column``).
    clinical : DataFrame or None
        One row per ``key`` (pseudonymous), other columns are clinical variables, labels,
        outcomes, treatments. ``None`` returns the pivoted features only.
    key : str
        Join key, present in both tables.
    how : {"left", "inner", "outer"}
        ``left`` keeps every imaged case; ``inner`` only cases with clinical data.
    feature_column : str or sequence of str
        Column(s) naming the feature; several columns are joined with ``separator`` into one
        feature name, skipping empty parts. For the IBSI table of :mod:`imaging.features`
        (``family, feature, aggregation, ibsi_code, value``) use ``("feature", "aggregation")``
        (e.g. ``cm.joint.max__2d_avg``; ``morph.volume`` has no aggregation).
    value_column : str
        Numeric value column of the long table.

    Returns
    -------
    DataFrame
        Key columns, then feature columns (sorted by name), then clinical columns.

    Raises
    ------
    ValueError
        Duplicated (case, feature) entries or duplicated clinical keys (the message lists
        the offending pseudonymous keys), clinical columns that directly identify a person,
        feature/clinical column-name collisions, missing key columns.
    """
    _check_table(features, "features")
    if how not in ("left", "inner", "outer"):
        raise ValueError(f"how must be 'left', 'inner' or 'outer', got {how!r}")
    if key not in features.columns:
        raise ValueError(f"key {key!r} is not a column of features")
    keys = [c for c in KEY_COLUMNS if c in features.columns]
    if key not in keys:
        keys = [key, *keys]
    fcols = [feature_column] if isinstance(feature_column, str) else list(feature_column)

    if value_column in features.columns:  # long form
        missing = [c for c in fcols if c not in features.columns]
        if missing:
            raise ValueError(f"feature_column {missing} not in the long feature table")
        null_keys = features[keys].isna().any(axis=1)
        if null_keys.any():
            raise ValueError(f"{int(null_keys.sum())} feature row(s) have a missing key in {keys}")
        long = features[[*keys, *fcols, value_column]].copy()
        name = np.full(len(long), "", dtype=object)
        for c in fcols:
            part = long[c].astype(object).where(long[c].notna(), "").astype(str).to_numpy(dtype=object)
            joined = np.where(name == "", part, name + separator + part)
            name = np.where(part == "", name, joined)
        name = pd.Series(name, index=long.index, dtype=object)
        if (name == "").any():
            raise ValueError(f"{int((name == '').sum())} feature row(s) have an empty name in {fcols}")
        long["__feature__"] = name
        dup = long.duplicated(subset=[*keys, "__feature__"], keep=False)
        if dup.any():
            examples = long.loc[dup, [*keys, "__feature__"]].drop_duplicates().head(5)
            listed = "; ".join(
                ", ".join(f"{k}={row[k]!r}" for k in [*keys, "__feature__"]) for _, row in examples.iterrows()
            )
            raise ValueError(f"{int(dup.sum())} duplicated (case, feature) rows in features, e.g. {listed}")
        values = pd.to_numeric(long[value_column], errors="coerce")
        bad = values.isna() & long[value_column].notna()
        if bad.any():
            raise ValueError(
                f"{value_column!r} has {int(bad.sum())} non-numeric value(s), e.g. "
                f"{long.loc[bad, value_column].head(3).tolist()}"
            )
        long[value_column] = values
        wide = long.pivot(index=keys, columns="__feature__", values=value_column)
        wide = wide.reindex(columns=sorted(wide.columns)).reset_index()
        wide.columns.name = None
    else:  # wide form
        wide = features.copy()
        dup = wide.duplicated(subset=keys, keep=False)
        if dup.any():
            listed = wide.loc[dup, keys].drop_duplicates().head(5).to_dict("records")
            raise ValueError(f"features has {int(dup.sum())} rows with duplicated case keys {keys}: {listed}")

    if clinical is None:
        return wide
    _check_table(clinical, "clinical")
    if key not in clinical.columns:
        raise ValueError(f"key {key!r} is not a column of clinical")
    ident = [
        c
        for c in clinical.columns
        if str(c).lower().replace("_", "").replace(" ", "").replace("'", "") in _IDENTIFYING
    ]
    if ident:
        raise ValueError(
            f"clinical has directly identifying column(s) {ident}; join only pseudonymised data "
            f"keyed by {key!r}"
        )
    if clinical[key].isna().any():
        raise ValueError(f"clinical has {int(clinical[key].isna().sum())} row(s) with a missing {key!r}")
    dup_keys = clinical[key][clinical[key].duplicated(keep=False)].unique().tolist()
    if dup_keys:
        raise ValueError(f"clinical has duplicated {key!r} value(s): {sorted(map(str, dup_keys))[:10]}")
    clash = sorted(set(clinical.columns) & set(wide.columns) - {key})
    if clash:
        raise ValueError(f"column name(s) in both features and clinical: {clash}")
    return wide.merge(clinical, on=key, how=how, validate="many_to_one", sort=False)


# ======================================================================== case mining


@dataclass
class CaseMiningResult(_ResultMixin):
    """Unsupervised case mining: PCA scores, k-means clusters and cluster profiles.

    Attributes
    ----------
    assignments : DataFrame
        Key columns, ``cluster`` and the first principal component scores ``pc1``, ``pc2``.
    profiles : DataFrame
        One row per cluster: ``cluster``, ``n_cases`` and the mean *z-score* of each feature.
    top_features : dict
        Per cluster, up to five features with the largest absolute mean z-score.
    silhouette : dict
        Mean silhouette coefficient for each k tried (Rousseeuw 1987).
    label_distribution : DataFrame or None
        Cluster x label counts when ``label`` was given.
    """

    status: str
    reason: str
    n_cases: int = 0
    n_clusters: int | None = None
    assignments: pd.DataFrame | None = None
    profiles: pd.DataFrame | None = None
    top_features: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    silhouette: dict[int, float] = field(default_factory=dict)
    explained_variance_ratio: list[float] = field(default_factory=list)
    n_components: int | None = None
    features_used: list[str] = field(default_factory=list)
    features_dropped: dict[str, str] = field(default_factory=dict)
    label_distribution: pd.DataFrame | None = None


@single_threaded
def mine_cases(
    table: pd.DataFrame,
    *,
    feature_columns: Sequence[str],
    n_clusters: int | None = None,
    random_state: int,
    max_clusters: int = 8,
    variance_to_keep: float = 0.9,
    label: str | None = None,
) -> CaseMiningResult:
    """Case mining: standardised features -> PCA -> k-means, with cluster profiles.

    Features are median-imputed and z-scored (constant/all-missing columns are dropped
    and listed); PCA keeps the fewest components explaining ``variance_to_keep`` of the
    variance (at least two when available); k-means (10 initialisations) clusters the
    component scores. When ``n_clusters`` is None, k in ``2..min(max_clusters, n-1)`` is
    chosen by the largest mean silhouette coefficient.

    Parameters
    ----------
    table : DataFrame
        Case table with a ``patient_key`` column.
    feature_columns : sequence of str
        Numeric feature columns.
    n_clusters : int or None
        Fixed number of clusters (>= 2) or None to choose by silhouette.
    random_state : int
        Seed for k-means.
    max_clusters : int
        Largest k tried when choosing.
    variance_to_keep : float in (0, 1]
        Fraction of variance the retained components must explain.
    label : str or None
        Optional label/outcome column cross-tabulated against the clusters.

    Returns
    -------
    CaseMiningResult
        ``status="skipped"`` with a reason for fewer than 3 cases or no usable feature.
    """
    _check_table(table)
    seed = _check_seed(random_state)
    if n_clusters is not None:
        _check_pos_int("n_clusters", n_clusters, 2)
    _check_pos_int("max_clusters", max_clusters, 2)
    if not (isinstance(variance_to_keep, (int, float)) and 0.0 < variance_to_keep <= 1.0):
        raise ValueError(f"variance_to_keep must be in (0, 1], got {variance_to_keep!r}")
    if label is not None:
        _check_column(table, label, "label")
    case_key_columns(table)
    n = len(table)
    std = _standardise(table, feature_columns)
    base: dict[str, Any] = {"n_cases": n, "features_used": std.columns, "features_dropped": std.dropped}
    if n < 3:
        return CaseMiningResult(
            status="skipped", reason=f"case mining needs at least 3 cases: got {n}", **base
        )
    if not std.columns:
        return CaseMiningResult(
            status="skipped", reason="no usable feature (all constant or missing across cases)", **base
        )
    if n_clusters is not None and n_clusters > n - 1:
        return CaseMiningResult(
            status="skipped",
            reason=f"n_clusters={n_clusters} needs at least {n_clusters + 1} cases: got {n}",
            **base,
        )
    pca = PCA(n_components=min(n, len(std.columns)), svd_solver="full", random_state=seed)
    scores_all = pca.fit_transform(std.z)
    evr = pca.explained_variance_ratio_
    m = int(np.searchsorted(np.cumsum(evr), variance_to_keep - 1e-12) + 1)
    m = max(min(2, evr.size), min(m, evr.size))
    scores = scores_all[:, :m]

    def _fit(k: int) -> np.ndarray:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            return np.asarray(KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(scores))

    silhouettes: dict[int, float] = {}
    if n_clusters is None:
        best_k, best_labels, best_s = None, None, -np.inf
        for k in range(2, min(max_clusters, n - 1) + 1):
            lab = _fit(k)
            if np.unique(lab).size < 2:
                continue
            s = float(silhouette_score(scores, lab))
            silhouettes[k] = s
            if s > best_s + 1e-12:
                best_k, best_labels, best_s = k, lab, s
        if best_k is None or best_labels is None:
            return CaseMiningResult(
                status="skipped",
                reason="cases are indistinguishable: no clustering with >= 2 clusters",
                **base,
            )
        k_final, labels = best_k, best_labels
    else:
        k_final, labels = n_clusters, _fit(n_clusters)
        if np.unique(labels).size >= 2:
            silhouettes[k_final] = float(silhouette_score(scores, labels))
    # relabel clusters by decreasing size (ties by first appearance) for stable reporting
    order = sorted(np.unique(labels), key=lambda c: (-int(np.sum(labels == c)), int(np.argmax(labels == c))))
    relabel = {int(old): new for new, old in enumerate(order)}
    labels = np.array([relabel[int(v)] for v in labels])

    assignments = _keys_frame(table)
    assignments["cluster"] = labels
    for j in range(min(2, scores_all.shape[1])):
        assignments[f"pc{j + 1}"] = scores_all[:, j]
    zf = pd.DataFrame(std.z, columns=std.columns)
    zf["cluster"] = labels
    profiles = zf.groupby("cluster").mean()
    profiles.insert(0, "n_cases", zf.groupby("cluster").size())
    profiles = profiles.reset_index()
    top: dict[int, list[dict[str, Any]]] = {}
    for _, row in profiles.iterrows():
        z = row[std.columns].astype(float)
        best = z.abs().sort_values(ascending=False, kind="stable").index[:5]
        top[int(row["cluster"])] = [{"feature": f, "mean_z": float(z[f])} for f in best]
    dist = None
    if label is not None:
        lab_values = table[label].reset_index(drop=True)
        dist = pd.crosstab(pd.Series(labels, name="cluster"), lab_values.rename(label)).reset_index()
        dist.columns = [str(c) for c in dist.columns]
    return CaseMiningResult(
        status="ok",
        reason="",
        n_clusters=int(k_final),
        assignments=assignments,
        profiles=profiles,
        top_features=top,
        silhouette=silhouettes,
        explained_variance_ratio=[float(v) for v in evr],
        n_components=m,
        label_distribution=dist,
        **base,
    )


# =============================================================== feature associations


@dataclass
class AssociationResult(_ResultMixin):
    """Univariate feature-outcome associations with Benjamini-Hochberg FDR q-values.

    ``table`` columns: ``feature, test, statistic, p_value, q_value, effect, effect_measure,
    n`` (+ per-group medians for two groups), sorted by p-value.
    """

    status: str
    reason: str
    label: str = ""
    outcome_kind: str = ""
    groups: list[Any] = field(default_factory=list)
    n_cases: int = 0
    table: pd.DataFrame | None = None


@single_threaded
def feature_associations(
    table: pd.DataFrame,
    *,
    label: str,
    feature_columns: Sequence[str] | None = None,
    kind: OutcomeKind = "auto",
    min_group_size: int = 2,
) -> AssociationResult:
    """Univariate associations of each feature with a label/outcome, FDR-controlled.

    * two groups: Mann-Whitney U (two-sided); effect = AUC, the probability that a case
      of the second (sorted) group has the larger value (rank-biserial r = 2 AUC - 1);
    * three or more groups: Kruskal-Wallis H; effect = epsilon squared, (H - k + 1)/(n - k);
    * continuous outcome: Spearman rank correlation; effect = rho.

    q-values are Benjamini-Hochberg adjusted p-values over the features that could be tested
    (:func:`scipy.stats.false_discovery_control`). Cases without a label are dropped.

    Parameters
    ----------
    label : str
        Label/outcome column.
    feature_columns : sequence of str or None
        Default: all numeric non-key columns except ``label``.
    kind : {"auto", "binary", "categorical", "continuous"}
        How to treat the label; ``auto`` infers it: non-numeric or bool -> binary/categorical;
        integer-valued numeric with 2 values -> binary, with 3-10 -> categorical; otherwise
        (more than 10 values, or non-integer values) continuous.
    min_group_size : int
        Minimum cases per group for the categorical tests.
    """
    _check_table(table)
    _check_column(table, label, "label")
    _check_pos_int("min_group_size", min_group_size, 1)
    cols = numeric_feature_columns(table, exclude=[label]) if feature_columns is None else feature_columns
    cols = _check_columns(table, cols, "feature_columns")
    bad = [c for c in cols if not pd.api.types.is_numeric_dtype(table[c].dtype)]
    if bad:
        raise TypeError(f"feature columns must be numeric; non-numeric: {bad}")
    data = table[table[label].notna()]
    y = data[label]
    n = len(data)
    okind = _outcome_kind(y, kind) if n else ("continuous" if kind == "continuous" else "categorical")
    if okind == "binary":
        okind_test = "categorical"
    else:
        okind_test = okind
    result = AssociationResult(status="skipped", reason="", label=label, outcome_kind=okind, n_cases=n)
    if n < 3:
        result.reason = f"association tests need at least 3 labelled cases: got {n}"
        return result
    if not cols:
        result.reason = "no feature columns to test"
        return result
    rows: list[dict[str, Any]] = []
    if okind_test == "categorical":
        groups = sorted(y.unique().tolist(), key=lambda v: (str(type(v)), v))
        result.groups = [_py(g) for g in groups]
        sizes = {g: int((y == g).sum()) for g in groups}
        if len(groups) < 2:
            result.reason = f"association tests need at least two label groups: only {groups!r}"
            return result
        small = {str(g): s for g, s in sizes.items() if s < min_group_size}
        if small:
            result.reason = f"label group(s) with fewer than {min_group_size} cases: {small}"
            return result
        for c in cols:
            samples = [data.loc[y == g, c].dropna().to_numpy(dtype=float) for g in groups]
            row: dict[str, Any] = {"feature": c, "n": int(sum(s.size for s in samples))}
            pooled = np.concatenate(samples)
            usable = all(s.size >= 1 for s in samples) and np.unique(pooled).size > 1
            if len(groups) == 2:
                row.update(test="mann_whitney_u", effect_measure="auc")
                row[f"median_{groups[0]}"] = float(np.median(samples[0])) if samples[0].size else math.nan
                row[f"median_{groups[1]}"] = float(np.median(samples[1])) if samples[1].size else math.nan
                if usable:
                    res = stats.mannwhitneyu(samples[1], samples[0], alternative="two-sided")
                    row.update(
                        statistic=float(res.statistic),
                        p_value=float(res.pvalue),
                        effect=float(res.statistic) / (samples[0].size * samples[1].size),
                    )
            else:
                row.update(test="kruskal_wallis", effect_measure="epsilon_squared")
                if usable:
                    h, p = stats.kruskal(*samples)
                    k, nn = len(groups), row["n"]
                    row.update(
                        statistic=float(h),
                        p_value=float(p),
                        effect=float((h - k + 1) / (nn - k)) if nn > k else math.nan,
                    )
            rows.append(row)
    else:
        yv = y.astype(float)
        for c in cols:
            x = data[c].astype(float)
            ok = x.notna()
            row = {"feature": c, "n": int(ok.sum()), "test": "spearman", "effect_measure": "rho"}
            if ok.sum() >= 3 and x[ok].nunique() > 1 and yv[ok].nunique() > 1:
                rho, p = stats.spearmanr(x[ok], yv[ok])
                row.update(statistic=float(rho), p_value=float(p), effect=float(rho))
            rows.append(row)
    out = pd.DataFrame(rows)
    for col in ("statistic", "p_value", "effect"):
        if col not in out.columns:
            out[col] = math.nan
    out["q_value"] = math.nan
    ok = out["p_value"].notna()
    if ok.any():
        out.loc[ok, "q_value"] = stats.false_discovery_control(out.loc[ok, "p_value"].to_numpy(), method="bh")
    lead = ["feature", "test", "statistic", "p_value", "q_value", "effect", "effect_measure", "n"]
    out = out[lead + [c for c in out.columns if c not in lead]]
    out = out.sort_values(["p_value", "feature"], na_position="last", kind="stable").reset_index(drop=True)
    result.table = out
    if not ok.any():
        result.reason = "no feature could be tested (constant or missing within the labelled cases)"
        return result
    result.status = "ok"
    if (~ok).any():
        result.reason = f"{int((~ok).sum())} feature(s) not testable (constant or missing)"
    return result
