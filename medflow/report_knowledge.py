"""Decision-support part of the report: cohort page and one page per patient, from a discovery result.

Input is the JSON-able dict of :func:`knowledge.discover` (plus ``mode``/``lang`` and, in
``"placed"`` mode, the workspace's patients placed against a stored case base). Plots are
matplotlib PNGs embedded as ``data:`` URIs, so the HTML opens from disk with nothing else; a
patient's plots are the cohort's drawing, kept once in the page, under the patient's marker
(:mod:`medflow.report_patient_plots`).
Sentences (summaries, rules, verdicts, caveats) come from :mod:`knowledge.language`
through the result's ``text`` fields; only headings and column names are defined here.
"""

from __future__ import annotations

import base64
import html
import io
import math
from typing import Any

import numpy as np
import pandas as pd

from medflow.report_patient_plots import PatientPlots, draw_km

#: headings and column names of the report (sentences come from knowledge.language via the results)
UI: dict[str, dict[str, str]] = {
    "title": {"en": "medflow decision-support report", "zh": "medflow 决策支持报告"},
    "cohort": {"en": "Cohort", "zh": "队列"},
    "reference": {"en": "Reference case base", "zh": "参考病例库"},
    "placed_note": {"en": "The patients of this workspace have no labelled clinical table: they are placed against "
                          "the stored case base below (models, standardisation and survival groups fitted on the "
                          "stored cases only; the new patients were not used for training).",
                    "zh": "本工作区的患者没有带标签的临床表：他们被放置到下方的已存病例库中进行比较（模型、标准化和生存分组"
                          "仅由已存病例拟合；新患者未参与训练）。"},
    "patients": {"en": "Patients", "zh": "患者"},
    "patient": {"en": "Patient", "zh": "患者"},
    "prediction": {"en": "Prediction (nested cross-validation)", "zh": "预测（嵌套交叉验证）"},
    "roc": {"en": "ROC curves", "zh": "ROC 曲线"},
    "calibration": {"en": "Calibration", "zh": "校准"},
    "survival": {"en": "Survival", "zh": "生存分析"},
    "tree": {"en": "Decision tree and its rules", "zh": "决策树及其规则"},
    "associations": {"en": "Association rules", "zh": "关联规则"},
    "clusters": {"en": "Clusters", "zh": "聚类"},
    "efficacy": {"en": "Treatment efficacy (observational)", "zh": "疗效（观察性）"},
    "similar": {"en": "Similar cases", "zh": "相似病例"},
    "risk": {"en": "Predicted risk", "zh": "预测风险"},
    "rules_fired": {"en": "Rules that fire", "zh": "触发的规则"},
    "survival_position": {"en": "Position on the survival curves", "zh": "在生存曲线上的位置"},
    "qc": {"en": "Quality-control flags", "zh": "质量控制标记"},
    "missing": {"en": "Missing modalities", "zh": "缺失的模态"},
    "none": {"en": "none", "zh": "无"},
    "group": {"en": "survival risk group", "zh": "生存风险组"},
    "fidelity": {"en": "Rules reproduce the tree's prediction on {pct:.0f}% of cases.",
                 "zh": "规则在 {pct:.0f}% 的病例上重现了决策树的预测。"},
    "null": {"en": "permutation null", "zh": "置换零模型"},
    "model": {"en": "model", "zh": "模型"},
    "oof_note": {"en": "Out-of-fold: each patient's risk comes from a model that did not see that patient.",
                 "zh": "折外预测：每位患者的风险来自未见过该患者的模型。"},
    "research": {"en": "Research use only; not a medical device. Cases are identified by pseudonymous keys.",
                 "zh": "仅供研究使用，非医疗器械。病例以假名标识。"},
}


