"""Per-patient plots of the decision-support report: the cohort drawn once, each patient a marker on it."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest

from medflow import report_patient_plots as rpp
from medflow.report_knowledge import knowledge_sections, patient_section

SURVIVAL = {
    "km": {"high": {"t": [0, 120, 400, 900, 1500], "s": [1.0, 0.8, 0.6, 0.4, 0.4], "n": 10, "events": 4,
                    "lo": [1.0, 0.6, 0.4, 0.2, 0.2], "hi": [1.0, 0.95, 0.8, 0.6, 0.6]},
           "low": {"t": [0, 300, 1100, 2000], "s": [1.0, 0.9, 0.75, 0.75], "n": 10, "events": 2}},
    "logrank": {"p": 0.04},
}


def _results(n: int) -> dict:
    rng = np.random.default_rng(7)
    patients = {f"P{i:04d}": {"risk": float(rng.uniform(0.05, 0.95)), "risk_ci": [0.1, 0.8],
                              "survival_group": "high" if i % 2 else "low", "time": float(50 + 40 * i),
                              "rules_fired": {"en": ["IF a > 1 THEN b"]}, "similar": [], "qc_flags": []}
                for i in range(n)}
    return {"mode": "discovered", "patients": patients, "survival": SURVIVAL}


def _png(base: rpp.Base) -> np.ndarray:
    import matplotlib.image

    return matplotlib.image.imread(io.BytesIO(base.png), format="png")


def _dark(img: np.ndarray) -> np.ndarray:
    return img[..., :3].sum(axis=-1) < 0.6  # the axes' black frame (grey points and curves are lighter)


def test_the_cohort_is_drawn_once_and_each_patient_adds_a_marker(monkeypatch):
    drawn: list[str] = []
    real = rpp._saved
    monkeypatch.setattr(rpp, "_saved", lambda fig, ax, id_: drawn.append(id_) or real(fig, ax, id_))
    small = knowledge_sections(_results(4))
    assert sorted(drawn) == ["mf-km-high", "mf-km-low", "mf-risk"]
    drawn.clear()
    big = knowledge_sections(_results(200))
    assert sorted(drawn) == ["mf-km-high", "mf-km-low", "mf-risk"]  # not per patient
    # every drawing is in the page once; each patient's plots show it
    for html in (small, big):
        for id_ in ("mf-risk", "mf-km-high", "mf-km-low"):
            assert html.count(f"<image id='{id_}'") == 1
    assert big.count("<use href='#mf-risk'/>") == 200
    assert big.count("<use href='#mf-km-high'/>") == 100 and big.count("<use href='#mf-km-low'/>") == 100
    per_patient = (len(big) - len(small)) / 196
    assert per_patient < 3_000, per_patient  # two matplotlib PNGs per patient were ~40 KB


def test_markers_sit_on_the_drawings_axes():
    """The data-to-pixel map of each drawing matches its PNG: the frame lies where the axes limits map."""
    plots = rpp.PatientPlots([0.2, 0.5, 0.7], SURVIVAL, [100.0, 2500.0])
    svg = plots.risk(0.25, [0.1, 0.8])
    risk = plots._bases["risk"]
    dark = _dark(_png(risk))
    assert dark.shape == (risk.height, risk.width)
    top, bottom = int(round(risk.y(0.5))), int(round(risk.y(-0.5)))
    for x in (risk.x(0.0), risk.x(1.0)):  # x limits 0 and 1: the left and right spines
        column = dark[top + 2:bottom - 2, int(round(x)) - 1:int(round(x)) + 2].any(axis=1)
        assert column.mean() > 0.95, x
    for y in (top, bottom):  # y limits: the top and bottom spines
        row = dark[y - 1:y + 2, int(risk.x(0.05)):int(risk.x(0.95))].any(axis=0)
        assert row.mean() > 0.95, y
    cx = float(re.search(r"<circle class='mark' cx='([\d.]+)'", svg).group(1))
    assert cx == pytest.approx(risk.x(0.0) + 0.25 * (risk.x(1.0) - risk.x(0.0)), abs=0.06)
    line = re.search(r"<line x1='([\d.]+)' y1='[\d.]+' x2='([\d.]+)'", svg)
    assert float(line.group(1)) == pytest.approx(risk.x(0.1), abs=0.06)
    assert float(line.group(2)) == pytest.approx(risk.x(0.8), abs=0.06)

    km_svg = plots.survival_position("high", 1200.0)
    km = plots._bases["km-high"]
    dark = _dark(_png(km))
    left, top, right, bottom = (int(round(v)) for v in km.axes_px)
    assert km.y(0.0) == pytest.approx(bottom, abs=0.6) and km.y(1.05) == pytest.approx(top, abs=0.6)
    for x in (left, right):
        assert dark[top + 2:bottom - 2, x - 1:x + 2].any(axis=1).mean() > 0.95
    x = float(re.search(r"<line class='mark' x1='([\d.]+)'", km_svg).group(1))
    assert left < x < right and x == pytest.approx(km.x(1200.0), abs=0.06)
    # the time axis covers every patient's marker (2,500 days is beyond the curves)
    assert left < km.x(2500.0) < right and left < km.x(0.0)


def test_a_patient_page_alone_carries_its_drawings():
    res = _results(3)
    key, p = next(iter(res["patients"].items()))
    page = patient_section(key, p, res, lang="en")
    assert page.count("<image id='mf-risk'") == 1 and "<use href='#mf-risk'/>" in page
    png = re.search(r"<image id='mf-risk'[^>]*href='data:image/png;base64,([A-Za-z0-9+/=]+)'", page).group(1)
    assert base64.b64decode(png)[:8] == b"\x89PNG\r\n\x1a\n"
    # a patient without a risk or a follow-up time: no marker where there is nothing to mark
    bare = patient_section(key, {**p, "risk": None, "time": None}, res, lang="en")
    assert "mf-risk" not in bare and "class='mark'" not in bare and "<use href='#mf-km-low'/>" in bare
