"""Declared column roles of a clinical case table, and the leakage guard.

A :class:`CaseSchema` gives every column of a clinical sheet a role: ``identifier``,
baseline ``predictor`` (known at imaging time), ``label`` (possibly derived by a
:class:`LabelRule`), ``event`` + ``time`` (time-to-event), ``treatment``,
``post_baseline`` (known only after baseline: follow-up, outcome dates...), ``phi``
(dropped) or ``ignore``. :func:`propose_schema` infers roles for the user to confirm;
:func:`check_predictors` refuses any model input that is not a baseline predictor.
"""

from __future__ import annotations

import re
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

Role = Literal["identifier", "predictor", "label", "event", "time", "treatment", "post_baseline", "phi", "ignore"]
ColumnType = Literal["numeric", "categorical", "binary", "text", "date"]

#: roles whose columns may never be a model input
NON_PREDICTOR_ROLES: tuple[str, ...] = ("identifier", "label", "event", "time", "treatment", "post_baseline",
                                        "phi", "ignore")


class LeakageError(ValueError):
    """A column that is not a baseline predictor was given as a model input."""


class LabelRule(BaseModel):
    """Derive a 0/1 label (or event) from a source column.

    Parameters
    ----------
    source : str
        Column the rule reads.
    contains : list of str
        Case-insensitive substrings; a value containing any of them -> 1.
    equals : list of str
        Exact (case-insensitive, stripped) values -> 1. Exactly one of ``contains``/``equals`` is given.
    missing : list of str
        Extra tokens of the source treated as missing (NaN) rather than 0.
    """

    model_config = ConfigDict(extra="forbid")
    source: str
    contains: list[str] = Field(default_factory=list)
    equals: list[str] = Field(default_factory=list)
    missing: list[str] = Field(default_factory=list)

    @model_validator(mode="after")
    def _one_matcher(self) -> LabelRule:
        if bool(self.contains) == bool(self.equals):
            raise ValueError(f"label rule on {self.source!r}: give exactly one of 'contains' or 'equals'")
        return self

    def apply(self, values: pd.Series, *, missing_tokens: list[str]) -> pd.Series:
        """Return a float Series of 0/1 (NaN where the source is missing), same index as ``values``."""
        text = values.astype("string").str.strip()
        lowered = text.str.lower()
        miss = {t.strip().lower() for t in [*missing_tokens, *self.missing] if t.strip()}
        is_missing = values.isna() | lowered.isin(miss) | (text.fillna("") == "" if "" in missing_tokens else False)
        if self.contains:
            hit = pd.Series(False, index=values.index)
            for token in self.contains:
                hit |= lowered.str.contains(token.lower(), regex=False).fillna(False).astype(bool)
        else:
            hit = lowered.isin({v.strip().lower() for v in self.equals}).fillna(False).astype(bool)
        out = hit.astype(float)
        # a declared positive token wins over "missing" only when matched; unmatched missing stays NaN
        out[is_missing & ~hit] = np.nan
        return out


class ColumnRole(BaseModel):
    """Role of one column (or of one derived column when ``derive`` is set)."""

    model_config = ConfigDict(extra="forbid")
    name: str
    role: Role
    type: ColumnType = "numeric"
    derive: LabelRule | None = None
    event_values: list[str] = Field(default_factory=list)
    time_of: str | None = None

    @model_validator(mode="after")
    def _consistent(self) -> ColumnRole:
        if self.role == "event" and not self.event_values and self.derive is None and self.type != "binary":
            raise ValueError(f"event column {self.name!r}: give 'event_values' (e.g. ['D']) or a 'derive' rule")
        if self.time_of is not None and self.role != "time":
            raise ValueError(f"column {self.name!r}: 'time_of' only applies to role 'time', not {self.role!r}")
        return self


