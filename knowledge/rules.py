"""Knowledge a clinician can read: decision-tree rules, association rules, cluster profiles.

* :func:`tree_rules` turns a fitted :class:`~sklearn.tree.DecisionTreeClassifier` into one rule
  per leaf, ``IF <feature> > <threshold> AND <feature> <= <threshold> THEN <class> (n cases,
  k of n correct)``, with thresholds printed as short as possible while still separating
  the training values exactly as the tree does; :func:`parse_rule` / :func:`apply_rules`
  evaluate the printed rules on a table, so their fidelity to ``tree.predict`` is checked.
* :func:`association_rules` - an apriori search over discretised (tertile) features,
  categorical attributes and the label: support, confidence, lift.
* :func:`cluster_profiles` - k-means on standardised features (k by silhouette) with the most
  distinguishing features of every cluster.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

import numpy as np
import pandas as pd

from knowledge.language import render


def _short_threshold(thr: float, values: np.ndarray) -> tuple[float, str]:
    """Shortest decimal text of ``thr`` that splits ``values`` exactly as ``thr`` does."""
    values = values[np.isfinite(values)]
    left = values <= thr
    for digits in range(2, 18):
        text = f"{thr:.{digits}g}"
        v = float(text)
        if np.array_equal(values <= v, left):
            return v, text
    return float(thr), repr(float(thr))


def tree_rules(tree: Any, X: pd.DataFrame, y: np.ndarray, *, class_names: dict[Any, str]) -> dict[str, Any]:
    """Nodes, rules and en/zh text of a fitted decision tree, with the rules' fidelity on ``X``.

    Parameters
    ----------
    tree : fitted DecisionTreeClassifier
        Fitted on ``X`` (no missing values).
    X : DataFrame, shape (n_cases, n_features)
    y : ndarray, shape (n_cases,)
        True classes (for the "k of n correct" counts).
    class_names : dict
        Class value -> text printed after THEN.
    """
    t = tree.tree_
    names = list(X.columns)
    arr = X.to_numpy(dtype=float)
    leaf_of = tree.apply(arr)
    pred = tree.predict(arr)
    nodes = []
    for i in range(t.node_count):
        is_leaf = t.children_left[i] == -1
        klass = tree.classes_[int(np.argmax(t.value[i][0]))]
        nodes.append({"id": i, "feature": None if is_leaf else names[t.feature[i]],
                      "threshold": None if is_leaf else float(t.threshold[i]),
                      "left": None if is_leaf else int(t.children_left[i]),
                      "right": None if is_leaf else int(t.children_right[i]),
                      "class": class_names.get(klass, str(klass)), "n": int(t.n_node_samples[i]),
                      "value": [float(v) for v in t.value[i][0]]})
    rules = []

    def walk(node: int, conds: list[dict[str, Any]]) -> None:
        if t.children_left[node] == -1:
            members = leaf_of == node
            klass = tree.classes_[int(np.argmax(t.value[node][0]))]
            rules.append({"conditions": conds, "class": class_names.get(klass, str(klass)), "value": klass,
                          "n": int(members.sum()), "correct": int(np.sum(y[members] == klass))})
            return
        j = int(t.feature[node])
        thr, text = _short_threshold(float(t.threshold[node]), arr[:, j])
        walk(int(t.children_left[node]), [*conds, {"feature": names[j], "op": "<=", "threshold": thr, "text": text}])
        walk(int(t.children_right[node]), [*conds, {"feature": names[j], "op": ">", "threshold": thr, "text": text}])

    walk(0, [])
    for r in rules:
        r["conditions"] = simplify(r["conditions"])
    text = {lang: [rule_text(r, lang) for r in rules] for lang in ("en", "zh")}
    parsed = [parse_rule(line) for line in text["en"]]
    by_class = {r["class"]: r["value"] for r in rules}
    fired = apply_rules(parsed, X)
    reproduced = np.array([f is not None and by_class.get(f) == p for f, p in zip(fired, pred, strict=True)])
    for r in rules:
        r["value"] = _py(r["value"])
    return {"status": "ok", "nodes": nodes, "rules": rules, "text": text,
            "fidelity": float(reproduced.mean()) if len(reproduced) else math.nan,
            "accuracy": float(np.mean(pred == y)) if len(y) else math.nan}


def simplify(conditions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Keep the tightest bound per feature and direction (``x > 1 AND x > 2`` -> ``x > 2``), in path order."""
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for c in conditions:
        key = (c["feature"], c["op"])
        old = best.get(key)
        if old is None or (c["threshold"] > old["threshold"] if c["op"] == ">" else c["threshold"] < old["threshold"]):
            best[key] = c
    seen: list[tuple[str, str]] = []
    for c in conditions:
        key = (c["feature"], c["op"])
        if key not in seen:
            seen.append(key)
    return [best[k] for k in seen]


