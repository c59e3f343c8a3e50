"""PET: body-weight SUV factor from the header (decay-corrected dose, weight) and its application."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from storage.dicom.convert.common import (
    PetUnits,
    _opt_float,
    _seq_item,
)
from storage.dicom.series import _s


# --------------------------------------------------------------------------------------- PET SUV
def _dt(date: str, time: str) -> datetime | None:
    date, time = (date or "").strip(), (time or "").strip()
    if not date or not time:
        return None
    t = time.split(".")
    frac = float("0." + t[1]) if len(t) > 1 and t[1].isdigit() else 0.0
    hhmmss = t[0].ljust(6, "0")
    try:
        return datetime.strptime(date[:8] + hhmmss[:6], "%Y%m%d%H%M%S") + timedelta(seconds=frac)
    except ValueError:
        return None


def suvbw_factor(ds) -> tuple[float | None, str]:
    """Factor turning BQML activity into body-weight SUV (g/ml), and a status string.

    ``SUVbw = value [Bq/ml] * weight [g] / decay-corrected injected dose [Bq]`` with the dose
    decayed from RadiopharmaceuticalStartDateTime (or StartTime on SeriesDate) to the scan
    start (SeriesDate/Time, or AcquisitionDate/Time when earlier), following the QIBA
    vendor-neutral pseudo-code for DecayCorrection ``START``.

    Returns
    -------
    (factor or None, status)
        status is ``"computed"``, ``"not_bqml"``, or ``"missing:<tag,...>"`` /
        ``"unsupported:<why>"`` when the tags do not allow it.
    """
    units = _s(ds, "Units").upper()
    if units != "BQML":
        return None, "not_bqml"
    missing = []
    weight = _opt_float(ds, "PatientWeight")
    if not weight or weight <= 0:
        missing.append("PatientWeight")
    rp = _seq_item(ds, "RadiopharmaceuticalInformationSequence")
    dose = _opt_float(rp, "RadionuclideTotalDose") if rp is not None else None
    half = _opt_float(rp, "RadionuclideHalfLife") if rp is not None else None
    if not dose or dose <= 0:
        missing.append("RadionuclideTotalDose")
    if not half or half <= 0:
        missing.append("RadionuclideHalfLife")
    decay = _s(ds, "DecayCorrection").upper()
    series_dt = _dt(_s(ds, "SeriesDate"), _s(ds, "SeriesTime"))
    acq_dt = _dt(_s(ds, "AcquisitionDate") or _s(ds, "SeriesDate"), _s(ds, "AcquisitionTime"))
    scan = min([t for t in (series_dt, acq_dt) if t is not None], default=None)
    inj = None
    if rp is not None:
        sdt = _s(rp, "RadiopharmaceuticalStartDateTime")
        if sdt:
            inj = _dt(sdt[:8], sdt[8:])
        if inj is None:
            inj = _dt(_s(ds, "SeriesDate"), _s(rp, "RadiopharmaceuticalStartTime"))
    if scan is None:
        missing.append("SeriesTime")
    if inj is None:
        missing.append("RadiopharmaceuticalStartTime")
    if missing:
        return None, "missing:" + ",".join(missing)
    if decay not in ("START", "ADMIN"):
        return None, f"unsupported:DecayCorrection={decay or 'absent'}"
    assert weight and dose and half and scan and inj
    dt_s = (scan - inj).total_seconds() if decay == "START" else 0.0
    if dt_s < 0:
        return None, "unsupported:scan_before_injection"
    decayed = dose * math.exp(-math.log(2.0) * dt_s / half)
    return weight * 1000.0 / decayed, "computed"


def _pet_meta(ds, meta: dict[str, Any]) -> float | None:
    if meta.get("modality") != "PT":
        return None
    meta["decay_correction"] = _s(ds, "DecayCorrection") or None
    meta["corrected_image"] = [str(v) for v in (ds.get("CorrectedImage") or [])]
    factor, status = suvbw_factor(ds)
    meta["suvbw_status"] = status
    meta["suvbw_factor"] = factor
    if _s(ds, "Units").upper() == "GML":
        meta["suv_note"] = "values are already SUV (Units=GML) as stored*slope+intercept"
    return factor


def _apply_pet(vol: np.ndarray, meta: dict[str, Any], factor: float | None, pet_units: PetUnits) -> np.ndarray:
    if meta.get("modality") != "PT":
        return vol
    if pet_units == "suvbw" and factor is not None:
        meta["units_stored"] = meta.get("units")
        meta["units"] = "SUVbw"
        meta["suvbw_applied"] = True
        return (vol.astype(np.float64) * factor).astype(np.float32)
    meta["suvbw_applied"] = False
    return vol