class CaseSchema(BaseModel):
    """Roles of every column of a clinical case table (round-trips through dict/YAML)."""

    model_config = ConfigDict(extra="forbid")
    columns: list[ColumnRole]
    missing_tokens: list[str] = Field(default_factory=lambda: ["--", "N/A", "NA", ""])

    @model_validator(mode="after")
    def _unique(self) -> CaseSchema:
        names = [c.name for c in self.columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"schema declares column(s) {dup} more than once")
        if len([c for c in self.columns if c.role == "identifier"]) > 1:
            raise ValueError("schema declares more than one identifier column")
        return self

    def _of(self, role: str) -> list[ColumnRole]:
        return [c for c in self.columns if c.role == role]

    def role_of(self, name: str) -> ColumnRole | None:
        """The declared role of column ``name`` (None when undeclared)."""
        return next((c for c in self.columns if c.name == name), None)

    @property
    def identifier(self) -> str | None:
        ids = self._of("identifier")
        return ids[0].name if ids else None

    @property
    def predictors(self) -> list[str]:
        return [c.name for c in self._of("predictor")]

    @property
    def labels(self) -> list[str]:
        return [c.name for c in self._of("label")]

    @property
    def event(self) -> str | None:
        ev = self._of("event")
        return ev[0].name if ev else None

    @property
    def time(self) -> str | None:
        ev = self.event
        times = self._of("time")
        linked = [t for t in times if t.time_of == ev] if ev else []
        pick = linked or times
        return pick[0].name if pick else None

    @property
    def treatment(self) -> str | None:
        tr = self._of("treatment")
        return tr[0].name if tr else None

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (for YAML); ``CaseSchema.model_validate(d)`` restores it."""
        return self.model_dump(mode="json", exclude_defaults=False)

    def describe(self, lang: str = "en") -> list[str]:
        """One human line per column, for the user to confirm the proposed roles."""
        from knowledge.language import render

        lines = []
        for c in self.columns:
            extra = ""
            if c.derive is not None:
                how = c.derive.contains or c.derive.equals
                extra = render("schema.derived", lang, source=c.derive.source, tokens=", ".join(how))
            elif c.event_values:
                extra = render("schema.event", lang, tokens=", ".join(c.event_values))
            elif c.time_of:
                extra = render("schema.time_of", lang, event=c.time_of)
            lines.append(render("schema.line", lang, name=c.name, role=render(f"role.{c.role}", lang),
                                type=c.type, extra=extra))
        return lines


_ID = re.compile(r"(^|\b|_)(id|patient|case|subject|mrn|key)(\b|_|$)", re.I)
_PHI = re.compile(r"name|birth|dob|address|phone|e-?mail|ssn|social security|postcode|zip", re.I)
_POST = re.compile(r"follow|outcome|status|surviv|death|dead|died|alive|vital|recurr|relapse|progress|last|"
                   r"\bmets?\b|metasta|response|event|censor|(^|[^a-z])(os|pfs|dfs|efs|rfs|ttp)([^a-z]|$)", re.I)
_EVENT_TOKENS = {"D", "DEAD", "DECEASED", "DIED", "1", "YES", "TRUE"}
_TIME = re.compile(r"time|days|months|years|duration|interval", re.I)
_TREAT = re.compile(r"treat|therap|regimen|arm\b", re.I)


def _is_missing_token(values: pd.Series, tokens: list[str]) -> pd.Series:
    text = values.astype("string").str.strip()
    return values.isna() | text.isin([t for t in tokens]).fillna(False).astype(bool)


def _numeric(values: pd.Series, tokens: list[str]) -> pd.Series:
    return pd.to_numeric(values.mask(_is_missing_token(values, tokens)), errors="coerce")


def _column_type(values: pd.Series, tokens: list[str]) -> ColumnType:
    present = values[~_is_missing_token(values, tokens)]
    if present.empty:
        return "categorical"
    num = pd.to_numeric(present, errors="coerce")
    if num.notna().all():
        return "binary" if num.nunique() <= 2 else "numeric"
    if pd.to_datetime(present.astype(str), errors="coerce", format="mixed").notna().all() and \
            present.astype(str).str.contains(r"\d{4}|\d+[/-]\d+[/-]\d+").all():
        return "date"
    n_unique = present.astype(str).nunique()
    if n_unique == 2:
        return "binary"
    if n_unique > max(12, 0.8 * len(present)) and present.astype(str).str.len().mean() > 25:
        return "text"
    return "categorical"


def propose_schema(table: pd.DataFrame, *, missing_tokens: list[str] | None = None) -> CaseSchema:
    """Propose a role for every column of a clinical table (heuristics; the user confirms).

    Identifier-like names -> ``identifier``; names of people/birth dates/addresses and
    dates -> ``phi``; anything about follow-up, outcome, status, survival, recurrence,
    metastasis -> ``post_baseline`` (a ``Status``/death column becomes the ``event``
    with value ``D``/dead and the follow-up time its ``time``); treatment -> ``treatment``;
    the rest -> baseline ``predictor``. A time-after-baseline column is never proposed as
    a predictor. No label is proposed: the question is the user's to declare.
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    tokens = list(missing_tokens) if missing_tokens is not None else ["--", "N/A", "NA", ""]
    cols: list[ColumnRole] = []
    have_id = False
    event_name = None
    for name in table.columns:
        name = str(name)
        values = table[name]
        ctype = _column_type(values, tokens)
        if not have_id and _ID.search(name) and values.astype(str).nunique() == len(values):
            cols.append(ColumnRole(name=name, role="identifier", type="categorical"))
            have_id = True
        elif _PHI.search(name) or ctype in ("date", "text"):
            cols.append(ColumnRole(name=name, role="phi", type=ctype))
        elif _POST.search(name):
            present = values[~_is_missing_token(values, tokens)].astype(str).str.strip()
            upper = set(present.str.upper())
            if event_name is None and re.search(r"status|death|dead|vital|event|censor", name, re.I) and \
                    upper & _EVENT_TOKENS:
                ev = sorted(v for v in set(present) if v.upper() in _EVENT_TOKENS)
                cols.append(ColumnRole(name=name, role="event", type="categorical", event_values=ev))
                event_name = name
            else:
                cols.append(ColumnRole(name=name, role="post_baseline", type=ctype))
        elif _TREAT.search(name):
            cols.append(ColumnRole(name=name, role="treatment", type="categorical"))
        else:
            cols.append(ColumnRole(name=name, role="predictor", type=ctype))
    if event_name is not None:
        # the follow-up time becomes the event's time (the last-follow-up / survival time column)
        for i, c in enumerate(cols):
            if c.role == "post_baseline" and (_TIME.search(c.name) or re.search(r"(^|[^a-z])os([^a-z]|$)", c.name, re.I)) \
                    and re.search(r"follow|last|surviv|death|(^|[^a-z])os([^a-z]|$)", c.name, re.I):
                cols[i] = ColumnRole(name=c.name, role="time", type="numeric", time_of=event_name)
                break
    return CaseSchema(columns=cols, missing_tokens=tokens)