def _py(v: Any) -> Any:
    return v.item() if hasattr(v, "item") else v


def rule_text(rule: dict[str, Any], lang: str = "en") -> str:
    """``IF a > 1.5 AND b <= 2 THEN class (n cases, k of n correct)`` (or its Chinese twin)."""
    conds = [render("rule.cond_gt" if c["op"] == ">" else "rule.cond_le", lang, feature=c["feature"],
                    threshold=c.get("text", f"{c['threshold']:g}")) for c in rule["conditions"]]
    joined = render("rule.and", lang).join(conds) if conds else render("rule.always", lang)
    return render("rule.line", lang, conditions=joined, klass=rule["class"], n=rule["n"], correct=rule["correct"])


_RULE = re.compile(r"^IF (?P<conds>.+) THEN (?P<klass>.+) \((?P<n>\d+) cases, (?P<k>\d+) of \d+ correct\)$")
_COND = re.compile(r"^(?P<feature>.+) (?P<op><=|>) (?P<thr>[-+0-9.eEinfa]+)$")


def parse_rule(line: str) -> dict[str, Any]:
    """Parse an English rule line back into ``{"conditions": [...], "class", "n", "correct"}``.

    Raises
    ------
    ValueError
        When the line is not in the rule format.
    """
    m = _RULE.match(line.strip())
    if not m:
        raise ValueError(f"not a rule line: {line!r}")
    conds = []
    if m["conds"] != "TRUE":
        for part in m["conds"].split(" AND "):
            c = _COND.match(part)
            if not c:
                raise ValueError(f"not a rule condition: {part!r} in {line!r}")
            conds.append({"feature": c["feature"], "op": c["op"], "threshold": float(c["thr"])})
    return {"conditions": conds, "class": m["klass"], "n": int(m["n"]), "correct": int(m["k"])}


def apply_rules(rules: list[dict[str, Any]], table: pd.DataFrame) -> list[str | None]:
    """Class of the first rule whose every condition holds, per row of ``table`` (None: no rule fires)."""
    out: list[str | None] = [None] * len(table)
    for i in range(len(table)):
        row = table.iloc[i]
        for r in rules:
            if all((float(row[c["feature"]]) > c["threshold"]) if c["op"] == ">" else
                   (float(row[c["feature"]]) <= c["threshold"]) for c in r["conditions"]):
                out[i] = r["class"]
                break
    return out


def fired_rules(rules: list[dict[str, Any]], row: pd.Series) -> list[int]:
    """Indices of the rules that fire for one case (a tree's leaves: exactly one)."""
    return [i for i, r in enumerate(rules)
            if all((float(row[c["feature"]]) > c["threshold"]) if c["op"] == ">" else
                   (float(row[c["feature"]]) <= c["threshold"]) for c in r["conditions"])]


# ------------------------------------------------------------------ association rules


def discretise(table: pd.DataFrame, numeric: list[str], categorical: list[str]) -> pd.DataFrame:
    """Boolean item table: numeric columns -> ``<col> low/mid/high`` (tertiles), categoricals -> ``<col>=<v>``."""
    items: dict[str, pd.Series] = {}
    for c in numeric:
        v = pd.to_numeric(table[c], errors="coerce")
        if v.nunique() < 3:
            continue
        lo, hi = v.quantile([1 / 3, 2 / 3])
        items[f"{c} low"] = v <= lo
        items[f"{c} mid"] = (v > lo) & (v <= hi)
        items[f"{c} high"] = v > hi
    for c in categorical:
        v = table[c]
        for level in sorted(v.dropna().astype(str).unique()):
            items[f"{c}={level}"] = v.astype("string") == level
    return pd.DataFrame({k: s.fillna(False).astype(bool) for k, s in items.items()}, index=table.index)


