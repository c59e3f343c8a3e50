"""One template table for every sentence knowledge discovery writes, in English and Chinese.

``TEMPLATES[key] = {"en": ..., "zh": ...}``; both languages take the same format fields,
so the numbers of a Chinese sentence are those of its English twin.
"""

from __future__ import annotations

from typing import Any

LANGS = ("en", "zh")

TEMPLATES: dict[str, dict[str, str]] = {
    # schema confirmation
    "schema.line": {"en": "{name}: {role} ({type}){extra}", "zh": "{name}：{role}（{type}）{extra}"},
    "schema.derived": {"en": " = 1 when {source} contains {tokens}", "zh": "，当 {source} 含有 {tokens} 时为 1"},
    "schema.event": {"en": " event when value is {tokens}", "zh": "，取值为 {tokens} 时记为事件"},
    "schema.time_of": {"en": " time to {event}", "zh": "，至 {event} 的时间"},
    "role.identifier": {"en": "identifier", "zh": "标识符"},
    "role.predictor": {"en": "baseline predictor", "zh": "基线预测变量"},
    "role.label": {"en": "label", "zh": "标签"},
    "role.event": {"en": "event", "zh": "事件"},
    "role.time": {"en": "time to event", "zh": "事件时间"},
    "role.treatment": {"en": "treatment", "zh": "治疗"},
    "role.post_baseline": {"en": "post-baseline (never a model input)", "zh": "基线后信息（不作为模型输入）"},
    "role.phi": {"en": "identifying information (dropped)", "zh": "身份信息（已删除）"},
    "role.ignore": {"en": "ignored", "zh": "忽略"},
    # tree rules
    "rule.cond_gt": {"en": "{feature} > {threshold}", "zh": "{feature} > {threshold}"},
    "rule.cond_le": {"en": "{feature} <= {threshold}", "zh": "{feature} <= {threshold}"},
    "rule.line": {"en": "IF {conditions} THEN {klass} ({n} cases, {correct} of {n} correct)",
                  "zh": "如果 {conditions} 则 {klass}（{n} 例，{n} 例中 {correct} 例正确）"},
    "rule.and": {"en": " AND ", "zh": " 且 "},
    "rule.always": {"en": "TRUE", "zh": "总是"},
    # association rules
    "assoc.line": {"en": "{antecedent} => {consequent} (support {support:.2f}, confidence {confidence:.2f}, "
                         "lift {lift:.2f})",
                   "zh": "{antecedent} => {consequent}（支持度 {support:.2f}，置信度 {confidence:.2f}，"
                         "提升度 {lift:.2f}）"},
    # clusters
    "cluster.line": {"en": "Cluster {cluster} ({n} patients): {features}",
                     "zh": "第 {cluster} 簇（{n} 名患者）：{features}"},
    "cluster.feature_high": {"en": "high {feature} (effect {effect:+.2f} SD)",
                             "zh": "{feature} 偏高（效应 {effect:+.2f} 标准差）"},
    "cluster.feature_low": {"en": "low {feature} (effect {effect:+.2f} SD)",
                            "zh": "{feature} 偏低（效应 {effect:+.2f} 标准差）"},
    # prediction verdict
    "verdict.adds": {"en": "Imaging+clinical AUC {auc:.2f} [{lo:.2f}, {hi:.2f}] vs clinical-only {clin:.2f} "
                           "[{clo:.2f}, {chi:.2f}]; permutation p = {p:.3f}: imaging adds information beyond "
                           "the clinical variables in this cohort.",
                     "zh": "影像+临床 AUC {auc:.2f} [{lo:.2f}, {hi:.2f}]，仅临床 {clin:.2f} [{clo:.2f}, {chi:.2f}]；"
                           "置换检验 p = {p:.3f}：在本队列中影像提供了临床变量之外的信息。"},
    "verdict.not_shown": {"en": "Imaging+clinical AUC {auc:.2f} [{lo:.2f}, {hi:.2f}] vs clinical-only {clin:.2f} "
                                "[{clo:.2f}, {chi:.2f}]; permutation p = {p:.3f}: this cohort does not show that "
                                "imaging adds information (confidence intervals overlap or the model is not "
                                "better than chance).",
                          "zh": "影像+临床 AUC {auc:.2f} [{lo:.2f}, {hi:.2f}]，仅临床 {clin:.2f} [{clo:.2f}, "
                                "{chi:.2f}]；置换检验 p = {p:.3f}：本队列未能证明影像提供了额外信息"
                                "（置信区间重叠或模型不优于随机）。"},
    "verdict.no_clinical": {"en": "Imaging AUC {auc:.2f} [{lo:.2f}, {hi:.2f}]; permutation p = {p:.3f}; no "
                                  "clinical baseline to compare with.",
                            "zh": "影像 AUC {auc:.2f} [{lo:.2f}, {hi:.2f}]；置换检验 p = {p:.3f}；"
                                  "没有可比较的临床基线。"},
    # survival
    "survival.summary": {"en": "Kaplan-Meier by out-of-fold risk group: log-rank p = {p:.3f}; Cox C-index "
                               "{c:.2f} (apparent), {c_oof:.2f} (out-of-fold).",
                         "zh": "按交叉验证外风险分组的 Kaplan-Meier 曲线：log-rank 检验 p = {p:.3f}；Cox 模型 "
                               "C 指数 {c:.2f}（表观），{c_oof:.2f}（交叉验证外）。"},
    # efficacy
    "efficacy.caveat": {"en": "Observational comparison: treatment was not randomised; the adjustment for {covs} "
                              "cannot remove unmeasured confounding (e.g. sicker patients receiving more "
                              "treatment). Not evidence of efficacy.",
                        "zh": "观察性比较：治疗并非随机分配；对 {covs} 的校正无法消除未测量的混杂"
                              "（例如病情更重的患者接受更多治疗）。不能作为疗效证据。"},
    "efficacy.line": {"en": "{arm} vs {reference}: outcome rate difference {difference:+.2f} "
                            "[{lo:+.2f}, {hi:+.2f}] adjusted for {covs}.",
                      "zh": "{arm} 对比 {reference}：结局率差 {difference:+.2f} [{lo:+.2f}, {hi:+.2f}]，"
                            "已校正 {covs}。"},
    # similar cases
    "similar.summary": {"en": "Leave-one-out: the nearest case has the same outcome for {agree} of {n} "
                              "patients ({rate:.0%}, 95% CI {lo:.0%}-{hi:.0%}).",
                        "zh": "留一法：{n} 名患者中有 {agree} 名与最相似病例结局相同（{rate:.0%}，"
                              "95% 置信区间 {lo:.0%}-{hi:.0%}）。"},
    "cohort.summary": {"en": "{n} patients, {n_img} imaging and {n_clin} clinical baseline features; "
                             "modalities: {mods}.",
                       "zh": "{n} 名患者，{n_img} 个影像特征和 {n_clin} 个临床基线特征；模态：{mods}。"},
    "label.summary": {"en": "Label {name}: {pos} positive, {neg} negative.",
                      "zh": "标签 {name}：阳性 {pos} 例，阴性 {neg} 例。"},
    "skipped": {"en": "Skipped: {reason}", "zh": "已跳过：{reason}"},
}


def render(key: str, lang: str = "en", /, **fields: Any) -> str:
    """Render template ``key`` in ``lang`` ("en" or "zh") with ``fields``.

    Raises
    ------
    KeyError
        Unknown key. ValueError: unknown language.
    """
    if lang not in LANGS:
        raise ValueError(f"lang must be one of {LANGS}, got {lang!r}")
    if key not in TEMPLATES:
        raise KeyError(f"no template {key!r}")
    return TEMPLATES[key][lang].format(**fields)


def both(key: str, /, **fields: Any) -> dict[str, str]:
    """``{"en": ..., "zh": ...}`` of one template."""
    return {lang: render(key, lang, **fields) for lang in LANGS}
