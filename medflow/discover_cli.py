"""Knowledge discovery around :mod:`knowledge`: case-table IO, the analysis composition, its output files.

Used by the discovery stage task (:mod:`tasks.discovery`) and by ``medflow discover``:

* :func:`analyse` - patient-level case base -> :func:`knowledge.discover` (when the table is
  labelled) or :func:`knowledge.place_cases` against a stored case base (when it is not);
* :func:`write_outputs` - ``discovery.json``, ``casebase.parquet``, ``metrics.json``,
  ``rules.txt`` (the configured language) plus ``rules.en.txt``/``rules.zh.txt``;
* :func:`run_discover` - the ``medflow discover TABLE --schema S --out DIR`` command.
"""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import tempfile
from typing import Any

import pandas as pd

from medflow.config import DiscoveryConfig

#: columns of a long feature table (one row per feature value), as the analysis stage writes it
LONG_COLUMNS = {"patient_key", "volume_key", "roi_name", "family", "feature", "value"}


def clinical_for_schema(clinical: pd.DataFrame, schema) -> pd.DataFrame:
    """The ingested clinical table (``patient_key`` in place of the identifier) under the schema's names.

    The ingest replaced the schema's identifier column by the pseudonymous ``patient_key``;
    it takes the identifier's name again so that the schema applies unchanged.
    """
    ident = schema.identifier
    if ident is None:
        raise ValueError("the case schema declares no identifier column (role: identifier)")
    if ident in clinical.columns:
        return clinical
    if "patient_key" not in clinical.columns:
        raise ValueError(f"clinical table has neither the schema's identifier {ident!r} nor 'patient_key'")
    return clinical.rename(columns={"patient_key": ident})


def _label(params: DiscoveryConfig, schema) -> str | None:
    if params.label is not None:
        if schema is None or params.label not in schema.labels:
            raise ValueError(f"discovery.label {params.label!r} is not a label column of the schema "
                             f"(labels: {schema.labels if schema is not None else []})")
        return params.label
    return schema.labels[0] if schema is not None and schema.labels else None


def _discover_kwargs(params: DiscoveryConfig) -> dict[str, Any]:
    return {"classifier": params.classifier, "outer_folds": params.outer_folds, "inner_folds": params.inner_folds,
            "n_bootstrap": params.n_bootstrap, "n_permutations": params.n_permutations,
            "k_similar": params.k_similar, "max_tree_depth": params.max_tree_depth,
            "random_state": params.random_state, "lang": params.lang}


