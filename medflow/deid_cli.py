"""Body of ``medflow deidentify IN_DIR OUT_DIR``: DICOM PS3.15 Annex E de-identification of a folder.

Writes ``OUT_DIR/<patient key>/<study key>/<series key>/<new SOP Instance UID>.dcm``
(see :func:`storage.deid.deidentify_folder`). The secret comes from
``MEDFLOW_SECRET_KEY`` or the user's config folder (:meth:`PseudonymKeys.from_env`).
Only counts are printed: never a path below IN_DIR, a name or an identifier.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from storage.deid import DeidOptions, deidentify_folder
from storage.deid.folder import check_dirs
from storage.pseudonym import PseudonymKeys


def run_deidentify(in_dir: Path, out_dir: Path, *, options: DeidOptions, workspace: Path | None = None,
                   keys: PseudonymKeys | None = None, run_id: str | None = None,
                   echo: Callable[[str], Any] | None = print) -> dict[str, Any]:
    """De-identify every DICOM file below ``in_dir`` into ``out_dir``; return PHI-free counts.

    Parameters
    ----------
    in_dir, out_dir : Path
        Source (read only) and destination; ``out_dir`` must not lie inside ``in_dir``.
    options : DeidOptions
        Annex E options (the lead's config model can hold one).
    workspace : Path, optional
        When given, rejections are quarantined there and the pseudonym map is stored in
        its encrypted vault.
    keys : PseudonymKeys, optional
        Defaults to :meth:`PseudonymKeys.from_env`.
    echo : callable, optional
        Where the one-line summary goes (``print`` by default; ``None`` for silence).

    Returns
    -------
    dict
        ``files, written, rejected, not_dicom, skipped_dicomdir, patients, studies, series,
        quarantined, reasons`` (counts only).

    Raises
    ------
    ValueError
        When ``out_dir`` is inside ``in_dir`` (or the reverse) or ``in_dir`` is not a folder.
    """
    if not isinstance(options, DeidOptions):
        raise TypeError(f"options must be DeidOptions, got {type(options).__name__}")
    check_dirs(Path(in_dir), Path(out_dir))  # fail before the secret is touched
    keys = keys or PseudonymKeys.from_env()
    report = deidentify_folder(Path(in_dir), Path(out_dir), options=options, keys=keys,
                               workspace=workspace, run_id=run_id)
    summary = report.counts()
    if echo is not None:
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(summary["reasons"].items())) or "none"
        echo(f"de-identified {summary['written']} of {summary['files']} files "
             f"({summary['patients']} patients, {summary['studies']} studies, {summary['series']} series); "
             f"rejected {summary['rejected']} ({reasons}); not DICOM {summary['not_dicom']}; "
             f"DICOMDIR skipped {summary['skipped_dicomdir']}")
    return summary
