"""The whole cohort analysis of a patient-level case base: :func:`discover`.

Sections (each present; ``{"status": "skipped", "reason": ...}`` when the data cannot support it):
cohort, label, prediction (three feature sets + permutation null + verdict), tree (rules),
associations, clusters, survival, efficacy, similar (case-based reasoning), patients
(per-patient decision support) and text (en/zh summaries from :mod:`knowledge.language`).
Only columns declared baseline predictors (``clin:``) and imaging columns ever enter a model.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sklearn.model_selection import KFold, StratifiedKFold
from sklearn.tree import DecisionTreeClassifier

from knowledge import cbr, prediction, rules, survival
from knowledge.efficacy import compare_arms
from knowledge.language import both, render
from knowledge.learn import to_jsonable
from knowledge.patients import patient_entries
from knowledge.prediction import is_imaging
from knowledge.roles import CaseSchema, check_predictors

KEY = "patient_key"


def _skip(reason: str) -> dict[str, Any]:
    return {"status": "skipped", "reason": reason}


def model_inputs(table: pd.DataFrame, schema: CaseSchema) -> tuple[list[str], list[str]]:
    """Imaging and ``clin:`` columns of a case base, checked against the schema (LeakageError otherwise)."""
    imaging = [c for c in table.columns if is_imaging(str(c))]
    clinical = [c for c in table.columns if str(c).startswith("clin:")]
    check_predictors(schema, [*imaging, *clinical])
    return imaging, clinical


def resolve_label(table: pd.DataFrame, schema: CaseSchema, label: str | None) -> str | None:
    """The label column to predict (the schema's first label when None); ValueError when unusable."""
    if label is None:
        return next((lab for lab in schema.labels if lab in table.columns), None)
    declared = schema.role_of(label)
    if declared is None or declared.role != "label":
        raise ValueError(f"label {label!r} is not declared with role 'label' in the schema "
                         f"(labels: {schema.labels})")
    if label not in table.columns:
        raise ValueError(f"label {label!r} is not a column of the case base")
    return label


def _modalities(table: pd.DataFrame, imaging: list[str]) -> tuple[dict[str, int], dict[str, list[str]]]:
    mods = sorted({c.split(":", 1)[0] for c in imaging})
    have = {m: table[[c for c in imaging if c.startswith(m + ":")]].notna().any(axis=1) for m in mods}
    counts = {m: int(h.sum()) for m, h in have.items()}
    missing = {str(k): [m for m in mods if not bool(have[m].iloc[i])] for i, k in enumerate(table[KEY])}
    return counts, missing


def numeric_clinical(table: pd.DataFrame, clinical: list[str], *, limit: int = 2) -> list[str]:
    """Up to ``limit`` numeric (non one-hot) clinical predictors with < 20% missing, in table order."""
    return [c for c in clinical if "=" not in c and table[c].notna().mean() >= 0.8][:limit]


def discover(case_base: pd.DataFrame, schema: CaseSchema, *, label: str | None, classifier: str = "logistic_regression",
             outer_folds: int = 5, inner_folds: int = 3, n_bootstrap: int = 1000, n_permutations: int = 100,
             k_similar: int = 3, max_tree_depth: int = 3, random_state: int = 0, lang: str = "en") -> dict[str, Any]:
    """Knowledge discovery on a patient-level case base (one row per patient, key ``patient_key``).

    Parameters
    ----------
    case_base : DataFrame
        :attr:`knowledge.casebase.CaseBase.table` (with a ``timepoint`` column: one row per patient
        and timepoint, results keyed ``"<patient_key>@<timepoint>"``, folds grouped by patient): imaging ``<MOD>:<ROI>:<feature>`` columns,
        ``clin:`` baseline predictors and the schema's label/event/time/treatment columns. Not modified.
    schema : CaseSchema
    label : str or None
        Label column (role ``label``); None: the schema's first label present, if any.
    classifier : {"logistic_regression", "svm", "random_forest", "decision_tree"}
    outer_folds, inner_folds : int
        Nested cross-validation folds (>= 2), grouped by patient, reduced to what the classes allow.
    n_bootstrap, n_permutations : int
        Bootstrap resamples of the AUC; label permutations of the null (0: skipped).
    k_similar, max_tree_depth, random_state : int
    lang : {"en", "zh"}
        Language of ``text`` (both languages are always in the rule/verdict dicts).

    Returns
    -------
    dict
        JSON-able; see the module docstring.

    Raises
    ------
    LeakageError
        When a model-input column is not a declared baseline predictor.
    ValueError, TypeError
        Invalid arguments (names the parameter).
    """
    if not isinstance(case_base, pd.DataFrame):
        raise TypeError(f"case_base must be a DataFrame, got {type(case_base).__name__}")
    if KEY not in case_base.columns:
        raise ValueError(f"case_base has no {KEY!r} column")
    for name, value, lo in (("outer_folds", outer_folds, 2), ("inner_folds", inner_folds, 2),
                            ("n_bootstrap", n_bootstrap, 0), ("n_permutations", n_permutations, 0),
                            ("k_similar", k_similar, 1), ("max_tree_depth", max_tree_depth, 1)):
        if not isinstance(value, int | np.integer) or value < lo:
            raise ValueError(f"{name} must be an integer >= {lo}, got {value!r}")
    if classifier not in prediction.MODEL_KINDS:
        raise ValueError(f"classifier must be one of {prediction.MODEL_KINDS}, got {classifier!r}")
    if lang not in ("en", "zh"):
        raise ValueError(f"lang must be 'en' or 'zh', got {lang!r}")
    table = case_base.copy()
    table[KEY] = table[KEY].astype(str)
    table["_group"] = table[KEY]  # cross-validation groups: rows of one patient never straddle a split
    if "timepoint" in table.columns:  # one row per patient and timepoint: results keyed "<patient>@<timepoint>"
        table[KEY] = table[KEY] + "@" + table["timepoint"].astype(str)
    if table[KEY].duplicated().any():
        raise ValueError("case_base has several rows for one patient_key (and timepoint)")
    imaging, clinical = model_inputs(table, schema)
    label = resolve_label(table, schema, label)
    keys = table[KEY].tolist()
    counts, missing = _modalities(table, imaging)
    out: dict[str, Any] = {"cohort": {"n_patients": len(table), "n_imaging_features": len(imaging),
                                      "n_clinical_features": len(clinical), "modalities": counts,
                                      "missing": {k: v for k, v in missing.items() if v}}}
    params = {"classifier": classifier, "outer_folds": outer_folds, "inner_folds": inner_folds,
              "n_bootstrap": n_bootstrap, "n_permutations": n_permutations, "k_similar": k_similar,
              "max_tree_depth": max_tree_depth, "random_state": random_state}
    out["parameters"] = params
    img_cols = prediction.prefilter(table, imaging)
    out["cohort"]["n_imaging_features_after_prefilter"] = len(img_cols)

    y = None
    if label is not None:
        yv = table[label].to_numpy(dtype=float)
        known = ~np.isnan(yv)
        y = np.where(known, yv, -1).astype(int)
        out["label"] = {"name": label, "positive": 1, "n_positive": int((y == 1).sum()),
                        "n_negative": int((y == 0).sum()), "n_unknown": int((~known).sum())}
    else:
        out["label"] = _skip("the schema declares no label column present in the case base")

    # ------------------------------------------------------------------ prediction
    primary = None
    selected: list[str] = []
    oof = None
    if y is None:
        out["prediction"] = _skip("no label")
    elif prediction.feasible_folds(y[y >= 0], outer_folds) < 2:
        out["prediction"] = _skip(f"cross-validation needs >= 2 patients of each class, got "
                                  f"{out['label']['n_positive']} positive and {out['label']['n_negative']} negative")
    else:
        lab = y >= 0
        sub, ylab, groups = table[lab].reset_index(drop=True), y[lab], table.loc[lab, "_group"].to_numpy()
        sets = {"imaging+clinical": img_cols + clinical, "imaging": img_cols, "clinical": clinical}
        models: dict[str, Any] = {}
        results: dict[str, prediction.CVOutcome] = {}
        for name, cols in sets.items():
            if not cols or (name == "imaging+clinical" and (not img_cols or not clinical)):
                models[name] = _skip(f"no {name} columns")
                continue
            res = prediction.nested_oof(sub[cols], ylab, groups, kind=classifier, outer_folds=outer_folds,
                                        inner_folds=inner_folds, random_state=random_state)
            if primary is None:  # the refit on every patient (for the tree, similarity and new patients)
                _, sel = prediction.fit_final(sub[cols], ylab, groups, kind=classifier, inner_folds=inner_folds,
                                              random_state=random_state)
            else:  # the features chosen in at least half of the outer folds
                half = len(res.chosen_params) / 2
                sel = [c for c in cols if res.selection_counts.get(c, 0) >= half]
            results[name] = res
            models[name] = {"status": "ok", **prediction.model_summary(
                name, ylab, sub[KEY].tolist(), res, n_bootstrap=n_bootstrap, random_state=random_state, selected=sel)}
            if primary is None:
                primary, selected = name, sel
        if primary is None:
            out["prediction"] = _skip("no imaging or clinical predictor columns")
        else:
            res = results[primary]
            null = prediction.permutation_null(sub[sets[primary]], ylab, groups, observed=res.auc, kind=classifier,
                                               outer_folds=outer_folds, inner_folds=inner_folds,
                                               n_permutations=n_permutations, random_state=random_state,
                                               fixed_params=res.most_chosen())
            oof = pd.Series(res.oof, index=sub[KEY])
            out["prediction"] = {"status": "ok", "primary": primary, "models": models, "null": null,
                                 "verdict": _verdict(models, null),
                                 "note": "selection, imputation and scaling inside the folds; null: same outer CV "
                                         "with the hyper-parameters fixed at the inner searches' most frequent "
                                         "choice"}

    # ------------------------------------------------------------------ rules (tree)
    tree_cols = selected or img_cols[:10]
    if y is None or (y >= 0).sum() < 4 or len(set(y[y >= 0])) < 2 or not tree_cols:
        out["tree"] = _skip("needs a label with both classes and >= 4 labelled patients")
        tree_fit = None
    else:
        tree_fit = _tree(table, y, tree_cols, label, max_tree_depth, random_state)
        out["tree"] = tree_fit["result"]

    # ------------------------------------------------------------------ associations
    out["associations"] = _associations(table, y, label, [c for c in selected if is_imaging(c)][:8], clinical)

    # ------------------------------------------------------------------ clusters
    cl_cols = selected or img_cols
    out["clusters"] = rules.cluster_profiles(table, cl_cols, keys, random_state=random_state) if len(table) >= 4 \
        and cl_cols else _skip(f"clustering needs >= 4 patients and features, got {len(table)} patients")

    # ------------------------------------------------------------------ survival
    out["survival"], groups_sv = _survival(table, schema, imaging=img_cols, clinical=clinical, oof=oof,
                                           outer_folds=outer_folds, random_state=random_state)

    # ------------------------------------------------------------------ efficacy
    out["efficacy"] = _efficacy(table, schema, label, clinical, n_bootstrap, random_state)

    # ------------------------------------------------------------------ similar cases
    sim_cols = selected or img_cols or clinical
    outcomes_cols = [c for c in (label, schema.event, schema.time) if c and c in table.columns]
    outcomes = table.set_index(KEY)[outcomes_cols] if outcomes_cols else None
    if len(table) < 2 or not sim_cols:
        out["similar"] = _skip(f"similar cases need >= 2 patients and features, got {len(table)}")
        neigh = {}
    else:
        k = min(k_similar, len(table) - 1)
        neigh = cbr.neighbours(table, keys, table, keys, sim_cols, k=k, outcomes=outcomes)
        sim = {"status": "ok", "k": k, "features": sim_cols, "neighbours": neigh}
        if y is not None and (y >= 0).sum() >= 3:
            lab = y >= 0
            loo = cbr.loo_agreement(table[lab].reset_index(drop=True), img_cols + clinical, y[lab],
                                    n_features=max(3, len(selected)) if selected else 10,
                                    groups=table.loc[lab, "_group"].to_numpy())
            sim.update(loo)
        else:
            sim.update({"loo_agreement": None, "loo_ci": None, "loo_reason": "no label"})
        out["similar"] = sim

    # ------------------------------------------------------------------ patients
    out["patients"] = patient_entries(table, keys=keys, oof=oof, calibration_from=oof, y=y,
                                      tree=tree_fit, neighbours=neigh, survival_groups=groups_sv,
                                      missing=missing, label=label)
    out["text"] = {lg: _summaries(out, lg) for lg in ("en", "zh")}
    out["lang"] = lang
    return to_jsonable(out)


def _verdict(models: dict[str, Any], null: dict[str, Any]) -> dict[str, str]:
    main = models.get("imaging+clinical", {})
    clin = models.get("clinical", {})
    img = models.get("imaging", {})
    p = null.get("p_value", math.nan)
    if main.get("status") == "ok" and clin.get("status") == "ok":
        lo, hi = main["auc_ci"]
        clo, chi = clin["auc_ci"]
        adds = p < 0.05 and lo > chi
        return both("verdict.adds" if adds else "verdict.not_shown", auc=main["auc"], lo=lo, hi=hi, clin=clin["auc"],
                    clo=clo, chi=chi, p=p)
    src = main if main.get("status") == "ok" else img if img.get("status") == "ok" else clin
    lo, hi = src.get("auc_ci", [math.nan, math.nan])
    return both("verdict.no_clinical", auc=src.get("auc", math.nan), lo=lo, hi=hi, p=p)


def _tree(table: pd.DataFrame, y: np.ndarray, cols: list[str], label: str | None, depth: int,
          random_state: int) -> dict[str, Any]:
    lab = y >= 0
    x = table.loc[lab, cols].astype(float)
    x = x.where(np.isfinite(x))
    median = x.median().fillna(0.0)
    xf = x.fillna(median)
    tree = DecisionTreeClassifier(max_depth=depth, min_samples_leaf=2, random_state=random_state)
    tree.fit(xf.to_numpy(), y[lab])
    names = {0: f"no {label}", 1: str(label)}
    result = rules.tree_rules(tree, xf, y[lab], class_names=names)
    result["features"] = cols
    result["note"] = "fitted on every labelled patient (descriptive; its honest accuracy is the cross-validated one)"
    return {"result": result, "tree": tree, "median": median, "columns": cols}


def _associations(table: pd.DataFrame, y: np.ndarray | None, label: str | None, img: list[str],
                  clinical: list[str]) -> dict[str, Any]:
    if y is None or (y >= 0).sum() < 6:
        return _skip("association rules need a label and >= 6 labelled patients")
    lab = y >= 0
    sub = table[lab].copy()
    numeric = img + [c for c in clinical if "=" not in c]
    items = rules.discretise(sub, numeric, [])
    for c in clinical:
        if "=" in c:
            items[c] = sub[c].fillna(0).astype(float).to_numpy() == 1.0
    items[f"{label}=1"] = y[lab] == 1
    items[f"{label}=0"] = y[lab] == 0
    found = rules.association_rules(items, consequents=[f"{label}=1", f"{label}=0"])
    return {"status": "ok", "rules": found, "n_items": int(items.shape[1]),
            "text": {lg: rules.association_text(found, lg) for lg in ("en", "zh")},
            "note": "imaging and numeric clinical values discretised in tertiles (low/mid/high)"}


def _survival(table: pd.DataFrame, schema: CaseSchema, *, imaging: list[str], clinical: list[str],
              oof: pd.Series | None, outer_folds: int, random_state: int) -> tuple[dict[str, Any], dict[str, str]]:
    ev, tm = schema.event, schema.time
    if not ev or not tm or ev not in table.columns or tm not in table.columns:
        return _skip("the schema declares no event and time columns present in the case base"), {}
    ok = table[ev].notna() & table[tm].notna()
    sub = table[ok].reset_index(drop=True)
    t, e = sub[tm].to_numpy(float), sub[ev].to_numpy(float).astype(int)
    if len(sub) < 6 or e.sum() < 2:
        return _skip(f"survival needs >= 6 patients and >= 2 events, got {len(sub)} and {int(e.sum())}"), {}
    clin = numeric_clinical(sub, clinical)
    n_folds = int(min(outer_folds, len(sub) // 2))
    if min(e.sum(), (1 - e).sum()) >= n_folds:  # stratify events vs censored when both are frequent enough
        folds = list(StratifiedKFold(n_splits=n_folds, shuffle=True, random_state=random_state).split(sub, e))
    else:
        folds = list(KFold(n_splits=n_folds, shuffle=True, random_state=random_state).split(sub))
    risk_oof, chosen = survival.cox_oof(sub[clin], sub[imaging], t, e, folds, n_imaging=2, penalizer=0.1)
    top = survival._top_imaging(sub[imaging], t, e, 2)
    if not clin + top:
        return _skip("no baseline clinical or imaging covariate for the Cox model"), {}
    cox = survival.CoxModel(penalizer=0.1).fit(sub[clin + top], t, e)
    finite = np.isfinite(risk_oof)
    c_oof = survival.concordance(t[finite], e[finite], risk_oof[finite])
    if oof is not None and sub[KEY].isin(oof.index).all():
        risk, source = oof.reindex(sub[KEY]).to_numpy(), "out-of-fold predicted probability of the label"
    else:
        risk, source = risk_oof, "out-of-fold Cox risk"
    valid = np.isfinite(risk)
    if valid.sum() < 4:
        return _skip(f"only {int(valid.sum())} patients have an out-of-fold risk"), {}
    med = float(np.median(risk[valid]))
    group = np.where(risk > med, "high", "low")
    km = {g: survival.kaplan_meier(t[valid & (group == g)], e[valid & (group == g)]) for g in ("low", "high")}
    lr = survival.logrank(t[valid], e[valid], group[valid]) if len(set(group[valid])) == 2 else \
        {"statistic": math.nan, "p": math.nan}
    groups = {str(k): str(g) for k, g, v in zip(sub[KEY], group, valid, strict=True) if v}
    res = {"status": "ok", "event": ev, "time": tm, "n": int(len(sub)), "events": int(e.sum()),
           "risk_source": source, "risk_threshold": med, "km": km, "logrank": lr,
           "cox": {"c_index": survival.concordance(t, e, cox.risk(sub[clin + top])), "c_index_oof": c_oof,
                   "coefficients": cox.summary(), "penalizer": 0.1, "clinical_covariates": clin,
                   "imaging_covariates": top, "imaging_chosen_in_folds": chosen,
                   "note": "Breslow ties; ridge penalty on standardised covariates; HR per SD"},
           "groups": groups}
    return res, groups


def _efficacy(table: pd.DataFrame, schema: CaseSchema, label: str | None, clinical: list[str], n_bootstrap: int,
              random_state: int) -> dict[str, Any]:
    tr = schema.treatment
    if not tr or tr not in table.columns:
        return _skip("the schema declares no treatment column present in the case base")
    if label is None:
        return _skip("no label (outcome) to compare treatment arms on")
    covs = numeric_clinical(table, clinical)
    res = compare_arms(table, treatment=tr, outcome=label, covariates=covs, n_bootstrap=min(n_bootstrap, 1000),
                       random_state=random_state)
    res.update({"treatment": tr, "outcome": label,
                "caveat": both("efficacy.caveat", covs=", ".join(c[5:] for c in covs) or "nothing")})
    return res


def _summaries(out: dict[str, Any], lang: str) -> dict[str, str]:
    c = out["cohort"]
    text = {"cohort": render("cohort.summary", lang, n=c["n_patients"], n_img=c["n_imaging_features"],
                             n_clin=c["n_clinical_features"],
                             mods=", ".join(f"{m} {n}" for m, n in c["modalities"].items()) or "-")}
    lab = out["label"]
    text["label"] = render("label.summary", lang, name=lab["name"], pos=lab["n_positive"], neg=lab["n_negative"]) \
        if lab.get("status") != "skipped" else render("skipped", lang, reason=lab["reason"])
    for section in ("prediction", "tree", "associations", "clusters", "survival", "efficacy", "similar"):
        sec = out[section]
        if sec.get("status") == "skipped":
            text[section] = render("skipped", lang, reason=sec["reason"])
        elif section == "prediction":
            text[section] = sec["verdict"][lang]
        elif section == "tree":
            text[section] = "\n".join(sec["text"][lang])
        elif section in ("associations", "clusters"):
            text[section] = "\n".join(sec["text"][lang])
        elif section == "survival":
            text[section] = render("survival.summary", lang, p=sec["logrank"]["p"], c=sec["cox"]["c_index"],
                                   c_oof=sec["cox"]["c_index_oof"])
        elif section == "efficacy":
            lines = [render("efficacy.line", lang, arm=cmp["arm"], reference=cmp["reference"],
                            difference=cmp["adjusted_difference"] if cmp.get("adjusted_difference") is not None
                            else cmp["difference"],
                            lo=(cmp.get("adjusted_ci") or cmp["ci"])[0], hi=(cmp.get("adjusted_ci") or cmp["ci"])[1],
                            covs=", ".join(v[5:] for v in cmp["adjusted_for"]) or "-")
                     for cmp in sec["comparisons"] if cmp.get("status") != "skipped"]
            text[section] = "\n".join([*lines, sec["caveat"][lang]])
        elif section == "similar" and sec.get("loo_agreement") is not None:
            text[section] = render("similar.summary", lang, agree=sec["agree"], n=sec["n"], rate=sec["loo_agreement"],
                                   lo=sec["loo_ci"][0], hi=sec["loo_ci"][1])
        else:
            text[section] = ""
    return text
