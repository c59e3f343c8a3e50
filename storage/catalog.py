"""The catalog: one relational view of everything a workspace holds (SQLite by default, any SQLAlchemy URL).

Tables: patient, study, series, volume, mask, artifact, qc_finding, quarantine.
Keys are pseudonymous (``P...``, ``S...``); URIs are relative to the workspace.
No PHI is ever written here. Writes are idempotent upserts, so registering the
same run twice (or a cached rerun) changes nothing.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Integer, String, create_engine, func, select, text
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column


class Base(DeclarativeBase):
    pass


class Patient(Base):
    __tablename__ = "patient"
    patient_key: Mapped[str] = mapped_column(String(32), primary_key=True)


class Study(Base):
    __tablename__ = "study"
    study_key: Mapped[str] = mapped_column(String(32), primary_key=True)
    patient_key: Mapped[str] = mapped_column(ForeignKey("patient.patient_key"))


class Series(Base):
    __tablename__ = "series"
    series_key: Mapped[str] = mapped_column(String(32), primary_key=True)
    study_key: Mapped[str] = mapped_column(ForeignKey("study.study_key"))
    modality: Mapped[str] = mapped_column(String(16))
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Volume(Base):
    __tablename__ = "volume"
    volume_key: Mapped[str] = mapped_column(String(48), primary_key=True)
    series_key: Mapped[str] = mapped_column(ForeignKey("series.series_key"))
    uri: Mapped[str] = mapped_column(String(512))
    digest: Mapped[str] = mapped_column(String(80))
    kind: Mapped[str] = mapped_column(String(8))
    shape: Mapped[Any] = mapped_column(JSON)
    spacing: Mapped[Any] = mapped_column(JSON)
    meta: Mapped[Any] = mapped_column(JSON)


class Mask(Base):
    __tablename__ = "mask"
    mask_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    volume_key: Mapped[str] = mapped_column(ForeignKey("volume.volume_key"))
    roi_name: Mapped[str] = mapped_column(String(128))
    source: Mapped[str] = mapped_column(String(16))
    uri: Mapped[str] = mapped_column(String(512))
    digest: Mapped[str] = mapped_column(String(80))
    voxels: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Artifact(Base):
    __tablename__ = "artifact"
    uri: Mapped[str] = mapped_column(String(512), primary_key=True)
    kind: Mapped[str] = mapped_column(String(32))
    digest: Mapped[str] = mapped_column(String(80))
    stage: Mapped[str | None] = mapped_column(String(16), nullable=True)
    meta: Mapped[Any] = mapped_column(JSON)


class QCFindingRow(Base):
    __tablename__ = "qc_finding"
    id: Mapped[str] = mapped_column(String(160), primary_key=True)  # series_key:volume_index:code
    series_key: Mapped[str] = mapped_column(String(32))
    code: Mapped[str] = mapped_column(String(48))
    severity: Mapped[str] = mapped_column(String(8))
    message: Mapped[str] = mapped_column(String(512))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)


class QuarantineRow(Base):
    __tablename__ = "quarantine"
    sha256: Mapped[str] = mapped_column(String(64), primary_key=True)
    reason: Mapped[str] = mapped_column(String(48))
    detail: Mapped[str] = mapped_column(String(512))
    exception_type: Mapped[str | None] = mapped_column(String(64), nullable=True)


def default_url(workspace: str | pathlib.Path) -> str:
    return f"sqlite:///{pathlib.Path(workspace).resolve() / 'catalog.sqlite'}"


class Catalog:
    """Idempotent writer/reader of the catalog tables.

    A catalog owns an SQLAlchemy engine and its connection pool: close it (:meth:`close`, or use it as a
    context manager) when done. An engine left to the garbage collector keeps its pooled connection --
    an open file descriptor on ``catalog.sqlite``, or a PostgreSQL session -- until a full cyclic
    collection, which in a long-lived process (the soak, ``medflow serve``) can be many runs later.
    """

    def __init__(self, url: str):
        self.engine = create_engine(url, future=True)
        with self.engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                # CREATE TABLE IF NOT EXISTS races between two runs starting at once (pg_type unique violation):
                # one transaction-scoped advisory lock serialises the schema creation
                conn.execute(text("SELECT pg_advisory_xact_lock(7260414)"))
            Base.metadata.create_all(conn)

    @classmethod
    def for_workspace(cls, workspace: str | pathlib.Path, url: str | None = None) -> Catalog:
        return cls(url or default_url(workspace))

    def close(self) -> None:
        """Close the pooled connections (idempotent; the catalog can still be used: it reconnects)."""
        self.engine.dispose()

    def __enter__(self) -> Catalog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def upsert(self, rows: list[Base]) -> None:
        """Insert or update ``rows`` (by primary key) in one transaction.

        The rows already stored are loaded with one query per table (500 keys at a time) and
        updated by ``merge``; the others are added; one flush at commit writes them all (a
        ``merge`` per row cost a SELECT and a flush each: 0.2 s for a 26-patient collection).
        """
        with Session(self.engine) as session, session.begin(), session.no_autoflush:
            by_type: dict[type, list[Base]] = {}
            for row in rows:
                by_type.setdefault(type(row), []).append(row)
            stored: set[tuple[type, Any]] = set()
            for cls, items in by_type.items():
                (pk,) = cls.__mapper__.primary_key
                keys = sorted({getattr(r, pk.key) for r in items})
                for i in range(0, len(keys), 500):
                    found = session.scalars(select(cls).where(pk.in_(keys[i:i + 500]))).all()
                    stored.update((cls, getattr(r, pk.key)) for r in found)
            # table by table, parents first (foreign keys are checked on insert by PostgreSQL; without ORM
            # relationships the unit of work does not order the tables itself)
            order = {table: i for i, table in enumerate(Base.metadata.sorted_tables)}
            for cls in sorted(by_type, key=lambda c: order[c.__table__]):
                added: set[Any] = set()
                for row in by_type[cls]:
                    (pk,) = cls.__mapper__.primary_key
                    key = getattr(row, pk.key)
                    if key in added:  # a repeat in ``rows``: merged onto the first, once that is flushed
                        session.flush()
                        stored.update((cls, k) for k in added)
                        added.clear()
                    if (cls, key) in stored:
                        session.merge(row)  # (found in the identity map: no query)
                    else:
                        session.add(row)
                        added.add(key)
                session.flush()

    @staticmethod
    def _volume_rows(ref: Any) -> list[Base]:
        m = ref.meta
        return [
            Patient(patient_key=m["patient_key"]),
            Study(study_key=m["study_key"], patient_key=m["patient_key"]),
            Series(series_key=m["series_key"], study_key=m["study_key"], modality=m.get("modality", ""),
                   series_number=m.get("series_number")),
            Volume(volume_key=m["volume_key"], series_key=m["series_key"], uri=ref.uri, digest=ref.digest,
                   kind=m.get("kind", "3d"), shape=m.get("shape"), spacing=m.get("spacing"),
                   meta=json.loads(json.dumps(m.get("info", {})))),
        ]

    @staticmethod
    def _mask_rows(ref: Any) -> list[Base]:
        m = ref.meta
        return [Mask(mask_key=m["mask_key"], volume_key=m["volume_key"], roi_name=m["roi_name"],
                     source=m.get("source", "rtstruct"), uri=ref.uri, digest=ref.digest, voxels=m.get("voxels"))]

    @staticmethod
    def _qc_rows(series_key: str, findings: list[dict[str, Any]], volume_index: int) -> list[Base]:
        return [QCFindingRow(id=f"{series_key}:{volume_index}:{f['code']}", series_key=series_key,
                             code=f["code"], severity=f["severity"], message=f["message"][:512],
                             value=f.get("value")) for f in findings]

    @staticmethod
    def _quarantine_rows(records: list[dict[str, Any]]) -> list[Base]:
        return [QuarantineRow(sha256=r["sha256"], reason=r["reason"], detail=r["detail"][:512],
                              exception_type=r.get("exception_type")) for r in records]

    def register_volume(self, ref: Any) -> None:
        self.upsert(self._volume_rows(ref))

    def register_mask(self, ref: Any) -> None:
        self.upsert(self._mask_rows(ref))

    def register_artifact(self, ref: Any, *, stage: str | None = None) -> None:
        self.upsert([Artifact(uri=ref.uri, kind=ref.kind, digest=ref.digest, stage=stage, meta=dict(ref.meta))])

    def register_qc(self, series_key: str, findings: list[dict[str, Any]], *, volume_index: int = 0) -> None:
        self.upsert(self._qc_rows(series_key, findings, volume_index))

    def register_quarantine(self, records: list[dict[str, Any]]) -> None:
        self.upsert(self._quarantine_rows(records))

    def register_collection(self, volumes: list[Any], masks: list[Any], *, qc: list[dict[str, Any]] = (),
                            rejections: list[dict[str, Any]] = (),
                            artifacts: dict[str, list[Any]] | None = None) -> int:
        """Everything one collection (and run) produced, upserted in ONE transaction.

        Same rows as :meth:`register_volume`, :meth:`register_mask`, :meth:`register_qc`
        (``volume_index`` taken from each finding's ``volume_key``, ``...v<index>``),
        :meth:`register_quarantine` and :meth:`register_artifact` one by one, without a
        transaction (and an SQLite fsync) per row. Rows repeated in the input (a patient of
        several volumes) are merged once. Returns the number of rows written.
        """
        rows: dict[tuple, Base] = {}

        def add(items: list[Base]) -> None:
            for row in items:
                pk = tuple(getattr(row, c.key) for c in row.__mapper__.primary_key)
                rows[(type(row).__name__, *pk)] = row

        for v in volumes:
            add(self._volume_rows(v))
        for m in masks:
            add(self._mask_rows(m))
        for f in qc:
            index = int(str(f.get("volume_key", "v0")).rsplit("v", 1)[-1] or 0)
            add(self._qc_rows(f["series_key"], [f], index))
        add(self._quarantine_rows(list(rejections)))
        for stage, refs in (artifacts or {}).items():
            add([Artifact(uri=r.uri, kind=r.kind, digest=r.digest, stage=stage, meta=dict(r.meta)) for r in refs])
        self.upsert(list(rows.values()))
        return len(rows)

    def count(self, table: type[Base]) -> int:
        with Session(self.engine) as session:
            return int(session.scalar(select(func.count()).select_from(table)) or 0)

    def volumes(self) -> list[Volume]:
        with Session(self.engine) as session:
            return list(session.scalars(select(Volume).order_by(Volume.volume_key)).all())

    def masks(self) -> list[Mask]:
        with Session(self.engine) as session:
            return list(session.scalars(select(Mask).order_by(Mask.mask_key)).all())

    def case_base_rows(self) -> dict[str, list[dict[str, Any]]]:
        """Rows of the whole case base (volumes with modality, masks, analysis feature tables, QC, quarantine)."""
        with Session(self.engine) as session:
            vols = session.execute(select(Volume, Series.modality, Series.study_key, Study.patient_key)
                                   .join(Series, Volume.series_key == Series.series_key)
                                   .join(Study, Series.study_key == Study.study_key)
                                   .order_by(Volume.volume_key)).all()
            masks = session.scalars(select(Mask).order_by(Mask.mask_key)).all()
            feats = session.scalars(select(Artifact).where(Artifact.stage == "analysis")
                                    .order_by(Artifact.uri)).all()
            qc = session.scalars(select(QCFindingRow).order_by(QCFindingRow.id)).all()
            rej = session.scalars(select(QuarantineRow).order_by(QuarantineRow.sha256)).all()
            return {
                "volumes": [{"uri": v.uri, "digest": v.digest, "meta": {
                    "volume_key": v.volume_key, "series_key": v.series_key, "study_key": study, "patient_key": patient,
                    "modality": modality, "kind": v.kind}} for v, modality, study, patient in vols],
                "masks": [{"uri": m.uri, "digest": m.digest, "meta": {
                    "mask_key": m.mask_key, "volume_key": m.volume_key, "roi_name": m.roi_name, "source": m.source,
                    "voxels": m.voxels}} for m in masks],
                "features": [{"uri": a.uri, "kind": a.kind, "digest": a.digest, "meta": dict(a.meta or {})}
                             for a in feats if a.kind == "features"],
                "qc": [{"series_key": q.series_key, "code": q.code, "severity": q.severity, "message": q.message,
                        "value": q.value} for q in qc],
                "rejections": [{"sha256": r.sha256, "reason": r.reason, "detail": r.detail,
                                "exception_type": r.exception_type} for r in rej],
            }