def analyse(features_long: pd.DataFrame | None, clinical: pd.DataFrame | None, schema, params: DiscoveryConfig, *,
            stored: pd.DataFrame | None = None, stored_schema=None,
            case_table: pd.DataFrame | None = None,
            models: dict[str, Any] | None = None) -> tuple[dict[str, Any], pd.DataFrame]:
    """The whole knowledge-discovery analysis of one workspace (or one ready case table).

    Parameters
    ----------
    features_long : DataFrame or None
        Long feature table (one row per value: ``patient_key, volume_key, roi_name, modality,
        family, feature, aggregation, value``...), or None when ``case_table`` is given.
    clinical : DataFrame or None
        Ingested clinical table (``patient_key`` + the sheet's non-PHI columns, as text).
    schema : knowledge.roles.CaseSchema or None
        Roles of the clinical columns (None: proposed from the table, no label).
    params : DiscoveryConfig
    stored, stored_schema : DataFrame, CaseSchema, optional
        A stored patient-level case base and its schema: when the workspace is not labelled,
        its patients are placed against it (models fitted on ``stored`` only) and the cohort
        figures are those of the stored case base.
    case_table : DataFrame, optional
        A ready patient-level case table (``patient_key`` + ``MOD:ROI:feature`` + clinical
        columns) instead of ``features_long``.
    models : dict, optional
        Filled with ``name -> (fitted model, feature columns)`` of the prediction models
        fitted on the whole cohort, when :func:`knowledge.discover` offers them.

    Returns
    -------
    (dict, DataFrame)
        JSON-able results (the :func:`knowledge.discover` keys plus ``mode`` ``"cohort"`` or
        ``"placed"`` and ``lang``) and the workspace's patient-level case base.
    """
    import knowledge

    if schema is None and clinical is not None:
        schema = knowledge.propose_schema(clinical)  # patient_key is the identifier; no label is proposed
    if case_table is not None:
        table = case_table
    else:
        raw = clinical_for_schema(clinical, schema) if clinical is not None else None
        table = knowledge.patient_case_base(features_long, raw, schema=schema if raw is not None else None).table
    label = _label(params, schema)
    labelled = label is not None and label in table.columns and table[label].dropna().nunique() == 2
    kwargs = _discover_kwargs(params)
    if labelled or stored is None:
        results = knowledge.discover(table, schema if schema is not None else knowledge.CaseSchema(columns=[]),
                                     label=label if labelled else None, **kwargs)
        results.update(mode="cohort", lang=params.lang)
        if models is not None and labelled and (results.get("prediction") or {}).get("status") == "ok":
            models.update(fit_models(table, schema, label, params))
        return results, table
    s_label = _label(params, stored_schema)
    results = knowledge.discover(stored, stored_schema, label=s_label, **kwargs)
    # only what the stored case base knows is compared (a workspace's own clinical columns are not its predictors)
    shared = ["patient_key", *[c for c in table.columns if c != "patient_key" and c in stored.columns]]
    placed = knowledge.place_cases(table[shared], stored, stored_schema, k_similar=params.k_similar, label=s_label,
                                   random_state=params.random_state, classifier=params.classifier,
                                   outer_folds=params.outer_folds, inner_folds=params.inner_folds,
                                   max_tree_depth=params.max_tree_depth)
    results.update(mode="placed", lang=params.lang, reference_patients=results.get("patients", {}),
                   patients=placed["patients"], placement={k: v for k, v in placed.items() if k != "patients"})
    return results, table


def fit_models(table: pd.DataFrame, schema, label: str, params: DiscoveryConfig) -> dict[str, Any]:
    """The three prediction models (imaging+clinical, imaging, clinical) refitted on every labelled patient.

    Same procedure as the cross-validated ones (:func:`knowledge.prediction.fit_final`: label-free
    prefilter, then selection and scaling inside the pipeline); returns
    ``name -> (fitted model, input columns)`` (the model takes those columns, in that order).
    """
    import numpy as np

    from knowledge import prediction
    from knowledge.analysis import model_inputs

    imaging, clinical = model_inputs(table, schema)
    yv = table[label].to_numpy(dtype=float)
    known = ~np.isnan(yv)
    sub, y = table[known].reset_index(drop=True), yv[known].astype(int)
    img = prediction.prefilter(sub, imaging)
    out: dict[str, Any] = {}
    for name, cols in (("imaging+clinical", img + clinical), ("imaging", img), ("clinical", clinical)):
        if cols:
            model, _selected = prediction.fit_final(sub[cols], y, sub["patient_key"].astype(str).to_numpy(),
                                                    kind=params.classifier, inner_folds=params.inner_folds,
                                                    random_state=params.random_state)
            out[name] = (model, cols)
    return out


