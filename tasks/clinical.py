"""Clinical table ingest: CSV/Parquet -> validated, pseudonymised Parquet keyed by ``patient_key``."""

from __future__ import annotations

import pathlib
from typing import Any

from storage.workspace import ArtifactRef, atomic_folder
from tasks.common import Step, stage_task


def file_fingerprint(path: str | pathlib.Path) -> ArtifactRef:
    """Content digest of an input file (its location never enters a key)."""
    from storage.workspace import digest_path

    p = pathlib.Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"clinical table does not exist: {p}")
    return ArtifactRef(kind="clinical-source", uri="", digest=digest_path(p), meta={"suffix": p.suffix.lower()})


@stage_task("collection", "clinical")
def ingest_clinical(workspace: str, source: str, content: ArtifactRef, key_id: str,
                    roles: dict[str, Any] | None = None) -> ArtifactRef:
    """Validate the clinical table, map patient identifiers to the image pseudonyms, drop PHI columns.

    With ``roles`` (a case schema, :class:`knowledge.roles.CaseSchema` as a dict) the
    declared identifier is pseudonymised and the ``phi``/``ignore`` columns are dropped;
    the other columns are kept as in the sheet (the discovery stage applies the roles).
    Without it the schema is inferred (:func:`storage.clinical.infer_schema`).
    """
    import pandas as pd

    from storage.clinical import case_schema_from_dict, infer_schema, load_clinical, load_clinical_roles
    from storage.pseudonym import PseudonymKeys
    from storage.vault import Vault

    step = Step("collection", "clinical", workspace, content=content, key_id=key_id, roles=roles)
    keys = PseudonymKeys.from_env()
    vault = Vault(step.ws.root, keys)
    if roles is not None:
        table = load_clinical_roles(source, schema=case_schema_from_dict(roles), keys=keys, vault=vault)
    else:
        raw = pd.read_parquet(source) if str(source).lower().endswith(".parquet") else pd.read_csv(source, dtype=str)
        table = load_clinical(source, schema=infer_schema(raw), keys=keys, vault=vault).reset_index()
    with atomic_folder(step.folder) as stage:
        table.to_parquet(stage / "clinical.parquet", index=False)
    return step.ref("clinical", "clinical.parquet", meta={"n_rows": int(len(table)),
                                                         "columns": [str(c) for c in table.columns]})