def association_rules(items: pd.DataFrame, *, consequents: list[str], min_support: float = 0.15,
                      min_confidence: float = 0.6, max_antecedent: int = 2, top: int = 20) -> list[dict[str, Any]]:
    """Apriori rules ``antecedent => consequent`` with the given consequent items.

    Parameters
    ----------
    items : DataFrame of bool, shape (n_cases, n_items)
    consequents : list of str
        Items allowed on the right-hand side (e.g. the label's two values).
    min_support, min_confidence : float
        Thresholds on the rule's support (fraction of cases with antecedent and consequent) and
        confidence (P(consequent | antecedent)).
    max_antecedent : int
        Largest antecedent itemset.

    Returns
    -------
    list of dict
        ``antecedent``, ``consequent``, ``support``, ``confidence``, ``lift``, ``n``; by lift then support.
    """
    n = len(items)
    if n == 0:
        return []
    M = items.to_numpy(dtype=bool)
    names = list(items.columns)
    cons_idx = [names.index(c) for c in consequents if c in names]
    base = [j for j in range(len(names)) if j not in cons_idx and M[:, j].mean() >= min_support]
    frequent: list[tuple[int, ...]] = [(j,) for j in base]
    level = list(frequent)
    for _ in range(max_antecedent - 1):
        nxt = []
        for a in level:
            for j in base:
                if j <= a[-1] or names[j].rsplit(" ", 1)[0] in {names[i].rsplit(" ", 1)[0] for i in a}:
                    continue
                cand = (*a, j)
                if M[:, list(cand)].all(axis=1).mean() >= min_support:
                    nxt.append(cand)
        frequent.extend(nxt)
        level = nxt
    rules: list[dict[str, Any]] = []
    for ante in frequent:
        mask = M[:, list(ante)].all(axis=1)
        for c in cons_idx:
            both = mask & M[:, c]
            support = both.mean()
            if support < min_support or not mask.any():
                continue
            conf = both.sum() / mask.sum()
            pc = M[:, c].mean()
            if conf >= min_confidence and pc > 0:
                rules.append({"antecedent": [names[i] for i in ante], "consequent": [names[c]],
                              "support": float(support), "confidence": float(conf), "lift": float(conf / pc),
                              "n": int(both.sum())})
    rules.sort(key=lambda r: (-r["lift"], -r["support"], len(r["antecedent"])))
    return rules[:top]


def association_text(rules: list[dict[str, Any]], lang: str) -> list[str]:
    return [render("assoc.line", lang, antecedent=" & ".join(r["antecedent"]), consequent=" & ".join(r["consequent"]),
                   support=r["support"], confidence=r["confidence"], lift=r["lift"]) for r in rules]


# ------------------------------------------------------------------------- clusters


def cluster_profiles(table: pd.DataFrame, columns: list[str], keys: list[str], *, random_state: int,
                     k_range: tuple[int, int] = (2, 4), top: int = 3) -> dict[str, Any]:
    """k-means on median-imputed standardised ``columns`` (k by silhouette) and each cluster's profile.

    The profile lists the features whose cluster mean differs most from the rest of the
    cohort, as a standardised effect size (difference of means / pooled SD).
    """
    from sklearn.cluster import KMeans
    from sklearn.metrics import silhouette_score

    x = table[columns].to_numpy(dtype=float)
    x = np.where(np.isfinite(x), x, np.nan)
    med = np.nanmedian(np.where(np.isnan(x).all(axis=0), 0.0, x), axis=0)
    x = np.where(np.isnan(x), med, x)
    sd = x.std(axis=0)
    z = (x - x.mean(axis=0)) / np.where(sd > 0, sd, 1.0)
    n = len(z)
    best = None
    for k in range(k_range[0], min(k_range[1], n - 1) + 1):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = KMeans(n_clusters=k, n_init=10, random_state=random_state).fit_predict(z)
        if len(set(labels)) < 2:
            continue
        s = silhouette_score(z, labels)
        if best is None or s > best[0]:
            best = (s, k, labels)
    if best is None:
        return {"status": "skipped", "reason": f"clustering needs >= 3 patients with varying features, got {n}"}
    sil, k, labels = best
    profiles: list[dict[str, Any]] = []
    for c in range(k):
        inside = labels == c
        dist = []
        for j, name in enumerate(columns):
            a, b = z[inside, j], z[~inside, j]
            pooled = math.sqrt(((a.var(ddof=0) * len(a)) + (b.var(ddof=0) * len(b))) / max(1, len(a) + len(b) - 2))
            eff = (a.mean() - b.mean()) / pooled if pooled > 0 else 0.0
            dist.append((abs(eff), eff, name))
        dist.sort(reverse=True)
        profiles.append({"cluster": c, "n": int(inside.sum()),
                         "distinguishing": [{"feature": nm, "direction": "high" if e > 0 else "low",
                                             "effect_size": float(e)} for _, e, nm in dist[:top]]})
    text = {lang: [render("cluster.line", lang, cluster=p["cluster"], n=p["n"], features="; ".join(
        render("cluster.feature_high" if d["direction"] == "high" else "cluster.feature_low", lang,
               feature=d["feature"], effect=d["effect_size"]) for d in p["distinguishing"]))
        for p in profiles] for lang in ("en", "zh")}
    return {"status": "ok", "k": int(k), "silhouette": float(sil),
            "assignments": {key: int(lab) for key, lab in zip(keys, labels, strict=True)},
            "profiles": profiles, "text": text, "features": list(columns)}
