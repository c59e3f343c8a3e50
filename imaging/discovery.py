"""Knowledge discovery on a case table (issue #2 item 5).

A *case table* has one row per case, keyed by a pseudonymous ``patient_key`` and,
optionally, ``volume_key`` and ``roi`` (several ROIs/volumes of one patient are several
cases of one patient). Its other columns are numeric image features plus optional
clinical, label, outcome and treatment columns.

Stages, all pure functions of pandas tables:

* :func:`join_clinical` - long feature table -> one row per case, joined with clinical data;
* :func:`mine_cases` - case mining: standardised features -> PCA -> k-means (k by silhouette),
  with per-cluster feature profiles; :func:`feature_associations` - univariate tests with
  Benjamini-Hochberg false-discovery-rate control;
* :func:`similar_cases` - similar-case reasoning (k nearest cases on standardised
  features); :func:`predict_from_similar` - k-nearest-neighbour case prediction evaluated
  leave-one-patient-out;
* :func:`predict_cases` - classifier case prediction with (nested) cross-validation
  (wraps :mod:`imaging.learn`, degrading folds gracefully on small cohorts);
* :func:`evaluate_efficacy` - difference of outcome between two treatment arms with
  seeded bootstrap confidence intervals, and a covariate-adjusted estimate;
* :func:`decision_support` - a per-case, plain-data summary for the report.

Small cohorts are the normal case for a demo (1-2 patients, 3-6 ROIs): data-dependent
impossibilities never raise; results carry ``status`` (``"ok"``, ``"partial"``,
``"skipped"``) and a human-readable ``reason``. Invalid *arguments* (unknown columns,
bad option values) still raise ``ValueError``/``TypeError``.

Nothing here is a validated medical device; the figures support research and review.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, get_args

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    brier_score_loss,
    pairwise_distances,
    roc_auc_score,
    silhouette_score,
)

from imaging.learn import (
    CVResult,
    InsufficientDataError,
    fitted_pipeline,
    nested_cross_validate,
    single_threaded,
    to_jsonable,
)
from imaging.types import Classifier, NeighbourWeights, OutcomeKind, SimilarityMetric

__all__ = [
    "KEY_COLUMNS",
    "AssociationResult",
    "CaseMiningResult",
    "CasePredictionResult",
    "EfficacyResult",
    "SimilarCasesResult",
    "SimilarPredictionResult",
    "case_key_columns",
    "decision_support",
    "evaluate_efficacy",
    "feature_associations",
    "join_clinical",
    "mine_cases",
    "numeric_feature_columns",
    "predict_cases",
    "predict_from_similar",
    "similar_cases",
]

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


# ======================================================== classifier case prediction


@dataclass
class CasePredictionResult(_ResultMixin):
    """Cross-validated classifier for a case label, or why it could not be trained."""

    status: str
    reason: str
    label: str = ""
    kind: str = ""
    n_labelled: int = 0
    class_counts: dict[str, int] = field(default_factory=dict)
    grouped_by_patient: bool = False
    result: CVResult | None = None

    def to_dict(self) -> dict[str, Any]:
        out = super().to_dict()
        if self.result is not None:
            from imaging.learn import model_card

            out["model_card"] = model_card(self.result)
        return out


@single_threaded
def predict_cases(
    table: pd.DataFrame,
    *,
    feature_columns: Sequence[str],
    label: str,
    kind: Classifier = "svm",
    outer_folds: int = 10,
    inner_folds: int = 5,
    param_grid: dict[str, list[Any]] | None = None,
    random_state: int,
    calibrate: bool = True,
    group_by_patient: bool = True,
    adapt_folds: bool = True,
    pos_label: Any = None,
    n_jobs: int = 1,
) -> CasePredictionResult:
    """Case prediction: nested cross-validated classifier on the labelled cases.

    Unlabelled cases are dropped. When some patient has several cases and
    ``group_by_patient``, folds keep each patient's cases together. With ``adapt_folds``
    the fold counts shrink to what the class sizes allow; when even 2 folds are impossible
    the result is ``status="skipped"`` with the reason (e.g. ``not enough labelled cases
    for cross-validation: class 'a' has 2 case(s) ...``) instead of an exception.
    """
    _check_table(table)
    _check_column(table, label, "label")
    cols = _check_columns(table, feature_columns, "feature_columns")
    if not cols:
        raise ValueError("feature_columns must name at least one column")
    case_key_columns(table)
    data = table[table[label].notna()]
    y = data[label]
    counts = {str(k): int(v) for k, v in y.value_counts(sort=False).items()}
    res = CasePredictionResult(
        status="skipped", reason="", label=label, kind=kind, n_labelled=len(data), class_counts=counts
    )
    if len(counts) < 2:
        res.reason = f"case prediction needs two or more label classes among labelled cases: got {counts}"
        return res
    if _outcome_kind(y, "auto") == "continuous":
        res.reason = (
            f"label {label!r} looks continuous ({len(counts)} distinct values); classifier case prediction "
            f"needs class labels (use predict_from_similar for a continuous outcome)"
        )
        res.class_counts = {}
        return res
    groups = None
    if group_by_patient and data["patient_key"].duplicated().any():
        groups = data["patient_key"].to_numpy()
        res.grouped_by_patient = True
    try:
        cv = nested_cross_validate(
            data[cols],
            y.to_numpy(),
            kind=kind,
            outer_folds=outer_folds,
            inner_folds=inner_folds,
            param_grid=param_grid,
            random_state=random_state,
            calibrate=calibrate,
            groups=groups,
            pos_label=pos_label,
            adapt_folds=adapt_folds,
            n_jobs=n_jobs,
        )
    except InsufficientDataError as exc:
        res.reason = str(exc)
        return res
    res.result = cv
    res.status = "ok"
    notes = list(cv.notes)
    if len(data) < 30:
        notes.append(f"fewer than 30 labelled cases ({len(data)}): figures are not reliable")
    res.reason = "; ".join(notes)
    return res


# ============================================================== efficacy evaluation


@dataclass
class EfficacyResult(_ResultMixin):
    """Difference in outcome between two treatment arms (treated minus control).

    ``effect`` is a risk difference (binary outcome) or mean difference (continuous), with a
    seeded, arm-stratified percentile bootstrap confidence interval ``ci``. ``adjusted``
    (when covariates were given) holds the covariate-adjusted estimate: for a binary outcome
    a logistic model's standardised (g-computation) risk difference with a bootstrap CI and
    the adjusted odds ratio with a Wald CI; for a continuous outcome the OLS treatment
    coefficient with its t-based CI.
    """

    status: str
    reason: str
    treatment: str = ""
    outcome: str = ""
    outcome_kind: str = ""
    treated_value: Any = None
    control_value: Any = None
    positive_outcome: Any = None
    effect_measure: str = ""
    arms: pd.DataFrame | None = None
    effect: float = math.nan
    ci: tuple[float, float] = (math.nan, math.nan)
    p_value: float = math.nan
    test: str = ""
    confidence: float = 0.95
    n_bootstrap: int = 0
    random_state: int = 0
    n_cases: int = 0
    adjusted: dict[str, Any] | None = None
    notes: list[str] = field(default_factory=list)


def _design(
    frame: pd.DataFrame, treat: np.ndarray, covariates: Sequence[str]
) -> tuple[np.ndarray, list[str]]:
    """Intercept, treatment indicator, covariates (numeric z-scored, categorical one-hot drop-first)."""
    parts = [
        pd.Series(1.0, index=frame.index, name="intercept"),
        pd.Series(treat, index=frame.index, name="treatment"),
    ]
    for c in covariates:
        col = frame[c]
        if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
            v = col.astype(float)
            sd = v.std(ddof=0)
            parts.append(((v - v.mean()) / (sd if sd > 0 else 1.0)).rename(c))
        else:
            dummies = pd.get_dummies(col.astype(str), prefix=c, drop_first=True, dtype=float)
            parts.extend(dummies[d] for d in dummies.columns)
    X = pd.concat(parts, axis=1)
    return X.to_numpy(dtype=float), [str(c) for c in X.columns]


def _logistic_irls(
    X: np.ndarray, y: np.ndarray, max_iter: int = 100, tol: float = 1e-10
) -> tuple[np.ndarray, np.ndarray] | None:
    """Unpenalised logistic regression by iteratively reweighted least squares.

    Returns ``(beta, covariance)`` or None when it does not converge or the coefficients
    diverge (complete or quasi-complete separation).
    """
    beta = np.zeros(X.shape[1])
    for _ in range(max_iter):
        eta = np.clip(X @ beta, -30, 30)
        p = 1.0 / (1.0 + np.exp(-eta))
        w = p * (1 - p)
        hess = X.T @ (X * w[:, None])
        grad = X.T @ (y - p)
        try:
            step = np.linalg.solve(hess, grad)
        except np.linalg.LinAlgError:
            return None
        beta = beta + step
        if np.max(np.abs(beta)) > 25:
            return None
        if np.max(np.abs(step)) < tol:
            try:
                cov = np.linalg.inv(hess)
            except np.linalg.LinAlgError:
                return None
            return beta, cov
    return None


def _g_computation(X: np.ndarray, beta: np.ndarray) -> float:
    x1, x0 = X.copy(), X.copy()
    x1[:, 1], x0[:, 1] = 1.0, 0.0
    return float(np.mean(1 / (1 + np.exp(-(x1 @ beta)))) - np.mean(1 / (1 + np.exp(-(x0 @ beta)))))


def _stratified_bootstrap_indices(rng: np.random.Generator, arm: np.ndarray, n_boot: int) -> np.ndarray:
    """(n_boot, n) case indices resampled with replacement within each arm."""
    idx = np.empty((n_boot, arm.size), dtype=np.int64)
    for a in (0, 1):
        members = np.flatnonzero(arm == a)
        idx[:, members] = members[rng.integers(0, members.size, size=(n_boot, members.size))]
    return idx


@single_threaded
def evaluate_efficacy(
    table: pd.DataFrame,
    *,
    treatment: str,
    outcome: str,
    covariates: Sequence[str] | None = None,
    treated_value: Any = None,
    control_value: Any = None,
    positive_outcome: Any = None,
    outcome_kind: OutcomeKind = "auto",
    n_bootstrap: int = 2000,
    confidence: float = 0.95,
    random_state: int,
    per_patient: bool = True,
) -> EfficacyResult:
    """Efficacy evaluation: outcome difference between a treated and a control arm.

    Parameters
    ----------
    table : DataFrame
        One row per patient (or per case; efficacy is usually per patient - deduplicate
        first if several ROIs share one outcome).
    treatment, outcome : str
        Column names. Cases with a missing treatment or outcome (or covariate) are dropped.
    covariates : sequence of str or None
        Adjustment covariates (numeric, or categorical one-hot encoded).
    treated_value, control_value : optional
        Arm values; with two arms the defaults are the larger (treated) and the smaller
        (control) sorted value, e.g. 1 vs 0 or True vs False.
    positive_outcome : optional
        Event value of a binary outcome (default: the larger sorted value).
    outcome_kind : {"auto", "binary", "continuous"}
    n_bootstrap : int
        Bootstrap replicates (resampling within each arm).
    confidence : float in (0, 1)
        Confidence level of the intervals.
    random_state : int
        Seed of the bootstrap; results are reproducible for it.
    per_patient : bool
        When the table has a ``patient_key`` with repeated patients (several ROIs), collapse
        to one row per patient first: ROIs of one patient are not independent observations.
        Treatment and outcome must then be constant within each patient; numeric covariates
        are averaged, categorical ones must be constant.

    Returns
    -------
    EfficacyResult
        ``status="skipped"`` when an arm has fewer than 2 cases. This is an association in
        observational data unless treatment was randomised; the adjusted estimate only
        removes confounding by the covariates given.
    """
    _check_table(table)
    _check_column(table, treatment, "treatment")
    _check_column(table, outcome, "outcome")
    if treatment == outcome:
        raise ValueError("treatment and outcome must be different columns")
    covs = _check_columns(table, covariates or [], "covariates")
    if treatment in covs or outcome in covs:
        raise ValueError("covariates must not include the treatment or the outcome column")
    n_boot = _check_pos_int("n_bootstrap", n_bootstrap, 1)
    if not (isinstance(confidence, float) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be a float in (0, 1), got {confidence!r}")
    seed = _check_seed(random_state)
    if outcome_kind == "categorical":
        raise ValueError(
            "outcome_kind must be 'auto', 'binary' or 'continuous' for efficacy, got 'categorical'"
        )

    res = EfficacyResult(
        status="skipped",
        reason="",
        treatment=treatment,
        outcome=outcome,
        confidence=confidence,
        n_bootstrap=n_boot,
        random_state=seed,
    )
    data = table[[treatment, outcome, *covs]]
    if per_patient and "patient_key" in table.columns and table["patient_key"].duplicated().any():
        collapsed = _collapse_per_patient(table, treatment, outcome, covs)
        if isinstance(collapsed, str):
            res.reason = collapsed
            res.n_cases = len(table)
            return res
        data = collapsed
        res.notes.append(f"{len(table)} cases collapsed to {len(data)} patients (one row per patient_key)")
    complete = data.notna().all(axis=1)
    if (~complete).any():
        res.notes.append(f"{int((~complete).sum())} case(s) dropped for missing treatment/outcome/covariates")
    data = data[complete].reset_index(drop=True)
    arms = sorted(pd.unique(data[treatment]).tolist(), key=lambda v: (str(type(v)), v))
    if treated_value is None and control_value is None:
        if len(arms) > 2:
            raise ValueError(
                f"treatment {treatment!r} has {len(arms)} arms {arms}; give treated_value and control_value"
            )
        if len(arms) == 2:
            control_value, treated_value = arms
    elif treated_value is None or control_value is None:
        given = treated_value if treated_value is not None else control_value
        others = [a for a in arms if a != given]
        if len(others) > 1:
            raise ValueError(f"treatment has arms {arms}; give both treated_value and control_value")
        other = others[0] if others else None
        treated_value, control_value = (given, other) if treated_value is not None else (other, given)
    res.treated_value, res.control_value = _py(treated_value), _py(control_value)
    if len(arms) < 2 or treated_value is None or control_value is None:
        res.reason = f"efficacy needs two treatment arms: found {arms}"
        res.n_cases = len(data)
        return res
    for v, name in ((treated_value, "treated_value"), (control_value, "control_value")):
        if v not in arms:
            raise ValueError(f"{name} {v!r} is not a value of {treatment!r} (arms {arms})")
    data = data[data[treatment].isin([treated_value, control_value])].reset_index(drop=True)
    arm = (data[treatment] == treated_value).to_numpy().astype(int)
    res.n_cases = len(data)
    n1, n0 = int(arm.sum()), int((1 - arm).sum())
    if min(n1, n0) < 2:
        res.reason = f"efficacy needs at least 2 cases per arm: treated {n1}, control {n0}"
        return res

    okind = _outcome_kind(data[outcome], outcome_kind)
    if okind == "categorical":
        col = data[outcome]
        if pd.api.types.is_numeric_dtype(col.dtype) and not pd.api.types.is_bool_dtype(col.dtype):
            okind = "continuous"  # an integer score (e.g. 0-5): compare means
            res.notes.append(
                f"integer outcome with {col.nunique()} levels analysed as continuous (mean difference)"
            )
        else:
            res.reason = f"outcome {outcome!r} has {col.nunique()} categories; efficacy needs a binary or numeric outcome"
            return res
    res.outcome_kind = okind
    if okind == "binary":
        values = sorted(pd.unique(data[outcome]).tolist(), key=lambda v: (str(type(v)), v))
        if positive_outcome is None:
            positive_outcome = values[-1]
        elif positive_outcome not in values and len(values) == 2:
            raise ValueError(
                f"positive_outcome {positive_outcome!r} is not a value of {outcome!r} ({values})"
            )
        res.positive_outcome = _py(positive_outcome)
        y = (data[outcome] == positive_outcome).to_numpy().astype(float)
        res.effect_measure = "risk_difference"
    else:
        y = data[outcome].to_numpy(dtype=float)
        res.effect_measure = "mean_difference"

    summary = []
    for a, name, value in ((1, "treated", treated_value), (0, "control", control_value)):
        ya = y[arm == a]
        summary.append(
            {
                "arm": name,
                "value": _py(value),
                "n": int(ya.size),
                "mean": float(ya.mean()),
                "sd": float(ya.std(ddof=1)) if ya.size > 1 else math.nan,
                **({"events": int(ya.sum())} if okind == "binary" else {}),
            }
        )
    res.arms = pd.DataFrame(summary)
    y1, y0 = y[arm == 1], y[arm == 0]
    res.effect = float(y1.mean() - y0.mean())
    rng = np.random.default_rng(seed)
    idx = _stratified_bootstrap_indices(rng, arm, n_boot)
    yb = y[idx]
    ab = arm[idx]
    boot = (yb * ab).sum(axis=1) / n1 - (yb * (1 - ab)).sum(axis=1) / n0
    alpha = 1.0 - confidence
    res.ci = (float(np.quantile(boot, alpha / 2)), float(np.quantile(boot, 1 - alpha / 2)))
    if okind == "binary":
        table22 = [[int(y1.sum()), int(n1 - y1.sum())], [int(y0.sum()), int(n0 - y0.sum())]]
        res.p_value, res.test = float(stats.fisher_exact(table22).pvalue), "fisher_exact"
    else:
        if np.ptp(y) == 0:
            res.p_value, res.test = 1.0, "welch_t"
        elif np.ptp(y1) == 0 and np.ptp(y0) == 0:
            res.p_value, res.test = math.nan, "welch_t"
            res.notes.append("no variation of the outcome within either arm: t-test undefined")
        else:
            res.p_value, res.test = float(stats.ttest_ind(y1, y0, equal_var=False).pvalue), "welch_t"
    res.status = "ok"

    if covs:
        res.adjusted = _adjusted_effect(data, arm, y, covs, okind, idx, confidence)
        if res.adjusted.get("status") != "ok":
            res.status = "partial"
            res.reason = f"adjusted estimate unavailable: {res.adjusted.get('reason')}"
    if res.n_cases < 30:
        res.notes.append(f"fewer than 30 cases ({res.n_cases}): the interval is wide and approximate")
    return res


def _collapse_per_patient(
    table: pd.DataFrame, treatment: str, outcome: str, covs: Sequence[str]
) -> pd.DataFrame | str:
    """One row per patient, or the reason why that is impossible."""
    grouped = table.groupby("patient_key", sort=True, dropna=False)
    out: dict[str, pd.Series] = {}
    for c in [treatment, outcome, *covs]:
        col = table[c]
        numeric_cov = (
            c in covs
            and pd.api.types.is_numeric_dtype(col.dtype)
            and not pd.api.types.is_bool_dtype(col.dtype)
        )
        if numeric_cov:
            out[c] = grouped[c].mean()
            continue
        varying = grouped[c].nunique(dropna=True) > 1
        if varying.any():
            keys = sorted(map(str, varying[varying].index))[:10]
            return (
                f"{c!r} differs between cases of the same patient (patient_key {keys}); "
                f"per-patient efficacy needs one value per patient (or per_patient=False)"
            )
        out[c] = grouped[c].first()
    return pd.DataFrame(out).reset_index(drop=True)


def _adjusted_effect(
    data: pd.DataFrame,
    arm: np.ndarray,
    y: np.ndarray,
    covs: Sequence[str],
    okind: str,
    boot_idx: np.ndarray,
    confidence: float,
) -> dict[str, Any]:
    X, names = _design(data, arm.astype(float), covs)
    n, p = X.shape
    out: dict[str, Any] = {"covariates": list(covs), "design_columns": names, "n": n}
    if n <= p + 1:
        return {**out, "status": "skipped", "reason": f"{n} cases for {p} model parameters"}
    if np.linalg.matrix_rank(X) < p:
        return {
            **out,
            "status": "skipped",
            "reason": "covariates are collinear with each other or the treatment",
        }
    alpha = 1.0 - confidence
    if okind == "continuous":
        beta, *_ = np.linalg.lstsq(X, y, rcond=None)
        resid = y - X @ beta
        dof = n - p
        sigma2 = float(resid @ resid) / dof
        cov = sigma2 * np.linalg.inv(X.T @ X)
        se = float(math.sqrt(cov[1, 1]))
        t = stats.t.ppf(1 - alpha / 2, dof)
        est = float(beta[1])
        return {
            **out,
            "status": "ok",
            "method": "OLS linear regression, treatment coefficient (t-based CI)",
            "effect_measure": "adjusted_mean_difference",
            "effect": est,
            "ci": (est - t * se, est + t * se),
            "se": se,
            "p_value": float(2 * stats.t.sf(abs(est / se), dof)) if se > 0 else math.nan,
        }
    fit = _logistic_irls(X, y)
    if fit is None:
        return {**out, "status": "skipped", "reason": "logistic model did not converge (separation?)"}
    beta, cov = fit
    se = float(math.sqrt(cov[1, 1]))
    z = stats.norm.ppf(1 - alpha / 2)
    rd = _g_computation(X, beta)
    boot, failed = [], 0
    for b in range(boot_idx.shape[0]):
        # rows of the full-sample design: covariate scaling does not change the g-formula
        # risk difference; a level absent from a replicate makes it singular -> counted failed
        ib = boot_idx[b]
        Xb = X[ib]
        fb = _logistic_irls(Xb, y[ib])
        if fb is None:
            failed += 1
            continue
        boot.append(_g_computation(Xb, fb[0]))
    result: dict[str, Any] = {
        **out,
        "status": "ok",
        "method": "logistic regression; risk difference by g-computation (standardisation) with "
        "bootstrap CI; odds ratio with Wald CI",
        "effect_measure": "adjusted_risk_difference",
        "effect": rd,
        "log_odds_ratio": float(beta[1]),
        "log_odds_ratio_ci": (float(beta[1] - z * se), float(beta[1] + z * se)),
        "odds_ratio": float(math.exp(beta[1])),
        "odds_ratio_ci": (float(math.exp(beta[1] - z * se)), float(math.exp(beta[1] + z * se))),
        "p_value": float(2 * stats.norm.sf(abs(beta[1] / se))),
        "bootstrap_failed": failed,
    }
    if len(boot) >= max(20, boot_idx.shape[0] // 2):
        result["ci"] = (float(np.quantile(boot, alpha / 2)), float(np.quantile(boot, 1 - alpha / 2)))
    else:
        result["ci"] = (math.nan, math.nan)
        result["status"] = "partial"
        result["reason"] = f"{failed} of {boot_idx.shape[0]} bootstrap fits failed; no risk-difference CI"
    return result


# =================================================================== decision support


@single_threaded
def decision_support(
    case_row: pd.Series | pd.DataFrame,
    *,
    model: CVResult | CasePredictionResult | None,
    similar: SimilarCasesResult | None = None,
    k: int = 5,
    outcome_column: str | None = None,
    n_driving_features: int = 5,
    min_training_cases: int = 30,
    interval_cases: int | None = None,
    confidence: float = 0.95,
    extrapolation_z: float = 4.0,
) -> dict[str, Any]:
    """Per-case decision-support summary (plain data for the report).

    Parameters
    ----------
    case_row : Series or one-row DataFrame
        The case: key columns and the model's feature columns (missing features are
        imputed with the training medians and flagged).
    model : CVResult, CasePredictionResult or None
        A cross-validated classifier (:func:`predict_cases` / ``nested_cross_validate``).
    similar : SimilarCasesResult or None
        Reference cases (:func:`similar_cases` with ``outcome_columns``).
    k : int
        Similar cases to list.
    outcome_column : str or None
        Outcome column of ``similar`` whose values are summarised (default: its first one).
    n_driving_features : int
        Features listed as driving the prediction.
    min_training_cases : int
        Below this cohort size a caveat says the figures are not reliable.
    interval_cases : int or None
        Size of the probability neighbourhood for the calibrated interval (default
        ``max(10, n_cases // 10)``).
    confidence : float
        Level of the probability interval.
    extrapolation_z : float
        Features further than this many training SDs from the training mean are flagged.

    Returns
    -------
    dict
        ``status`` ("ok", "partial", "skipped"), ``reason``, ``case`` (keys),
        ``prediction`` (predicted label, probability, calibrated interval = Wilson interval
        of the observed positive rate among the ``interval_cases`` cross-validated cases whose
        out-of-fold probability is closest to this case's; range over the outer-fold models;
        model's cross-validated metrics), ``similar_cases`` (list with distances and known
        outcomes, outcome summary), ``driving_features`` (method and per-feature
        contributions) and ``caveats`` (list of str). JSON-serialisable.
    """
    row = case_row.to_frame().T if isinstance(case_row, pd.Series) else case_row
    if not isinstance(row, pd.DataFrame) or len(row) != 1:
        raise ValueError("case_row must be a Series or a one-row DataFrame")
    _check_pos_int("k", k)
    _check_pos_int("n_driving_features", n_driving_features)
    _check_pos_int("min_training_cases", min_training_cases)
    if not (isinstance(confidence, float) and 0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be a float in (0, 1), got {confidence!r}")
    if interval_cases is not None:
        _check_pos_int("interval_cases", interval_cases, 2)
    keys = {c: _py(row[c].iloc[0]) for c in KEY_COLUMNS if c in row.columns}
    caveats: list[str] = []
    cv: CVResult | None
    model_reason = ""
    if isinstance(model, CasePredictionResult):
        cv = model.result
        model_reason = model.reason if cv is None else ""
    elif model is None or isinstance(model, CVResult):
        cv = model
    else:
        raise TypeError(f"model must be a CVResult, CasePredictionResult or None, got {type(model).__name__}")
    if similar is not None and not isinstance(similar, SimilarCasesResult):
        raise TypeError(f"similar must be a SimilarCasesResult or None, got {type(similar).__name__}")

    prediction: dict[str, Any]
    driving: dict[str, Any]
    if cv is None:
        prediction = {"status": "skipped", "reason": model_reason or "no trained model"}
        driving = {"status": "skipped", "reason": prediction["reason"], "features": []}
    else:
        prediction, driving, pcaveats = _model_prediction(
            row, cv, n_driving_features, interval_cases, confidence, extrapolation_z
        )
        caveats.extend(pcaveats)
        if cv.n_cases < min_training_cases:
            caveats.append(
                f"fewer than {min_training_cases} training cases ({cv.n_cases}): figures are not reliable"
            )

    sim: dict[str, Any]
    if similar is None:
        sim = {"status": "skipped", "reason": "no reference cases given", "cases": []}
    elif similar.status != "ok":
        sim = {"status": "skipped", "reason": similar.reason, "cases": []}
    else:
        found = similar.query(row, k=k)
        oc = outcome_column or (similar.outcome_columns[0] if similar.outcome_columns else None)
        if oc is not None and oc not in similar.outcome_columns:
            raise ValueError(
                f"outcome_column {oc!r} is not among the similar cases' outcome columns {similar.outcome_columns}"
            )
        sim = {"status": "ok", "reason": "", "k": int(len(found)), "metric": similar.metric, "cases": found}
        if oc is not None:
            known = found[oc].dropna()
            sim["outcome_column"] = oc
            sim["outcome_counts"] = {str(v): int(c) for v, c in known.value_counts(sort=True).items()}
            sim["n_known_outcomes"] = int(known.size)
            if known.size and prediction.get("status") == "ok" and "predicted_label" in prediction:
                majority = known.value_counts().idxmax()
                agree = str(majority) == str(prediction["predicted_label"])
                sim["majority_outcome"] = _py(majority)
                if not agree:
                    caveats.append(
                        f"the most similar cases mostly had {oc}={majority!r}, unlike the model's "
                        f"prediction {prediction['predicted_label']!r}"
                    )
        if len(found) < k:
            caveats.append(f"only {len(found)} similar case(s) available (asked for {k})")
        if found["same_patient"].any():
            caveats.append("some similar cases are other ROIs/volumes of the same patient")

    caveats.append(
        "research use only: not a validated medical device; the figures support, and do not replace, clinical judgement"
    )
    parts_ok = [prediction.get("status") == "ok", sim.get("status") == "ok"]
    status = "ok" if all(parts_ok) else ("partial" if any(parts_ok) else "skipped")
    reasons = [f"prediction: {prediction['reason']}" for _ in [0] if prediction.get("status") != "ok"]
    reasons += [f"similar cases: {sim['reason']}" for _ in [0] if sim.get("status") != "ok"]
    out = {
        "status": status,
        "reason": "; ".join(reasons),
        "case": keys,
        "prediction": prediction,
        "similar_cases": sim,
        "driving_features": driving,
        "caveats": caveats,
    }
    result = to_jsonable(out)
    assert isinstance(result, dict)
    return result


def _model_prediction(
    row: pd.DataFrame,
    cv: CVResult,
    n_driving: int,
    interval_cases: int | None,
    confidence: float,
    extrapolation_z: float,
) -> tuple[dict[str, Any], dict[str, Any], list[str]]:
    caveats: list[str] = []
    feats = cv.feature_names
    absent = [f for f in feats if f not in row.columns]
    x = row.reindex(columns=feats)
    x = x.apply(pd.to_numeric, errors="coerce").astype(float)
    missing = [f for f in feats if pd.isna(x[f].iloc[0])]
    if missing:
        listed = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        caveats.append(
            f"{len(missing)} feature(s) missing for this case, imputed with training medians: {listed}"
        )
    if absent and len(absent) == len(feats):
        reason = "the case has none of the model's features"
        return (
            {"status": "skipped", "reason": reason},
            {"status": "skipped", "reason": reason, "features": []},
            caveats,
        )
    sd = cv.feature_stds.replace(0, np.nan)
    z = ((x.iloc[0] - cv.feature_means) / sd).abs()
    far = z[z > extrapolation_z].sort_values(ascending=False)
    if len(far):
        caveats.append(
            f"{len(far)} feature(s) lie more than {extrapolation_z:g} SD outside the training cases "
            f"(extrapolation): {', '.join(map(str, far.index[:5]))}"
        )
    final = cv.final_model
    classes = np.array(cv.classes, dtype=object)
    pred_label = _py(final.predict(x)[0])
    pred: dict[str, Any] = {
        "status": "ok",
        "reason": "",
        "model": cv.kind,
        "classes": cv.classes,
        "positive_label": cv.positive_label,
        "predicted_label": pred_label,
        "cross_validated": {
            "mean": cv.mean,
            "std": cv.std,
            "outer_folds": cv.outer_folds,
            "nested": cv.nested,
        },
        "n_training_cases": cv.n_cases,
        "class_counts": {str(c): v for c, v in cv.class_counts.items()},
    }
    has_proba = cv.scores_are_probabilities
    if has_proba:
        proba = final.predict_proba(x)[0]
        model_classes = [_py(c) for c in getattr(final, "classes_", classes)]
        by_class = {str(c): float(p) for c, p in zip(model_classes, proba, strict=True)}
        pred["probabilities"] = by_class
        fold_p = np.array([m.predict_proba(x)[0] for m in cv.fold_models])
        if len(cv.classes) == 2:
            j = model_classes.index(cv.positive_label)
            p_pos = float(proba[j])
            pred["probability"] = p_pos
            pred["fold_model_range"] = (float(fold_p[:, j].min()), float(fold_p[:, j].max()))
            if cv.oof_proba is not None:
                oof = cv.oof_score
                m = interval_cases or max(10, cv.n_cases // 10)
                m = min(m, oof.size)
                near = np.argsort(np.abs(oof - p_pos), kind="stable")[:m]
                y_true = cv.labels
                events = int(np.sum(y_true[near] == cv.positive_label))
                lo, hi = _wilson(events, m, confidence)
                pred["interval"] = {
                    "low": lo,
                    "high": hi,
                    "confidence": confidence,
                    "observed_rate": events / m,
                    "n_cases": int(m),
                    "neighbourhood_probability_range": (float(oof[near].min()), float(oof[near].max())),
                    "method": (
                        "Wilson interval of the observed rate of the positive class among the "
                        f"{m} cross-validated cases whose out-of-fold probability is closest to this case's"
                    ),
                }
        else:
            pred["fold_model_range"] = {
                str(c): (float(fold_p[:, i].min()), float(fold_p[:, i].max()))
                for i, c in enumerate(model_classes)
            }
        spread = np.ptp(fold_p, axis=0).max()
        if spread > 0.3:
            caveats.append(f"the outer-fold models disagree on this case (probability spread {spread:.2f})")
    else:
        caveats.append("the model was not calibrated: no probability is given")
    driving = _driving_features(final, x, cv, n_driving, pred_label)
    if cv.mean.get("roc_auc", math.nan) < 0.7:
        caveats.append(f"weak cross-validated discrimination (ROC AUC {cv.mean.get('roc_auc'):.2f})")
    smallest = min(cv.class_counts.values())
    if smallest < 10:
        caveats.append(f"the smallest class has only {smallest} training case(s)")
    if cv.notes:
        caveats.extend(f"validation: {n}" for n in cv.notes)
    return pred, driving, caveats


def _driving_features(
    final: Any, x: pd.DataFrame, cv: CVResult, n_driving: int, pred_label: Any
) -> dict[str, Any]:
    """Per-case feature contributions.

    Logistic regression: coefficient x standardised value (exact additive log-odds terms
    relative to the average training case). Other models: occlusion - change of the
    predicted-class probability when the feature is set to its training median.
    """
    pipe = fitted_pipeline(final)
    clf = pipe.named_steps["clf"]
    feats = cv.feature_names
    if cv.kind == "logistic_regression" and hasattr(clf, "coef_"):
        zx = pipe[:-1].transform(x)[0]
        coef = clf.coef_
        if coef.shape[0] == 1:
            sign = 1.0 if pred_label == _py(clf.classes_[1]) else -1.0
            contrib = sign * coef[0] * zx
        else:
            j = list(clf.classes_).index(pred_label)
            contrib = coef[j] * zx
        method = (
            "logistic regression: coefficient x standardised value (log-odds towards the predicted class)"
        )
        values = contrib
    elif cv.scores_are_probabilities:
        medians = pipe.named_steps["impute"].statistics_
        xi = pipe.named_steps["impute"].transform(x)[0]
        batch = np.repeat(xi[None, :], len(feats), axis=0)
        batch[np.arange(len(feats)), np.arange(len(feats))] = medians
        classes = [_py(c) for c in final.classes_]
        j = classes.index(pred_label)
        base = final.predict_proba(pd.DataFrame(xi[None, :], columns=feats))[0, j]
        occl = final.predict_proba(pd.DataFrame(batch, columns=feats))[:, j]
        values = base - occl
        method = "occlusion: predicted-class probability minus that with the feature at its training median"
    else:
        return {"status": "skipped", "reason": "no probabilities and no coefficients", "features": []}
    order = np.argsort(-np.abs(values), kind="stable")[:n_driving]
    xv = x.iloc[0]
    features = [
        {"feature": feats[i], "value": _py(xv[feats[i]]), "contribution": float(values[i])} for i in order
    ]
    return {"status": "ok", "reason": "", "method": method, "features": features}
