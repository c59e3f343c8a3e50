"""The batched catalog write (one transaction per collection) stores exactly what the row-by-row writes stored."""

from sqlalchemy import select
from sqlalchemy.orm import Session

from storage.catalog import (
    Artifact,
    Catalog,
    Mask,
    Patient,
    QCFindingRow,
    QuarantineRow,
    Series,
    Study,
    Volume,
)
from storage.workspace import ArtifactRef


def _volume(p: int, s: int) -> ArtifactRef:
    meta = {"patient_key": f"P{p}", "study_key": f"S{p}", "series_key": f"R{p}{s}", "volume_key": f"R{p}{s}v0",
            "modality": "CT", "series_number": s, "kind": "3d", "shape": [3, 4, 5], "spacing": [1.0, 1.0, 2.0],
            "info": {"manufacturer": "ACME"}}
    return ArtifactRef(kind="volume", uri=f"artifacts/u/{p}{s}/volumes/R{p}{s}v0", digest=f"sha256:{p}{s}", meta=meta)


def _mask(p: int, s: int) -> ArtifactRef:
    meta = {"mask_key": f"R{p}{s}v0.m0", "volume_key": f"R{p}{s}v0", "roi_name": "GTV", "source": "rtstruct",
            "voxels": 7}
    return ArtifactRef(kind="mask", uri=f"artifacts/u/{p}{s}/masks/R{p}{s}v0.m0", digest=f"sha256:m{p}{s}", meta=meta)


def _dump(cat: Catalog) -> dict:
    out = {}
    with Session(cat.engine) as session:
        for table in (Patient, Study, Series, Volume, Mask, QCFindingRow, QuarantineRow, Artifact):
            rows = session.scalars(select(table)).all()
            cols = [c.key for c in table.__table__.columns]
            out[table.__name__] = sorted(tuple(repr(getattr(r, c)) for c in cols) for r in rows)
    return out


def test_register_collection_equals_row_by_row(tmp_path):
    vols = [_volume(p, s) for p in range(3) for s in range(2)]
    masks = [_mask(p, s) for p in range(3) for s in range(2)]
    qc = [{"volume_key": f"R{p}{s}v0", "series_key": f"R{p}{s}", "code": "gaps", "severity": "warning",
           "message": "missing slices", "value": 1.0} for p in range(3) for s in range(2)]
    rej = [{"sha256": "a" * 64, "reason": "truncated", "detail": "cut", "exception_type": None}]
    arts = {"preprocessing": [ArtifactRef(kind="volume", uri="artifacts/pre/x", digest="sha256:x", meta={})]}

    one = Catalog(f"sqlite:///{tmp_path / 'one.sqlite'}")
    for v in vols:
        one.register_volume(v)
    for m in masks:
        one.register_mask(m)
    for f in qc:
        one.register_qc(f["series_key"], [f], volume_index=0)
    one.register_quarantine(rej)
    for stage, refs in arts.items():
        for r in refs:
            one.register_artifact(r, stage=stage)

    batch = Catalog(f"sqlite:///{tmp_path / 'batch.sqlite'}")
    n = batch.register_collection(vols, masks, qc=qc, rejections=rej, artifacts=arts)
    assert n == 3 + 3 + 6 + 6 + 6 + 6 + 1 + 1  # patients, studies, series, volumes, masks, qc, quarantine, artifact
    assert _dump(batch) == _dump(one)
    batch.register_collection(vols, masks, qc=qc, rejections=rej, artifacts=arts)  # idempotent
    assert _dump(batch) == _dump(one)


def test_upsert_updates_stored_rows_inserts_new_ones_and_merges_repeats(tmp_path):
    """With foreign keys enforced (as PostgreSQL does), children listed before their parents."""
    from sqlalchemy import event

    from storage.catalog import Catalog, Patient, Series, Study

    cat = Catalog(f"sqlite:///{tmp_path / 'c.sqlite'}")
    event.listen(cat.engine, "connect", lambda conn, _rec: conn.execute("PRAGMA foreign_keys=ON"))
    cat.engine.dispose()
    cat.upsert([Patient(patient_key="P1"), Study(study_key="S1", patient_key="P1"),
                Series(series_key="X1", study_key="S1", modality="CT", series_number=1)])
    cat.upsert([Series(series_key="X1", study_key="S1", modality="MR", series_number=2),  # stored: updated
                Series(series_key="X2", study_key="S2", modality="PT", series_number=3),  # new, parent below
                Study(study_key="S2", patient_key="P2"), Patient(patient_key="P2"),
                Series(series_key="X3", study_key="S2", modality="PT", series_number=5),
                Series(series_key="X2", study_key="S2", modality="PT", series_number=4),  # a repeat: merged
                Series(series_key="X3", study_key="S2", modality="CT", series_number=6)])  # repeated after a flush
    with cat.engine.connect() as conn:
        rows = conn.exec_driver_sql("SELECT series_key, study_key, modality, series_number FROM series "
                                    "ORDER BY series_key").fetchall()
    assert [tuple(r) for r in rows] == [("X1", "S1", "MR", 2), ("X2", "S2", "PT", 4), ("X3", "S2", "CT", 6)]
    assert cat.count(Patient) == 2 and cat.count(Study) == 2
    cat.close()
