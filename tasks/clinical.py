"""Clinical table ingest: CSV/Parquet -> validated, pseudonymised Parquet keyed by ``patient_key``."""

from __future__ import annotations

import pathlib

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
def ingest_clinical(workspace: str, source: str, content: ArtifactRef, key_id: str) -> ArtifactRef:
    """Validate the clinical table, map patient identifiers to the image pseudonyms, drop PHI columns."""
    import pandas as pd

    from storage.clinical import infer_schema, load_clinical
    from storage.pseudonym import PseudonymKeys
    from storage.vault import Vault

    step = Step("collection", "clinical", workspace, content=content, key_id=key_id)
    keys = PseudonymKeys.from_env()
    raw = pd.read_parquet(source) if str(source).lower().endswith(".parquet") else pd.read_csv(source, dtype=str)
    schema = infer_schema(raw)
    table = load_clinical(source, schema=schema, keys=keys, vault=Vault(step.ws.root, keys)).reset_index()
    with atomic_folder(step.folder) as stage:
        table.to_parquet(stage / "clinical.parquet", index=False)
    return step.ref("clinical", "clinical.parquet", meta={"n_rows": int(len(table)),
                                                         "columns": [str(c) for c in table.columns]})