def metrics_summary(results: dict[str, Any]) -> dict[str, Any]:
    """The headline figures of a discovery result (``metrics.json``)."""
    pred = results.get("prediction") or {}
    models = {name: {k: m.get(k) for k in ("auc", "auc_ci", "accuracy", "brier")}
              for name, m in (pred.get("models") or {}).items()}
    surv = results.get("survival") or {}
    sim = results.get("similar") or {}
    tree = results.get("tree") or {}
    return {
        "mode": results.get("mode"),
        "cohort": {k: (results.get("cohort") or {}).get(k) for k in ("n_patients", "n_imaging_features",
                                                                      "n_clinical_features", "modalities")},
        "label": results.get("label"),
        "prediction": {"status": pred.get("status"), "reason": pred.get("reason"), "models": models,
                       "null": pred.get("null")},
        "survival": {"status": surv.get("status"), "logrank": surv.get("logrank"),
                     "c_index": (surv.get("cox") or {}).get("c_index"),
                     "c_index_oof": (surv.get("cox") or {}).get("c_index_oof")},
        "similar": {"status": sim.get("status"), "loo_agreement": sim.get("loo_agreement"),
                    "loo_ci": sim.get("loo_ci")},
        "tree": {"status": tree.get("status"), "fidelity": tree.get("fidelity")},
    }


def rules_text(results: dict[str, Any], lang: str) -> str:
    """Decision-tree rules, association rules and cluster profiles as plain text in ``lang``."""
    titles = {"en": ("Decision-tree rules", "Association rules", "Clusters"),
              "zh": ("决策树规则", "关联规则", "聚类")}[lang]
    lines: list[str] = []
    for title, key in zip(titles, ("tree", "associations", "clusters"), strict=True):
        block = results.get(key) or {}
        lines.append(f"# {title}")
        if block.get("status") not in (None, "ok"):
            lines.append(f"({block.get('status')}: {block.get('reason', '')})")
        lines += list((block.get("text") or {}).get(lang) or [])
        lines.append("")
    return "\n".join(lines)


def write_outputs(folder: pathlib.Path, results: dict[str, Any], table: pd.DataFrame, *,
                  provenance: dict[str, Any], lang: str) -> None:
    """Write the discovery files into ``folder`` (an atomic staging folder of the caller)."""
    from tasks.common import write_json

    write_json(folder / "discovery.json", {"provenance": provenance, **results})
    write_json(folder / "metrics.json", {"provenance": provenance, **metrics_summary(results)})
    table.to_parquet(folder / "casebase.parquet", index=False)
    (folder / "rules.txt").write_text(rules_text(results, lang), encoding="utf-8")
    for lg in ("en", "zh"):
        (folder / f"rules.{lg}.txt").write_text(rules_text(results, lg), encoding="utf-8")


