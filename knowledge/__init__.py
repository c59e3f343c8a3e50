"""Knowledge discovery: pure table science over a patient-level case base.

DataFrames in, JSON-able tables and fitted models out; no orchestration, no file IO.
Modules by capability: :mod:`~knowledge.roles` (declared column roles, leakage guard),
:mod:`~knowledge.casebase` (patient-level multimodal case base), :mod:`~knowledge.prediction`
(nested CV, bootstrap, calibration, baselines, permutation null), :mod:`~knowledge.rules`
(tree rules, association rules, cluster profiles), :mod:`~knowledge.survival`,
:mod:`~knowledge.efficacy`, :mod:`~knowledge.similar` (case-based reasoning),
:mod:`~knowledge.decision` (per-patient decision support), :mod:`~knowledge.language`
(en/zh templates), :mod:`~knowledge.learn` (classifiers), :mod:`~knowledge.mining`.
"""

from knowledge.roles import (
    CaseSchema,
    ColumnRole,
    LabelRule,
    LeakageError,
    Role,
    apply_schema,
    check_predictors,
    propose_schema,
)

__all__ = ["CaseSchema", "ColumnRole", "LabelRule", "LeakageError", "Role", "apply_schema", "check_predictors",
           "propose_schema", "discover", "place_cases", "patient_case_base", "case_table", "CaseBase"]


def __getattr__(name: str):
    # the heavy entry points import lazily (sklearn) and may land after the roles
    if name == "discover":
        from knowledge.analysis import discover

        return discover
    if name == "place_cases":
        from knowledge.patients import place_cases

        return place_cases
    if name in ("patient_case_base", "case_table", "CaseBase"):
        from knowledge import casebase

        return getattr(casebase, name)
    raise AttributeError(f"module 'knowledge' has no attribute {name!r}")