def check_predictors(schema: CaseSchema, columns: list[str] | tuple[str, ...] | pd.Index) -> None:
    """Raise :class:`LeakageError` when any model input is not a baseline predictor.

    Parameters
    ----------
    schema : CaseSchema
    columns : sequence of str
        Model input columns. Imaging columns (``"<MOD>:<ROI>:<feature>"``) are baseline;
        ``clin:<column>`` / ``clin:<column>=<level>`` and bare names are checked against the schema.

    Raises
    ------
    LeakageError
        Naming every offending column and its role.
    """
    bad: list[str] = []
    for col in columns:
        col = str(col)
        base = col[5:].split("=", 1)[0] if col.startswith("clin:") else col
        declared = schema.role_of(base)
        derived_from = [c for c in schema.columns if c.derive is not None and c.derive.source == base]
        source_of = f" and is the source of {derived_from[0].role} {derived_from[0].name!r}" if derived_from else ""
        if declared is not None and declared.role != "predictor":
            bad.append(f"{col!r} is declared {declared.role!r}{source_of}")
        elif derived_from:
            bad.append(f"{col!r} is the source of {derived_from[0].role} {derived_from[0].name!r}")
        elif declared is None and col.startswith("clin:"):
            bad.append(f"{col!r} is not declared a baseline predictor in the schema")
    if bad:
        raise LeakageError("columns that are not baseline predictors cannot be model inputs "
                           "(known only after baseline, or outcome-derived): " + "; ".join(bad))


def apply_schema(table: pd.DataFrame, schema: CaseSchema, *, rename_identifier: bool = False) -> pd.DataFrame:
    """Typed copy of ``table``: derived labels/events 0/1, times float, PHI/ignore dropped.

    Parameters
    ----------
    table : DataFrame
        Clinical sheet, one row per patient; not modified.
    schema : CaseSchema
    rename_identifier : bool
        Rename the identifier column to ``patient_key``.

    Returns
    -------
    DataFrame
        Same rows; columns: identifier, predictors (numeric -> float; categorical -> string
        with missing tokens as NA), labels (0/1 float), event (0/1 float), time (float),
        treatment and post_baseline (string, for reporting only).
    """
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table must be a pandas DataFrame, got {type(table).__name__}")
    tokens = schema.missing_tokens
    out = pd.DataFrame(index=table.index)
    for c in schema.columns:
        if c.role in ("phi", "ignore"):
            continue
        source = c.derive.source if c.derive is not None else c.name
        if source not in table.columns:
            raise KeyError(f"schema column {source!r} (role {c.role!r}) is not in the table; "
                           f"columns are {list(map(str, table.columns))}")
        values = table[source]
        if c.derive is not None:
            out[c.name] = c.derive.apply(values, missing_tokens=tokens)
        elif c.role == "event":
            if c.event_values:
                text = values.astype("string").str.strip().str.lower()
                ev = text.isin([v.strip().lower() for v in c.event_values]).fillna(False).astype(float)
                ev[_is_missing_token(values, tokens)] = np.nan
                out[c.name] = ev
            else:
                out[c.name] = _numeric(values, tokens)
        elif c.role == "time" or (c.type == "numeric" and c.role in ("predictor", "label", "post_baseline")):
            out[c.name] = _numeric(values, tokens).astype(float)
        elif c.role == "identifier":
            out[c.name] = values.astype(str)
        else:
            out[c.name] = values.astype("string").str.strip().mask(_is_missing_token(values, tokens))
    ident = schema.identifier
    if rename_identifier and ident is not None:
        out = out.rename(columns={ident: "patient_key"})
    return out