def read_case_input(path: str | pathlib.Path) -> pd.DataFrame:
    """A ready case table (Parquet or CSV): long feature rows joined with clinical columns, or one row per patient."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"case table does not exist: {p}")
    if p.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(p)
    if p.suffix.lower() == ".csv":
        return pd.read_csv(p, dtype=None, keep_default_na=False, na_values=[""])
    raise ValueError(f"case table must be .parquet or .csv, got {p.suffix!r}")


def run_discover(table_path: str | pathlib.Path, *, schema_path: str | pathlib.Path, out: str | pathlib.Path,
                 lang: str = "en", config: DiscoveryConfig | None = None) -> dict[str, Any]:
    """``medflow discover``: analyse a ready case table, write metrics.json, rules.txt and report.html.

    A *long* table (it has ``feature``/``value``/``volume_key`` columns) is split into the
    feature rows and one clinical row per patient (the schema's columns, keyed by the
    identifier or ``patient_key``); a *patient-level* table with the sheet's clinical columns
    gets the schema's design (``clin:`` columns, derived label); a case base as medflow writes
    it (``casebase.parquet``: ``clin:`` columns and outcomes by name) is used as it is.

    Returns the metrics summary.
    """
    from medflow.report_knowledge import render_knowledge_report
    from storage.clinical import read_case_schema

    params = (config or DiscoveryConfig()).model_copy(update={"lang": lang})
    schema = read_case_schema(schema_path)
    raw = read_case_input(table_path)
    ident = schema.identifier
    key = "patient_key" if "patient_key" in raw.columns else ident
    if key is None or key not in raw.columns:
        raise ValueError(f"case table has no 'patient_key' nor the schema identifier column {ident!r}")
    raw = raw.rename(columns={key: "patient_key"})
    clinical_cols = [c.derive.source if c.derive is not None else c.name for c in schema.columns
                     if c.role not in ("identifier", "phi", "ignore")]
    clinical_cols = list(dict.fromkeys(c for c in clinical_cols if c in raw.columns))
    clinical = raw[["patient_key", *clinical_cols]].drop_duplicates("patient_key").reset_index(drop=True)
    clinical = clinical.astype({c: "string" for c in clinical_cols})
    if LONG_COLUMNS <= set(raw.columns):
        long = raw[[c for c in raw.columns if c not in clinical_cols]]
        results, table = analyse(long, clinical, schema, params)
    elif any(c in raw.columns for c in schema.predictors) or any(
            c.derive is not None and c.name not in raw.columns for c in schema.columns):
        # one row per patient, clinical columns as in the sheet: the schema's design is applied here
        from knowledge.casebase import clinical_design

        design, _ = clinical_design(clinical_for_schema(clinical, schema), schema)
        table = raw.drop(columns=clinical_cols).merge(design, on="patient_key", how="left")
        results, table = analyse(None, None, schema, params, case_table=table)
    else:  # already a case base (clin: columns and outcomes by name, e.g. a casebase.parquet)
        results, table = analyse(None, None, schema, params, case_table=raw)
    out = pathlib.Path(out)
    provenance = {"table": str(pathlib.Path(table_path).name), "schema": schema.to_dict(),
                  "params": params.model_dump(mode="json")}
    html = render_knowledge_report(results, lang=lang, title=pathlib.Path(table_path).name)
    out.mkdir(parents=True, exist_ok=True)
    stage = pathlib.Path(tempfile.mkdtemp(dir=out, prefix=".staging-"))
    try:  # every file complete before it replaces its previous version; other files in OUT are left alone
        write_outputs(stage, results, table, provenance=provenance, lang=lang)
        (stage / "report.html").write_text(html, encoding="utf-8")
        for f in sorted(stage.iterdir()):
            os.replace(f, out / f.name)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return metrics_summary(results)


def dump(value: Any) -> str:
    return json.dumps(value, indent=1, ensure_ascii=False, default=str)


# -- medflow schema propose ------------------------------------------------------------------------------
def propose_schema_file(table_path: str | pathlib.Path, out: str | pathlib.Path, *, lang: str = "en"
                        ) -> tuple[Any, list[str]]:
    """Propose roles for every column of a clinical sheet, write them as YAML; returns (schema, lines to print)."""
    from knowledge import propose_schema
    from storage.clinical import read_raw_table, write_case_schema

    raw = read_raw_table(table_path)
    schema = propose_schema(raw)
    header = (f"Case schema proposed by medflow for {pathlib.Path(table_path).name}: CHECK EVERY ROLE before use.\n"
              "Roles: identifier, predictor (known at imaging time), label (may be derived: derive: {source, "
              "contains}),\nevent (event_values) + time (time_of), treatment, post_baseline (never a model input), "
              "phi (dropped), ignore.\nNo label is proposed: declare the question you want answered.")
    write_case_schema(schema, out, header=header)
    return schema, schema.describe(lang=lang)


# -- medflow casebase build -----------------------------------------------------------------------------
#: the patients of the bundled demo sample (sample/ibsi_sts): never in the shipped case base
DEMO_PATIENTS = ("STS_008", "STS_025")


def neutral_case_base(table: pd.DataFrame, clinical_ids: list[str], *, keys, exclude: tuple[str, ...] = DEMO_PATIENTS,
                      prefix: str = "STS-C") -> pd.DataFrame:
    """Replace the workspace pseudonyms of a case base by neutral ids, dropping excluded patients.

    Parameters
    ----------
    table : DataFrame
        Patient-level case base of a workspace (``patient_key`` = pseudonym of the secret ``keys``).
    clinical_ids : list of str
        The sheet's patient identifiers in sheet order; the kept ones are numbered
        ``<prefix>01``, ``<prefix>02``... in that order (nothing derived from the secret).
    keys : storage.pseudonym.PseudonymKeys
        The secret the workspace was built with (to recognise the patients).
    exclude : tuple of str
        Identifiers left out (the demo sample's patients).
    """
    by_key = {keys.patient_key(str(i).strip()): str(i).strip() for i in clinical_ids}
    unknown = sorted(set(table["patient_key"]) - set(by_key))
    if unknown:
        raise ValueError(f"{len(unknown)} case-base patient(s) are not in the clinical sheet")
    kept = [i for i in (str(x).strip() for x in clinical_ids) if i not in exclude
            and keys.patient_key(i) in set(table["patient_key"])]
    neutral = {keys.patient_key(i): f"{prefix}{n:02d}" for n, i in enumerate(kept, start=1)}
    out = table[table["patient_key"].isin(neutral)].copy()
    out["patient_key"] = out["patient_key"].map(neutral)
    return out.sort_values("patient_key").reset_index(drop=True)


def build_casebase(cohort: str | pathlib.Path, *, out: str | pathlib.Path, workspace: str | pathlib.Path,
                   config: str | pathlib.Path, exclude: tuple[str, ...] = DEMO_PATIENTS) -> dict[str, Any]:
    """``medflow casebase build``: run the pipeline on a cohort folder and ship its case base.

    ``cohort`` holds ``dicom/`` and ``clinical.csv`` (as ``../shared/data/sts_cohort``);
    writes ``casebase.parquet`` (neutral ids, the excluded patients left out) and
    ``schema.yaml`` into ``out``. Returns a summary (rows, columns, excluded).
    """
    from flows.pipeline import pipeline
    from medflow.config import load_config
    from storage.pseudonym import PseudonymKeys

    cohort = pathlib.Path(cohort)
    cfg = load_config(config, source=str((cohort / "dicom").resolve()), workspace=str(pathlib.Path(workspace).resolve()),
                      clinical=str((cohort / "clinical.csv").resolve()))
    summary = pipeline(cfg)
    disc = pathlib.Path(summary["workspace"]) / summary["discovery"]
    return ship_casebase(disc.with_name("casebase.parquet"), cohort / "clinical.csv", out=out, config=cfg,
                         keys=PseudonymKeys.from_env(), exclude=exclude)


def ship_casebase(casebase: pathlib.Path, clinical_csv: pathlib.Path, *, out, config, keys,
                  exclude: tuple[str, ...] = DEMO_PATIENTS) -> dict[str, Any]:
    """Write ``out/casebase.parquet`` + ``out/schema.yaml`` from a workspace's discovery case base."""
    from storage.clinical import case_schema_from_dict, read_raw_table, write_case_schema

    disc = config.discovery.resolved()
    if disc.roles is None:
        raise ValueError("the cohort config must name the clinical schema (discovery.schema_file)")
    schema = case_schema_from_dict(disc.roles)
    ids = read_raw_table(clinical_csv)[schema.identifier].tolist()
    table = neutral_case_base(pd.read_parquet(casebase), ids, keys=keys, exclude=exclude)
    out = pathlib.Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tmp = out / ".casebase.parquet.tmp"
    table.to_parquet(tmp, index=False)
    os.replace(tmp, out / "casebase.parquet")
    write_case_schema(schema, out / "schema.yaml", header="Roles of the clinical columns of casebase.parquet "
                      "(copied from the cohort's schema; the identifier is replaced by neutral patient_key ids).")
    return {"rows": int(len(table)), "columns": int(table.shape[1]), "excluded": list(exclude),
            "path": str(out / "casebase.parquet")}
