"""Survival analysis: Kaplan-Meier by risk group with the log-rank test, and a penalised Cox model.

Kaplan-Meier estimates and their confidence bands come from :func:`scipy.stats.ecdf` on
right-censored data, the log-rank test from :func:`scipy.stats.logrank`. The Cox
proportional-hazards model (Breslow ties, ridge penalty ``penalizer * ||beta||^2 / 2`` on
standardised covariates) is fitted by Newton-Raphson here; its concordance (Harrell's C)
is reported on the fitted data (apparent) and out of fold, with the imaging covariates
chosen inside each training fold by univariate Cox score.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats


def kaplan_meier(time: np.ndarray, event: np.ndarray, *, confidence: float = 0.95) -> dict[str, Any]:
    """Kaplan-Meier survival curve with a pointwise log-log confidence band.

    Parameters
    ----------
    time : ndarray, shape (n,)
        Follow-up times (e.g. days), finite and >= 0.
    event : ndarray of 0/1, shape (n,)
        1 where the event was observed, 0 where censored at ``time``.
    """
    time = np.asarray(time, dtype=float)
    event = np.asarray(event).astype(bool)
    out = {"n": int(len(time)), "events": int(event.sum())}
    if len(time) == 0:
        return {**out, "t": [], "s": [], "lo": [], "hi": []}
    data = stats.CensoredData.right_censored(time, ~event)
    res = stats.ecdf(data).sf
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # undefined where S = 1 or 0: the band is the estimate
        ci = res.confidence_interval(confidence_level=confidence, method="log-log")
    t, s = res.quantiles, res.probabilities
    lo = np.where(np.isfinite(ci.low.probabilities), ci.low.probabilities, s)
    hi = np.where(np.isfinite(ci.high.probabilities), ci.high.probabilities, s)
    return {**out, "t": [0.0, *map(float, t)], "s": [1.0, *map(float, s)],
            "lo": [1.0, *map(float, lo)], "hi": [1.0, *map(float, hi)]}


def logrank(time: np.ndarray, event: np.ndarray, group: np.ndarray) -> dict[str, float]:
    """Two-sided log-rank test between the two values of ``group``."""
    time, event, group = np.asarray(time, float), np.asarray(event).astype(bool), np.asarray(group)
    levels = sorted(set(group.tolist()))
    if len(levels) != 2:
        raise ValueError(f"log-rank needs exactly two groups, got {levels}")
    a, b = group == levels[0], group == levels[1]
    res = stats.logrank(stats.CensoredData.right_censored(time[a], ~event[a]),
                        stats.CensoredData.right_censored(time[b], ~event[b]))
    return {"statistic": float(res.statistic) ** 2, "p": float(res.pvalue)}


def concordance(time: np.ndarray, event: np.ndarray, risk: np.ndarray) -> float:
    """Harrell's C: over comparable pairs (the shorter time is an event; a case censored at the
    same time counts as longer), the fraction where the shorter time has the higher risk (ties 1/2)."""
    time, event, risk = np.asarray(time, float), np.asarray(event).astype(bool), np.asarray(risk, float)
    num = den = 0.0
    for i in np.flatnonzero(event):
        later = (time > time[i]) | ((time == time[i]) & ~event)
        den += later.sum()
        num += np.sum(risk[i] > risk[later]) + 0.5 * np.sum(risk[i] == risk[later])
    return float(num / den) if den else math.nan


class CoxModel:
    """Cox proportional hazards with a ridge penalty on standardised covariates (Breslow ties).

    Parameters
    ----------
    penalizer : float
        Ridge strength (>= 0) on the standardised coefficients.
    """

    def __init__(self, *, penalizer: float = 0.1) -> None:
        if penalizer < 0:
            raise ValueError(f"penalizer must be >= 0, got {penalizer}")
        self.penalizer = penalizer

    def fit(self, X: pd.DataFrame, time: np.ndarray, event: np.ndarray, *, max_iter: int = 50) -> CoxModel:
        """Fit on ``X`` (n, p) with NaN imputed by the column median; ``time``/``event`` as in :func:`kaplan_meier`."""
        self.columns_ = list(X.columns)
        x = X.to_numpy(dtype=float)
        self.median_ = np.nan_to_num(np.nanmedian(np.where(np.isfinite(x), x, np.nan), axis=0))
        x = np.where(np.isfinite(x), x, self.median_)
        self.mean_ = x.mean(axis=0)
        sd = x.std(axis=0)
        self.scale_ = np.where(sd > 0, sd, 1.0)
        z = (x - self.mean_) / self.scale_
        t = np.asarray(time, float)
        d = np.asarray(event).astype(float)
        order = np.argsort(-t, kind="stable")  # descending time: risk sets are prefixes
        z, t, d = z[order], t[order], d[order]
        beta = np.zeros(z.shape[1])
        for _ in range(max_iter):
            grad, hess = self._derivatives(z, t, d, beta)
            grad -= self.penalizer * beta
            hess += self.penalizer * np.eye(len(beta))
            step = np.linalg.solve(hess, grad)
            beta = beta + step
            if np.max(np.abs(step)) < 1e-9:
                break
        _, hess = self._derivatives(z, t, d, beta)
        self.beta_ = beta
        self.cov_ = np.linalg.pinv(hess + self.penalizer * np.eye(len(beta)))
        return self

    @staticmethod
    def _derivatives(z: np.ndarray, t: np.ndarray, d: np.ndarray, beta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Gradient and (negative) Hessian of the Breslow log partial likelihood."""
        eta = z @ beta
        w = np.exp(eta - eta.max())
        s0 = np.cumsum(w)
        s1 = np.cumsum(w[:, None] * z, axis=0)
        s2 = np.cumsum(w[:, None, None] * z[:, :, None] * z[:, None, :], axis=0)
        # with ties, the risk set of time t_i is every case with time >= t_i: the last index of the tie block
        last = np.searchsorted(-t, -t, side="right") - 1
        grad = np.zeros_like(beta)
        hess = np.zeros((len(beta), len(beta)))
        for i in np.flatnonzero(d):
            j = last[i]
            mean = s1[j] / s0[j]
            grad += z[i] - mean
            hess += s2[j] / s0[j] - np.outer(mean, mean)
        return grad, hess

    def risk(self, X: pd.DataFrame) -> np.ndarray:
        """Linear predictor (log relative hazard) of rows of ``X``."""
        x = X[self.columns_].to_numpy(dtype=float)
        x = np.where(np.isfinite(x), x, self.median_)
        return ((x - self.mean_) / self.scale_) @ self.beta_

    def summary(self) -> list[dict[str, Any]]:
        """Hazard ratio per SD of each covariate, its Wald 95% interval and p-value."""
        se = np.sqrt(np.clip(np.diag(self.cov_), 0, None))
        out = []
        for name, b, s in zip(self.columns_, self.beta_, se, strict=True):
            zval = b / s if s > 0 else math.nan
            out.append({"covariate": name, "coef": float(b), "hr": float(np.exp(b)),
                        "ci": [float(np.exp(b - 1.959964 * s)), float(np.exp(b + 1.959964 * s))],
                        "p": float(2 * stats.norm.sf(abs(zval))) if np.isfinite(zval) else math.nan,
                        "per": "SD"})
        return out


