"""Catalog table ``pacs_transfer``: per pull and study, complete or not, and what is missing (pseudonymised)."""

from __future__ import annotations

import datetime as _dt
import pathlib
from typing import Any

from sqlalchemy import JSON, Boolean, Integer, String, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from storage.catalog import Base, Catalog


class PacsTransfer(Base):
    """One study of one pull: keys are pseudonymous, ``missing`` lists pseudonymised SOP Instance UIDs."""

    __tablename__ = "pacs_transfer"
    id: Mapped[str] = mapped_column(String(80), primary_key=True)  # pull_key:study_key
    pull_key: Mapped[str] = mapped_column(String(32))
    study_key: Mapped[str] = mapped_column(String(32))
    protocol: Mapped[str] = mapped_column(String(16))
    complete: Mapped[bool] = mapped_column(Boolean)
    n_series: Mapped[int] = mapped_column(Integer)
    n_expected: Mapped[int] = mapped_column(Integer)
    n_held: Mapped[int] = mapped_column(Integer)
    n_missing: Mapped[int] = mapped_column(Integer)
    missing: Mapped[Any] = mapped_column(JSON)
    updated: Mapped[str] = mapped_column(String(32))


def _catalog(workspace: pathlib.Path, url: str | None) -> Catalog:
    cat = Catalog.for_workspace(workspace, url)
    PacsTransfer.__table__.create(cat.engine, checkfirst=True)
    return cat


def record_pull(workspace: str | pathlib.Path, report: Any, *, url: str | None = None) -> None:
    """Upsert one row per study of ``report`` (a :class:`storage.pacs.pull.PullReport`)."""
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    with _catalog(pathlib.Path(workspace), url) as cat:
        cat.upsert([PacsTransfer(id=f"{report.pull_key}:{s.study_key}", pull_key=report.pull_key, study_key=s.study_key,
                                 protocol=report.protocol, complete=s.complete, n_series=s.n_series,
                                 n_expected=s.n_expected, n_held=s.n_held, n_missing=s.n_missing,
                                 missing=s.missing, updated=now) for s in report.studies])


def transfers(workspace: str | pathlib.Path, *, url: str | None = None,
              pull_key: str | None = None) -> list[dict[str, Any]]:
    """The recorded transfers (optionally of one pull) as dicts."""
    with _catalog(pathlib.Path(workspace), url) as cat, Session(cat.engine) as session:
        stmt = select(PacsTransfer)
        if pull_key:
            stmt = stmt.where(PacsTransfer.pull_key == pull_key)
        rows = session.scalars(stmt).all()
        return [{c.name: getattr(r, c.name) for c in PacsTransfer.__table__.columns} for r in rows]
