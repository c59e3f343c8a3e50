"""Efficacy evaluation: outcome difference between treatment arms, bootstrap CI, covariate adjustment (g-computation)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from knowledge._common import (
    _check_column,
    _check_columns,
    _check_pos_int,
    _check_seed,
    _check_table,
    _outcome_kind,
    _ResultMixin,
)
from knowledge.learn import _py, single_threaded
from knowledge.types import OutcomeKind

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


def compare_arms(table: pd.DataFrame, *, treatment: str, outcome: str, covariates: Sequence[str],
                 n_bootstrap: int, random_state: int, min_arm: int = 3) -> dict[str, Any]:
    """Every treatment arm against the reference (largest) arm, adjusted for baseline covariates.

    Parameters
    ----------
    table : DataFrame
        One row per patient with ``treatment``, a 0/1 ``outcome`` and ``covariates``.
    min_arm : int
        Arms with fewer patients are listed but not compared.

    Returns
    -------
    dict
        ``arms`` [{arm, n, events, rate}], ``comparisons`` [{arm, reference, difference, ci,
        adjusted_difference, adjusted_ci, adjusted_for, p_value, test, status}].
    """
    data = table[[treatment, outcome, *covariates]].dropna(subset=[treatment, outcome])
    counts = data[treatment].astype(str).value_counts()
    arms = [{"arm": a, "n": int(n), "events": int(data.loc[data[treatment].astype(str) == a, outcome].sum()),
             "rate": float(data.loc[data[treatment].astype(str) == a, outcome].mean())}
            for a, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]
    if len(arms) < 2:
        return {"status": "skipped", "reason": f"one treatment arm only ({[a['arm'] for a in arms]})", "arms": arms,
                "comparisons": []}
    reference = arms[0]["arm"]
    comparisons = []
    for a in arms[1:]:
        if a["n"] < min_arm:
            comparisons.append({"arm": a["arm"], "reference": reference, "status": "skipped",
                                "reason": f"arm has {a['n']} patient(s) (< {min_arm})", "adjusted_for": []})
            continue
        sub = data[data[treatment].astype(str).isin([a["arm"], reference])].copy()
        sub[treatment] = sub[treatment].astype(str)
        usable = [c for c in covariates if sub[c].notna().all() and sub[c].nunique() > 1]
        res = evaluate_efficacy(sub, treatment=treatment, outcome=outcome, covariates=usable or None,
                                treated_value=a["arm"], control_value=reference, positive_outcome=1.0,
                                outcome_kind="binary", n_bootstrap=n_bootstrap, random_state=random_state,
                                per_patient=False).to_dict()
        adj = res.get("adjusted") or {}
        ok_adj = adj.get("status") in ("ok", "partial")
        comparisons.append({"arm": a["arm"], "reference": reference, "status": res["status"],
                            "reason": res.get("reason", ""), "difference": res["effect"], "ci": list(res["ci"]),
                            "p_value": res["p_value"], "test": res["test"],
                            "adjusted_difference": adj.get("effect") if ok_adj else None,
                            "adjusted_ci": list(adj["ci"]) if ok_adj else None,
                            "adjusted_for": usable if ok_adj else [],
                            "adjustment": adj.get("reason") or adj.get("method", "")})
    return {"status": "ok", "arms": arms, "comparisons": comparisons, "reference": reference}