def univariate_cox_scores(X: pd.DataFrame, time: np.ndarray, event: np.ndarray) -> pd.Series:
    """|score-test z| of each column alone at beta = 0 (cheap screening; NaN -> median)."""
    x = X.to_numpy(dtype=float)
    x = np.where(np.isfinite(x), x, np.nan)
    med = np.nan_to_num(np.nanmedian(x, axis=0))
    x = np.where(np.isnan(x), med, x)
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    t = np.asarray(time, float)
    d = np.asarray(event).astype(bool)
    u = np.zeros(z.shape[1])
    v = np.zeros(z.shape[1])
    for i in np.flatnonzero(d):
        at_risk = t >= t[i]
        m = z[at_risk].mean(axis=0)
        u += z[i] - m
        v += z[at_risk].var(axis=0)
    return pd.Series(np.abs(u) / np.sqrt(np.where(v > 0, v, np.inf)), index=X.columns)


def cox_oof(X_clin: pd.DataFrame, X_img: pd.DataFrame, time: np.ndarray, event: np.ndarray, folds: list[tuple],
            *, n_imaging: int, penalizer: float) -> tuple[np.ndarray, dict[str, int]]:
    """Out-of-fold Cox risk: imaging covariates screened on each training fold only."""
    risk = np.full(len(time), np.nan)
    chosen: dict[str, int] = {}
    for tr, te in folds:
        cols = _top_imaging(X_img.iloc[tr], time[tr], event[tr], n_imaging)
        for c in cols:
            chosen[c] = chosen.get(c, 0) + 1
        X = pd.concat([X_clin, X_img[cols]], axis=1)
        if event[tr].sum() == 0 or X.shape[1] == 0:
            continue
        model = CoxModel(penalizer=penalizer).fit(X.iloc[tr], time[tr], event[tr])
        risk[te] = model.risk(X.iloc[te])
    return risk, chosen


def _top_imaging(X_img: pd.DataFrame, time: np.ndarray, event: np.ndarray, n: int,
                 max_corr: float = 0.8) -> list[str]:
    """The ``n`` best columns by univariate Cox score, skipping any with |Spearman r| > ``max_corr``
    to one already chosen (collinear covariates make the hazard ratios meaningless)."""
    if X_img.shape[1] == 0 or n <= 0 or event.sum() == 0:
        return []
    ranks = X_img.rank()
    chosen: list[str] = []
    for col in univariate_cox_scores(X_img, time, event).sort_values(ascending=False).index:
        if all(abs(ranks[col].corr(ranks[c])) <= max_corr for c in chosen):
            chosen.append(str(col))
        if len(chosen) == n:
            break
    return chosen
