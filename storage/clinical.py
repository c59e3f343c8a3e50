"""Clinical case tables (CSV/Parquet) validated against a declared schema and pseudonymised.

A :class:`ClinicalSchema` lists the columns with their type, whether a value is
required, allowed values or a numeric range, which column identifies the patient,
which hold the label/outcome/treatment, and which are PHI. :func:`load_clinical`

1. reads the table (CSV: every cell as text, line numbers tracked through quoted
   multi-line cells; Parquet: typed columns, rows numbered from 1),
2. validates every cell and collects *all* problems, each naming the line (CSV:
   1-based line number in the file, the header being line 1; Parquet: 1-based row),
   the column and what was expected - the value itself is echoed only for columns
   that are neither PHI nor the identifier,
3. maps the identifier to the same pseudonym as the images
   (``PseudonymKeys.patient_key``, the identifier stripped of surrounding blanks like a
   DICOM Patient ID), shifts date columns by the patient's DICOM date shift (so they
   line up with images de-identified with the Retain Longitudinal Modified Dates option;
   ``shift_dates=False`` keeps them), drops the identifier column and every ``phi``
   column, and returns a DataFrame indexed by ``patient_key``.

:func:`infer_schema` proposes a schema for users who give none: identifier column by
name (patient_id, PatientID, mrn, subject_id, ...), types from the values, PHI by
column name (name, birth date, address, phone, e-mail, ...).
"""

from __future__ import annotations

import csv
import datetime as _dt
import io
import math
import pathlib
import re
from typing import Any, Literal

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from storage.pseudonym import PseudonymKeys

ColumnType = Literal["str", "int", "float", "bool", "date", "category"]
_TRUE = {"true", "yes", "y", "1", "t"}
_FALSE = {"false", "no", "n", "0", "f"}
_INT_RE = re.compile(r"^[+-]?\d+$")
MAX_PROBLEMS = 50