def t(key: str, lang: str, **fields: Any) -> str:
    return UI[key][lang if lang in ("en", "zh") else "en"].format(**fields)


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight", dpi=90)
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def _img(png: str, alt: str, plot: str) -> str:
    return f"<img class='plot' data-plot='{_esc(plot)}' alt='{_esc(alt)}' src='data:image/png;base64,{png}'>"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _fmt(v: Any, nd: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return "–" if math.isnan(v) else f"{v:.{nd}f}"
    return str(v)


def _ci(ci: Any, nd: int = 2) -> str:
    if not ci or len(ci) != 2 or any(c is None for c in ci):
        return "–"
    return f"[{ci[0]:.{nd}f}, {ci[1]:.{nd}f}]"


def _block_status(block: Any) -> str:
    """An analysis the data could not support: its status and reason, as the result states them."""
    if isinstance(block, dict) and block.get("status") not in (None, "ok"):
        return (f"<p class='skip'>{_esc(block.get('status'))}: {_esc(block.get('reason', ''))}</p>")
    return ""


def _text(block: dict[str, Any], lang: str) -> list[str]:
    txt = (block or {}).get("text") or {}
    lines = txt.get(lang) if isinstance(txt, dict) else None
    if lines is None and isinstance(txt, dict):
        lines = txt.get("en")
    if isinstance(lines, str):
        return [lines]
    return list(lines or [])


def _lang_text(value: Any, lang: str) -> str:
    if isinstance(value, dict):
        return str(value.get(lang) or value.get("en") or "")
    return "" if value is None else str(value)


# -- plots ----------------------------------------------------------------------------------------------
_COLOURS = {"imaging+clinical": "#c0392b", "imaging": "#2e86c1", "clinical": "#27ae60"}


def roc_png(pred: dict[str, Any]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for name, m in (pred.get("models") or {}).items():
        roc = m.get("roc") or {}
        if roc.get("fpr"):
            ax.plot(roc["fpr"], roc["tpr"], color=_COLOURS.get(name, "#555"), lw=1.8,
                    label=f"{name}: AUC {_fmt(m.get('auc'), 2)} {_ci(m.get('auc_ci'))}")
    null = pred.get("null") or {}
    lab = "chance"
    if null.get("auc_mean") is not None:
        lab = f"permutation null: AUC {_fmt(null.get('auc_mean'), 2)} {_ci(null.get('auc_ci'))}"
    ax.plot([0, 1], [0, 1], ls="--", color="#888", lw=1, label=lab)
    ax.set_xlabel("1 - specificity (false-positive rate)")
    ax.set_ylabel("sensitivity (true-positive rate)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="lower right", fontsize=6.5)
    ax.set_title("ROC, out-of-fold (bootstrap 95% CI)", fontsize=9)
    return _png(fig)


def calibration_png(pred: dict[str, Any]) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.plot([0, 1], [0, 1], ls="--", color="#888", lw=1, label="perfect calibration")
    for name, m in (pred.get("models") or {}).items():
        cal = m.get("calibration") or {}
        if cal.get("mean_predicted"):
            ax.plot(cal["mean_predicted"], cal["fraction_positive"], marker="o", color=_COLOURS.get(name, "#555"),
                    lw=1.4, label=f"{name} (Brier {_fmt(m.get('brier'), 3)})")
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed fraction positive")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(loc="upper left", fontsize=6.5)
    ax.set_title("Calibration (out-of-fold)", fontsize=9)
    return _png(fig)


def km_png(surv: dict[str, Any]) -> str:
    """The cohort's Kaplan-Meier curves per out-of-fold risk group (a patient's: :mod:`medflow.report_patient_plots`)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    draw_km(ax, surv)
    return _png(fig)


def tree_png(tree: dict[str, Any]) -> str:
    """Node-link drawing of the fitted tree from its JSON nodes (inner: test, leaves: class and n)."""
    plt = _plt()
    nodes = {n["id"]: n for n in tree.get("nodes") or []}
    if not nodes:
        fig, ax = plt.subplots(figsize=(3, 1))
        ax.axis("off")
        return _png(fig)
    root = min(nodes)
    pos: dict[int, tuple[float, int]] = {}
    counter = [0]

    def place(i: int, depth: int) -> float:
        n = nodes[i]
        kids = [k for k in (n.get("left"), n.get("right")) if k is not None and k in nodes and n.get("feature")]
        if not kids:
            x = float(counter[0])
            counter[0] += 1
        else:
            x = float(np.mean([place(k, depth + 1) for k in kids]))
        pos[i] = (x, depth)
        return x

    place(root, 0)
    width = max(counter[0], 1)
    depth = max(d for _, d in pos.values()) + 1
    fig, ax = plt.subplots(figsize=(min(2.3 * width + 1, 16), 1.5 * depth + 0.6))
    for i, (x, d) in pos.items():
        n = nodes[i]
        for side, k in (("yes", n.get("left")), ("no", n.get("right"))):
            if n.get("feature") and k in pos:
                x2, d2 = pos[k]
                ax.annotate("", xy=(x2, -d2 + 0.18), xytext=(x, -d - 0.18),
                            arrowprops={"arrowstyle": "->", "color": "#777", "lw": 1})
                ax.text((x + x2) / 2, (-d - d2) / 2, "≤" if side == "yes" else ">", fontsize=8, color="#555",
                        ha="center", va="center", bbox={"fc": "white", "ec": "none", "pad": 0.5})
        if n.get("feature"):
            label = f"{n['feature']}\n≤ {n.get('threshold'):.4g}\nn={n.get('n')}"
            fc = "#eef3f8"
        else:
            label = f"{n.get('class')}\nn={n.get('n')}"
            fc = "#fdecea" if str(n.get("class")) in ("1", "1.0", "positive", "True", "yes") else "#eaf7ee"
        ax.text(x, -d, label, ha="center", va="center", fontsize=6.5, wrap=True,
                bbox={"boxstyle": "round,pad=0.35", "fc": fc, "ec": "#667"})
    ax.set_xlim(-0.8, width - 0.2)
    ax.set_ylim(-depth + 0.4, 0.6)
    ax.axis("off")
    ax.set_title("Decision tree (left branch: condition true)", fontsize=9)
    return _png(fig)


def _table(rows: list[dict[str, Any]] | pd.DataFrame, *, cls: str = "") -> str:
    df = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    if df.empty:
        return ""
    head = "".join(f"<th>{_esc(c)}</th>" for c in df.columns)
    body = "".join("<tr>" + "".join(f"<td>{_esc(_fmt(v))}</td>" for v in rec) + "</tr>"
                   for rec in df.itertuples(index=False, name=None))
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _ul(lines: list[str], cls: str = "") -> str:
    if not lines:
        return ""
    return f"<ul class='{cls}'>" + "".join(f"<li>{_esc(x)}</li>" for x in lines) + "</ul>"


def _pre(lines: list[str]) -> str:
    return "<pre class='rules'>" + _esc("\n".join(lines)) + "</pre>" if lines else ""


# -- sections ---------------------------------------------------------------------------------------------
def _summary(results: dict[str, Any], section: str, lang: str) -> str:
    txt = (results.get("text") or {}).get(lang) or (results.get("text") or {}).get("en") or {}
    s = txt.get(section) if isinstance(txt, dict) else None
    # a summary that only repeats the section's own list (rules, clusters) is left to the list
    return f"<p class='summary'>{_esc(s)}</p>" if s and len(s) <= 400 else ""


def cohort_section(results: dict[str, Any], *, lang: str) -> str:
    """The cohort page: prediction (ROC, calibration), survival (KM), tree + rules, associations, clusters, efficacy."""
    parts = []
    placed = results.get("mode") == "placed"
    heading = t("reference", lang) if placed else t("cohort", lang)
    parts.append(f"<section class='page' id='cohort'><h2>{_esc(heading)}</h2>")
    if placed:
        parts.append(f"<p class='note'>{_esc(t('placed_note', lang))}</p>")
    coh = results.get("cohort") or {}
    parts.append(_summary(results, "cohort", lang))
    mods = coh.get("modalities") or {}
    if mods:
        parts.append(_table([{"modality": k, "patients": v} for k, v in mods.items()]))
    lab = results.get("label") or {}
    parts.append(_summary(results, "label", lang))

    pred = results.get("prediction") or {}
    parts.append(f"<h3>{_esc(t('prediction', lang))}</h3>")
    parts.append(_summary(results, "prediction", lang))
    parts.append(_block_status(pred))
    if pred.get("models"):
        rows = [{t("model", lang): name, "AUC": m.get("auc"), "AUC 95% CI": _ci(m.get("auc_ci")),
                 "accuracy": m.get("accuracy"), "Brier": m.get("brier"),
                 "features": len(m.get("selected_features") or [])} for name, m in pred["models"].items()]
        null = pred.get("null") or {}
        if null:
            rows.append({t("model", lang): t("null", lang), "AUC": null.get("auc_mean"),
                         "AUC 95% CI": _ci(null.get("auc_ci")), "accuracy": None, "Brier": None,
                         "features": f"p = {_fmt(null.get('p_value'), 3)} ({null.get('n_permutations')} perm.)"})
        parts.append(_table(rows))
        verdict = _lang_text(pred.get("verdict"), lang)
        if verdict and verdict not in _summary(results, "prediction", lang):
            parts.append(f"<p class='verdict'>{_esc(verdict)}</p>")
        parts.append("<div class='figs'>" + _img(roc_png(pred), "ROC curves", "roc")
                     + _img(calibration_png(pred), "calibration", "calibration") + "</div>")
        if lab:
            parts.append(f"<p class='muted'>{_esc(t('oof_note', lang))}</p>")

    surv = results.get("survival") or {}
    parts.append(f"<h3>{_esc(t('survival', lang))}</h3>")
    parts.append(_summary(results, "survival", lang))
    parts.append(_block_status(surv))
    if surv.get("km"):
        parts.append("<div class='figs'>" + _img(km_png(surv), "Kaplan-Meier", "km") + "</div>")
        cox = surv.get("cox") or {}
        if cox:
            parts.append(f"<p>Cox C-index {_fmt(cox.get('c_index'), 3)} (out-of-fold "
                         f"{_fmt(cox.get('c_index_oof'), 3)})</p>")
            parts.append(_table([{"covariate": c.get("covariate"), "HR": c.get("hr"), "95% CI": _ci(c.get("ci")),
                                  "p": c.get("p")} for c in cox.get("coefficients") or []]))

    tree = results.get("tree") or {}
    parts.append(f"<h3>{_esc(t('tree', lang))}</h3>")
    parts.append(_block_status(tree))
    if tree.get("nodes"):
        parts.append("<div class='figs'>" + _img(tree_png(tree), "decision tree", "tree") + "</div>")
        parts.append(_pre(_text(tree, lang)))
        if tree.get("fidelity") is not None:
            parts.append(f"<p class='muted'>{_esc(t('fidelity', lang, pct=100 * float(tree['fidelity'])))}</p>")

    assoc = results.get("associations") or {}
    parts.append(f"<h3>{_esc(t('associations', lang))}</h3>")
    parts.append(_block_status(assoc))
    parts.append(_ul(_text(assoc, lang)[:15], "rules") or _summary(results, "associations", lang))

    clus = results.get("clusters") or {}
    parts.append(f"<h3>{_esc(t('clusters', lang))}</h3>")
    parts.append(_block_status(clus))
    parts.append(_ul(_text(clus, lang)) or _summary(results, "clusters", lang))

    eff = results.get("efficacy") or {}
    parts.append(f"<h3>{_esc(t('efficacy', lang))}</h3>")
    parts.append(_summary(results, "efficacy", lang))
    parts.append(_block_status(eff))
    if eff.get("arms"):
        parts.append(f"<p>{_esc(eff.get('treatment'))} → {_esc(eff.get('outcome'))}</p>")
        parts.append(_table(eff["arms"]))
        parts.append(_table([{"arm": c.get("arm"), "reference": c.get("reference"), "difference": c.get("difference"),
                              "95% CI": _ci(c.get("ci")), "adjusted for": ", ".join(c.get("adjusted_for") or [])}
                             for c in eff.get("comparisons") or []]))
        caveat = _lang_text(eff.get("caveat"), lang)
        if caveat:
            parts.append(f"<p class='caveat'>{_esc(caveat)}</p>")

    sim = results.get("similar") or {}
    parts.append(f"<h3>{_esc(t('similar', lang))}</h3>")
    parts.append(_summary(results, "similar", lang))
    parts.append(_block_status(sim))
    parts.append("</section>")
    return "\n".join(p for p in parts if p)


def _cohort_risks(results: dict[str, Any]) -> list[float]:
    pats = results.get("reference_patients") if results.get("mode") == "placed" else results.get("patients")
    return [float(p["risk"]) for p in (pats or {}).values() if isinstance(p.get("risk"), int | float)]


def _patient_plots(results: dict[str, Any]) -> PatientPlots:
    """The cohort drawings behind the patients' plots (drawn when a patient page first needs them)."""
    times = [float(p["time"]) for p in (results.get("patients") or {}).values() if isinstance(p.get("time"), int | float)]
    return PatientPlots(_cohort_risks(results), results.get("survival") or {}, times)


def patient_section(key: str, p: dict[str, Any], results: dict[str, Any], *, lang: str,
                    plots: PatientPlots | None = None) -> str:
    """One patient's page: risk with interval, rules fired, similar cases, survival position, QC flags.

    ``plots``: the cohort drawings shared by every patient's page (:func:`knowledge_sections` passes one for all
    pages and puts its :meth:`~medflow.report_patient_plots.PatientPlots.definitions` in the page once); without
    it the page carries its own.
    """
    own = plots is None
    if own:
        plots = _patient_plots(results)
    parts = [f"<section class='page patient' id='patient-{_esc(key)}'><h2>{_esc(t('patient', lang))} "
             f"<code>{_esc(key)}</code></h2>"]
    risk = p.get("risk")
    parts.append(f"<h3>{_esc(t('risk', lang))}</h3>")
    if isinstance(risk, int | float):
        parts.append(f"<p class='risk'><b>{risk:.2f}</b> {_esc(_ci(p.get('risk_ci')))}</p>")
        parts.append("<div class='figs'>" + plots.risk(float(risk), p.get("risk_ci")) + "</div>")
    else:
        parts.append(f"<p>{_esc(_fmt(risk))}</p>")
    parts.append(f"<h3>{_esc(t('rules_fired', lang))}</h3>")
    fired = _lang_text_list(p.get("rules_fired"), lang)
    parts.append(_pre(fired) if fired else f"<p>{_esc(t('none', lang))}</p>")
    parts.append(f"<h3>{_esc(t('similar', lang))}</h3>")
    rows = []
    for s in p.get("similar") or []:
        out = s.get("outcome") or {}
        rows.append({"case": s.get("patient_key"), "distance": s.get("distance"),
                     **{k: _outcome_value(v) for k, v in out.items()},
                     "closest features": "; ".join(_shared(f) for f in (s.get("shared_features") or [])[:3])})
    parts.append(_table(rows) or f"<p>{_esc(t('none', lang))}</p>")
    parts.append(f"<h3>{_esc(t('survival_position', lang))}</h3>")
    group = p.get("survival_group")
    surv = results.get("survival") or {}
    parts.append(f"<p>{_esc(t('group', lang))}: <b>{_esc(group if group is not None else t('none', lang))}</b></p>")
    if surv.get("km"):
        time = float(p["time"]) if isinstance(p.get("time"), int | float) else None
        parts.append("<div class='figs'>" + plots.survival_position(group, time) + "</div>")
    parts.append(f"<h3>{_esc(t('qc', lang))}</h3>")
    parts.append(_ul([str(q) for q in p.get("qc_flags") or []]) or f"<p>{_esc(t('none', lang))}</p>")
    miss = p.get("missing_modalities") or []
    parts.append(f"<p>{_esc(t('missing', lang))}: {_esc(', '.join(miss) if miss else t('none', lang))}</p>")
    if own:
        parts.append(plots.definitions())
    parts.append("</section>")
    return "\n".join(parts)


def _outcome_value(v: Any) -> Any:
    """0/1 outcomes and day counts as integers; other values as they are."""
    if isinstance(v, float) and not math.isnan(v) and v.is_integer():
        return int(v)
    return v


def _shared(f: Any) -> str:
    if isinstance(f, dict):
        d = f.get("difference_sd")
        return f"{f.get('feature')} (Δ {d:.2f} SD)" if isinstance(d, int | float) else str(f.get("feature"))
    return str(f)


def _lang_text_list(value: Any, lang: str) -> list[str]:
    if isinstance(value, dict):
        v = value.get(lang) or value.get("en") or []
        return [v] if isinstance(v, str) else list(v)
    return list(value or [])


_SCRIPT = """<script>
(function(){function show(){setTimeout(function(){if(document.body.classList.contains('single'))window.scrollTo(0,0);},50);var h=location.hash.slice(1);var pages=document.querySelectorAll('section.page');
var hit=h&&document.getElementById(h);hit=hit&&hit.classList.contains('page')?hit:null;
document.body.classList.toggle('single',!!hit);for(var i=0;i<pages.length;i++){pages[i].style.display=
(!hit||pages[i]===hit)?'':'none';}if(hit){window.scrollTo(0,0);}}
window.addEventListener('hashchange',show);show();})();
</script>"""


def knowledge_sections(results: dict[str, Any], *, lang: str = "en") -> str:
    """The cohort page, a patient index and one page per patient (an HTML fragment)."""
    if not results:
        return ""
    pats = results.get("patients") or {}
    nav = ["<nav class='pages'><a href='#cohort'>" + _esc(t("reference" if results.get("mode") == "placed"
                                                            else "cohort", lang)) + "</a>"]
    nav += [f"<a href='#patient-{_esc(k)}'>{_esc(k)}</a>" for k in pats]
    nav.append("<a href='#'>all</a></nav>")
    parts = [" ".join(nav), cohort_section(results, lang=lang)]
    plots = _patient_plots(results)  # one drawing of each kind for all the patient pages
    parts += [patient_section(k, p, results, lang=lang, plots=plots) for k, p in pats.items()]
    return plots.definitions() + "\n".join(parts) + _SCRIPT


CSS = """
nav.pages{background:#fff;padding:.4em 0;border-bottom:1px solid #ddd;font-size:.85em}
nav.pages a{margin-right:.8em} section.page{margin-top:1em}
body.single > :not(nav.pages):not(section.page):not(h1):not(script){display:none}
img.plot,svg.plot{margin:4px 8px 4px 0;border:1px solid #eee} .figs{display:flex;flex-wrap:wrap;align-items:flex-start}
pre.rules{background:#f7f7f7;padding:.6em;white-space:pre-wrap;font-size:.85em}
.verdict{font-weight:600} .caveat{color:#7a4b00;font-style:italic} .note{background:#eef5fb;padding:.5em}
.summary{margin:.3em 0} .risk{font-size:1.3em} code{background:#f3f3f3;padding:0 .3em}
"""


def render_knowledge_report(results: dict[str, Any], *, lang: str = "en", title: str = "") -> str:
    """A stand-alone decision-support page (``medflow discover``): cohort and patient pages."""
    from medflow.report import _CSS

    head = (f"<!doctype html><html lang='{'zh' if lang == 'zh' else 'en'}'><head><meta charset='utf-8'>"
            f"<title>{_esc(t('title', lang))}</title><style>{_CSS}{CSS}</style></head><body>")
    return (head + f"<h1>{_esc(t('title', lang))}</h1><p class='muted'>{_esc(title)} · "
            f"{_esc(t('research', lang))}</p>" + knowledge_sections(results, lang=lang) + "</body></html>")