class ColumnSpec(BaseModel):
    """One declared column."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    type: ColumnType = "str"
    required: bool = True  # the column must exist and every value must be non-empty
    allowed: list[str | int | float | bool] | None = None
    min: float | None = None
    max: float | None = None
    phi: bool = False  # dropped from the output
    description: str = ""

    @model_validator(mode="after")
    def _check(self) -> ColumnSpec:
        if self.type == "category" and not self.allowed:
            raise ValueError(f"column {self.name!r}: type 'category' needs 'allowed' values")
        if (self.min is not None or self.max is not None) and self.type not in ("int", "float"):
            raise ValueError(f"column {self.name!r}: min/max apply to int/float columns, not {self.type!r}")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"column {self.name!r}: min {self.min} > max {self.max}")
        return self


class ClinicalSchema(BaseModel):
    """Declared schema of a clinical case table."""

    model_config = ConfigDict(extra="forbid")

    columns: list[ColumnSpec]
    patient_id: str = Field(description="name of the column that identifies the patient (dropped)")
    label: str | None = None
    outcome: str | None = None
    treatment: str | None = None
    unique_patient: bool = True  # one row per patient
    extra_columns: Literal["error", "drop"] = "error"  # undeclared columns: refuse, or drop silently
    shift_dates: bool = True

    @model_validator(mode="after")
    def _check(self) -> ClinicalSchema:
        names = [c.name for c in self.columns]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"columns declared twice: {dup}")
        for role in ("patient_id", "label", "outcome", "treatment"):
            col = getattr(self, role)
            if col is not None and col not in names:
                raise ValueError(f"{role} names column {col!r}, which is not declared in columns")
        for role in ("label", "outcome", "treatment"):
            col = getattr(self, role)
            if col is not None and self.column(col).phi:
                raise ValueError(f"{role} column {col!r} is declared phi and would be dropped")
        return self

    def column(self, name: str) -> ColumnSpec:
        return next(c for c in self.columns if c.name == name)


class Problem(BaseModel):
    line: int | None  # CSV: 1-based line in the file; Parquet: 1-based row; None for table-level problems
    column: str | None
    message: str


class ClinicalTableError(ValueError):
    """The table does not match its schema; ``problems`` lists every finding (PHI-free)."""

    def __init__(self, source: str, problems: list[Problem], total: int):
        self.problems = problems
        self.total = total
        more = f"\n  ... and {total - len(problems)} more" if total > len(problems) else ""
        super().__init__(f"{source}: {total} problem(s):\n  " + "\n  ".join(p.message for p in problems) + more)


# -- reading ------------------------------------------------------------------------------------
def _read_csv(path: pathlib.Path, sep: str) -> tuple[list[str], list[list[str]], list[int]]:
    text = path.read_text(encoding="utf-8-sig")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=sep)
    try:
        header = next(reader)
    except StopIteration:
        raise ClinicalTableError(str(path.name), [Problem(line=None, column=None, message="the file is empty")], 1) \
            from None
    rows, lines = [], []
    start = reader.line_num + 1
    for rec in reader:
        if rec and any(cell.strip() for cell in rec):
            rows.append(rec)
            lines.append(start)
        start = reader.line_num + 1
    return [h.strip() for h in header], rows, lines


def _cell_text(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)) or v is pd.NA or v is pd.NaT:
        return ""
    if isinstance(v, float) and v.is_integer():
        return str(int(v)) if abs(v) < 1e15 else repr(v)
    if isinstance(v, pd.Timestamp | _dt.datetime):
        return v.date().isoformat() if (v.hour, v.minute, v.second) == (0, 0, 0) else v.isoformat()
    if isinstance(v, _dt.date):
        return v.isoformat()
    return str(v)


def _read_table(path: pathlib.Path, sep: str) -> tuple[list[str], list[list[str]], list[int], str]:
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
        header = [str(c) for c in df.columns]
        rows = [[_cell_text(v) for v in rec] for rec in df.itertuples(index=False, name=None)]
        return header, rows, list(range(1, len(rows) + 1)), "row"
    if suffix in (".csv", ".tsv", ".txt"):
        header, rows, lines = _read_csv(path, "\t" if suffix == ".tsv" and sep == "," else sep)
        return header, rows, lines, "line"
    raise ValueError(f"path must be a .csv, .tsv or .parquet file, got suffix {suffix!r}")


# -- validation ---------------------------------------------------------------------------------
def _convert(text: str, spec: ColumnSpec) -> tuple[Any, str | None]:
    """(value, None) or (None, what was expected)."""
    t = spec.type
    if t in ("str", "category"):
        value: Any = text
    elif t == "int":
        if not _INT_RE.match(text):
            return None, "an integer"
        value = int(text)
    elif t == "float":
        try:
            value = float(text)
        except ValueError:
            return None, "a number"
        if not math.isfinite(value):
            return None, "a finite number"
    elif t == "bool":
        low = text.lower()
        if low not in _TRUE | _FALSE:
            return None, "a boolean (true/false, yes/no, 1/0)"
        value = low in _TRUE
    elif t == "date":
        if not _is_date(text):
            return None, "a date YYYY-MM-DD"
        value = _dt.date.fromisoformat(text)
    else:  # pragma: no cover - Literal guards this
        raise ValueError(t)
    if spec.allowed is not None:
        allowed = spec.allowed
        if t == "bool":
            allowed = [a if isinstance(a, bool) else str(a).lower() in _TRUE for a in allowed]
        elif t in ("int", "float"):
            allowed = [float(a) for a in allowed]
        else:
            allowed = [str(a) for a in allowed]
        if (float(value) if t in ("int", "float") else value) not in allowed:
            return None, f"one of {spec.allowed}"
    if spec.min is not None and value < spec.min:
        return None, f"a value >= {spec.min:g}"
    if spec.max is not None and value > spec.max:
        return None, f"a value <= {spec.max:g}"
    return value, None


def load_clinical(path, *, schema: ClinicalSchema, keys: PseudonymKeys, sep: str = ",",
                  vault=None) -> pd.DataFrame:
    """Read, validate and pseudonymise a clinical table (see module docstring).

    Parameters
    ----------
    path : path-like
        ``.csv`` / ``.tsv`` (UTF-8) or ``.parquet``.
    schema : ClinicalSchema
    keys : PseudonymKeys
        The same secret as the images, so ``patient_key`` values match.
    sep : str
        CSV delimiter (``","``; ``.tsv`` files default to tab).
    vault : storage.vault.Vault, optional
        When given, ``patient_id -> patient_key`` is recorded (kind ``"patient"``).

    Returns
    -------
    pandas.DataFrame
        Indexed by ``patient_key``; declared non-PHI columns with dtypes ``Int64``,
        ``Float64``, ``boolean``, ``string``, ``category`` or ``datetime64``.

    Raises
    ------
    ClinicalTableError
        Listing every problem (line/row, column, expectation; PHI values never echoed).
    """
    if not isinstance(schema, ClinicalSchema):
        raise TypeError(f"schema must be a ClinicalSchema, got {type(schema).__name__}")
    path = pathlib.Path(path)
    header, rows, lines, unit = _read_table(path, sep)
    source = path.name
    problems: list[Problem] = []
    total = 0

    def add(line: int | None, column: str | None, message: str) -> None:
        nonlocal total
        total += 1
        if len(problems) < MAX_PROBLEMS:
            problems.append(Problem(line=line, column=column, message=message))

    dup_header = sorted({h for h in header if header.count(h) > 1})
    for h in dup_header:
        add(1 if unit == "line" else None, h, f"column '{h}' appears more than once in the header")
    declared = {c.name for c in schema.columns}
    for c in schema.columns:
        if c.name not in header and (c.required or c.name == schema.patient_id):
            add(None, c.name, f"missing required column '{c.name}' (columns found: {header})")
    extra = [h for h in header if h not in declared]
    if extra and schema.extra_columns == "error":
        for h in extra:
            add(None, h, f"unexpected column '{h}' is not declared in the schema (declare it - with "
                         "phi: true if it identifies a person - or set extra_columns: drop)")
    if total:
        raise ClinicalTableError(source, problems, total)

    index = {h: i for i, h in enumerate(header)}
    present = [c for c in schema.columns if c.name in index]
    out: dict[str, list] = {c.name: [] for c in present}
    pids: list[str] = []
    for rec, line in zip(rows, lines, strict=True):
        where = f"{unit} {line}"
        if unit == "line" and len(rec) != len(header):
            add(line, None, f"{where} has {len(rec)} fields, the header has {len(header)}")
            continue
        for c in present:
            text = rec[index[c.name]].strip()
            sensitive = c.phi or c.name == schema.patient_id
            if text == "":
                if c.required or c.name == schema.patient_id:
                    add(line, c.name, f"value in column '{c.name}' at {where} is empty")
                out[c.name].append(None)
                continue
            value, expected = _convert(text, c)
            if expected is not None:
                shown = "" if sensitive else f", got {text!r}"
                add(line, c.name, f"value in column '{c.name}' at {where}: expected {expected}{shown}")
            out[c.name].append(value)
        pids.append(rec[index[schema.patient_id]].strip())
    if schema.unique_patient and not total:
        seen: dict[str, int] = {}
        for pid, line in zip(pids, lines, strict=True):
            if pid in seen:
                add(line, schema.patient_id, f"patient identifier at {unit} {line} repeats the one at "
                                             f"{unit} {seen[pid]} (unique_patient is true)")
            else:
                seen[pid] = line
    if total:
        raise ClinicalTableError(source, problems, total)

    pkeys = [keys.patient_key(p) for p in pids]
    data: dict[str, Any] = {}
    for c in present:
        if c.phi or c.name == schema.patient_id:
            continue
        vals = out[c.name]
        if c.type == "int":
            data[c.name] = pd.array(vals, dtype="Int64")
        elif c.type == "float":
            data[c.name] = pd.array(vals, dtype="Float64")
        elif c.type == "bool":
            data[c.name] = pd.array(vals, dtype="boolean")
        elif c.type == "category":
            data[c.name] = pd.Categorical(vals, categories=[str(a) for a in c.allowed or []])
        elif c.type == "date":
            if schema.shift_dates:
                vals = [None if v is None else v + _dt.timedelta(days=keys.date_shift_days(p))
                        for v, p in zip(vals, pids, strict=True)]
            data[c.name] = pd.to_datetime(pd.Series(vals, dtype=object)).array
        else:
            data[c.name] = pd.array(vals, dtype="string")
    df = pd.DataFrame(data, index=pd.Index(pkeys, name="patient_key"))
    if vault is not None:
        vault.record_many("patient", sorted(set(zip(pids, pkeys, strict=True))))
    return df


# -- inference --------------------------------------------------------------------------------------
_ID_NAMES = ["patientid", "patient_id", "patient", "mrn", "subjectid", "subject", "participantid",
             "caseid", "case", "pid", "id"]
_PHI_NAME = re.compile(
    r"(^|_)(name|firstname|first_name|lastname|last_name|surname|givenname|fullname|initials|dob|birth|"
    r"birthdate|date_of_birth|address|street|city|zip|zipcode|postcode|postal|phone|telephone|mobile|fax|"
    r"email|e_mail|ssn|nhs|insurance|accession|mrn|physician|doctor|referring|contact)(_|$)")
_LABEL_NAMES = ("label", "outcome", "target", "class", "diagnosis", "response")
_TREATMENT_NAMES = ("treatment", "therapy", "arm")


def _norm(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", re.sub(r"([a-z])([A-Z])", r"\1_\2", str(name)).lower()).strip("_")


def _is_float(v: str) -> bool:
    try:
        return math.isfinite(float(v))
    except ValueError:
        return False


def _is_date(v: str) -> bool:
    if len(v) != 10:
        return False
    try:
        _dt.date.fromisoformat(v)
    except ValueError:
        return False
    return True


def _infer_type(values: list[str]) -> ColumnType:
    vals = [v for v in values if v != ""]
    if not vals:
        return "str"
    if all(_INT_RE.match(v) for v in vals):
        return "int"
    if all(v.lower() in _TRUE | _FALSE for v in vals):
        return "bool"
    if all(_is_float(v) for v in vals):
        return "float"
    if all(_is_date(v) for v in vals):
        return "date"
    return "str"


def infer_schema(df: pd.DataFrame, *, max_categories: int = 10) -> ClinicalSchema:
    """Propose a :class:`ClinicalSchema` for a table given without one.

    The identifier column is found by name (``patient_id``, ``PatientID``, ``mrn``,
    ``subject_id``, ``case_id``, ``id``, ...; case and separators ignored). Types are
    inferred from the values; text columns with at most ``max_categories`` distinct
    values become ``category``; columns whose names suggest identity (name, birth
    date, address, phone, e-mail, ...) are marked ``phi`` and will be dropped; a column
    named label/outcome/target/... is the label, treatment/therapy/arm the treatment.
    Review the result: name-based PHI detection cannot see PHI in free-text columns.
    """
    if not isinstance(df, pd.DataFrame):
        raise TypeError(f"df must be a pandas DataFrame, got {type(df).__name__}")
    names = [str(c) for c in df.columns]
    normed = {n: _norm(n) for n in names}
    id_col = None
    for cand in _ID_NAMES:
        hit = [n for n in names if normed[n].replace("_", "") == cand.replace("_", "")]
        if hit:
            id_col = hit[0]
            break
    if id_col is None:
        raise ValueError(f"no patient identifier column found by name; columns: {names} "
                         "(name it patient_id, or give a schema)")
    cols: list[ColumnSpec] = []
    label = treatment = None
    for n in names:
        texts = [_cell_text(v).strip() for v in df[n].tolist()]
        has_empty = any(t == "" for t in texts)
        if n == id_col:
            cols.append(ColumnSpec(name=n, type="str", required=True))
            continue
        t = _infer_type(texts)
        distinct = sorted({v for v in texts if v})
        allowed = None
        if t == "str" and 0 < len(distinct) <= max_categories and len(distinct) < max(2, len(texts)):
            t, allowed = "category", distinct
        phi = bool(_PHI_NAME.search(normed[n]))
        cols.append(ColumnSpec(name=n, type=t, required=not has_empty, allowed=allowed, phi=phi))
        if not phi and label is None and normed[n] in _LABEL_NAMES:
            label = n
        if not phi and treatment is None and normed[n] in _TREATMENT_NAMES:
            treatment = n
    return ClinicalSchema(columns=cols, patient_id=id_col, label=label, treatment=treatment,
                          unique_patient=not df[id_col].duplicated().any())


# -- case schemas (declared column roles, knowledge.roles.CaseSchema) ----------------------------------
class CaseSchemaError(ValueError):
    """A case-schema file is invalid, or does not match its table; the message names the column/field."""


def _schema_error_lines(exc, data: dict) -> list[str]:
    """pydantic errors -> lines naming the column (by its ``name``) and the field."""
    cols = data.get("columns") if isinstance(data, dict) else None
    lines = []
    for err in exc.errors():
        loc = list(err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        where = ".".join(map(str, loc))
        if len(loc) >= 2 and loc[0] == "columns" and isinstance(loc[1], int) and isinstance(cols, list) \
                and loc[1] < len(cols) and isinstance(cols[loc[1]], dict) and "name" in cols[loc[1]]:
            field = ".".join(map(str, loc[2:])) or "(entry)"
            where = f"column {cols[loc[1]]['name']!r} (columns[{loc[1]}]) field '{field}'"
        elif where:
            where = f"field '{where}'"
        got = err.get("input")
        shown = f" (got {got!r})" if isinstance(got, str | int | float | bool) else ""
        lines.append(f"{where}: {msg}{shown}" if where else msg)
    return lines


def case_schema_from_dict(data: Any, *, source: str = "schema"):
    """Validate a mapping as a :class:`knowledge.roles.CaseSchema`.

    Raises
    ------
    CaseSchemaError
        One line per problem, naming the column and the field.
    """
    from pydantic import ValidationError

    from knowledge.roles import CaseSchema

    if not isinstance(data, dict):
        raise CaseSchemaError(f"{source}: expected a mapping with 'columns', got {type(data).__name__}")
    try:
        return CaseSchema.model_validate(data)
    except ValidationError as exc:
        lines = _schema_error_lines(exc, data)
        raise CaseSchemaError(f"{source}: invalid case schema:\n  " + "\n  ".join(lines)) from None


def read_case_schema(path: str | pathlib.Path):
    """Load and validate a case-schema YAML (``columns: [{name, role, type, ...}]``).

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    CaseSchemaError
        Invalid YAML or an invalid column entry (the message names the column and field).
    """
    import yaml

    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"case schema does not exist: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise CaseSchemaError(f"{p.name}: not valid YAML: {exc}") from None
    return case_schema_from_dict(data, source=p.name)


def write_case_schema(schema, path: str | pathlib.Path, *, header: str = "") -> pathlib.Path:
    """Write a case schema as YAML, atomically (one column per list entry, roles in file order)."""
    import os
    import tempfile

    import yaml

    p = pathlib.Path(path)
    data = schema.to_dict()
    # one readable entry per column: fields at their empty default are left out (they round-trip)
    data["columns"] = [{k: v for k, v in c.items() if v not in (None, [], {})} for c in data["columns"]]
    body = yaml.safe_dump(data, sort_keys=False, allow_unicode=True, width=120)
    text = "".join(f"# {line}\n" for line in header.splitlines()) + body
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        os.replace(tmp, p)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise
    return p


def read_raw_table(path: str | pathlib.Path) -> pd.DataFrame:
    """A clinical sheet as given: CSV/TSV cells as text (nothing coerced), Parquet as stored."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"clinical table does not exist: {p}")
    suffix = p.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if suffix in (".csv", ".tsv", ".txt"):
        return pd.read_csv(p, dtype=str, keep_default_na=False, sep="\t" if suffix == ".tsv" else ",",
                           encoding="utf-8-sig")
    raise ValueError(f"clinical table must be .csv, .tsv or .parquet, got suffix {suffix!r}")


def check_schema_matches(schema, columns) -> None:
    """Every table column declared, every declared (or derive-source) column present.

    Raises
    ------
    CaseSchemaError
        Naming each undeclared or missing column.
    """
    have = [str(c) for c in columns]
    declared = {c.name for c in schema.columns if c.derive is None}
    sources = {c.derive.source for c in schema.columns if c.derive is not None}
    problems = [f"column {c!r} of the table is not declared in the schema (give it a role, e.g. ignore or phi)"
                for c in have if c not in declared and c not in sources]
    problems += [f"column {c!r} declared in the schema is not in the table (columns: {have})"
                 for c in sorted((declared | sources) - set(have))]
    if schema.identifier is None:
        problems.append("the schema declares no identifier column (role: identifier)")
    if problems:
        raise CaseSchemaError("case schema does not match the table:\n  " + "\n  ".join(problems))


def load_clinical_roles(path, *, schema, keys: PseudonymKeys, vault=None) -> pd.DataFrame:
    """Read a clinical sheet under a case schema: pseudonymise the identifier, drop PHI and ignored columns.

    Parameters
    ----------
    path : path-like
        ``.csv``/``.tsv`` (cells read as text) or ``.parquet``.
    schema : knowledge.roles.CaseSchema
        Declared roles; checked against the header first (:func:`check_schema_matches`).
    keys : PseudonymKeys
        The same secret as the images, so ``patient_key`` values match the image pseudonyms.
    vault : storage.vault.Vault, optional
        Records ``identifier -> patient_key``.

    Returns
    -------
    pandas.DataFrame
        ``patient_key`` (first column) plus every column whose role is neither identifier,
        ``phi`` nor ``ignore``, values as in the sheet (text), rows in file order.

    Raises
    ------
    CaseSchemaError
        Schema/table mismatch, an empty or repeated identifier (the identifier value is never echoed).
    """
    raw = read_raw_table(path)
    check_schema_matches(schema, raw.columns)
    ident = schema.identifier
    ids = raw[ident].map(_cell_text).str.strip()
    problems = [f"row {i + 1}: the identifier column {ident!r} is empty" for i, v in enumerate(ids) if not v]
    dup = ids[ids.duplicated() & (ids != "")]
    problems += [f"row {i + 1}: the identifier repeats an earlier row" for i in dup.index]
    if problems:
        raise CaseSchemaError(f"{pathlib.Path(path).name}: " + "; ".join(problems[:MAX_PROBLEMS]))
    drop = {c.name for c in schema.columns if c.role in ("phi", "ignore", "identifier") and c.derive is None}
    keep = [c for c in map(str, raw.columns) if c not in drop]
    pkeys = [keys.patient_key(p) for p in ids]
    out = raw[keep].copy()
    out.insert(0, "patient_key", pkeys)
    if vault is not None:
        vault.record_many("patient", sorted(set(zip(ids, pkeys, strict=True))))
    return out.reset_index(drop=True)
