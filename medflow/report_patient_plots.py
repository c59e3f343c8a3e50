"""The per-patient plots of the decision-support report: one cohort drawing, one marker per patient.

A patient's risk strip shows the cohort's out-of-fold risks and the patient's risk with its
interval; the patient's survival plot shows the cohort's Kaplan-Meier curves (the patient's risk
group emphasised) and the patient's follow-up time. Everything but the marker is the same for
every patient, so it is drawn once with matplotlib (:class:`PatientPlots`: one PNG per kind and
risk group), kept once in the page (an SVG ``<image>`` in hidden ``<defs>``), and each patient's
plot is an inline SVG that shows it (``<use>``) under the patient's marker, placed in the
drawing's own pixel coordinates (the axes' data-to-pixel transform of the saved figure).

Drawing two matplotlib figures per patient made the report grow by ~0.17 s and ~40 KB per patient
(50 patients: 9.1 s, 2.0 MB); a marker is a few hundred bytes and no drawing. The SVG prints with
the page (a CSS background would not) and opens from disk with nothing else.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["Base", "PatientPlots", "RISK_COLOUR", "draw_km"]

#: The patient's colour (marker, interval) in the risk strip.
RISK_COLOUR = "#c0392b"
_KM_COLOURS = {"high": "#c0392b", "low": "#2e86c1"}
_DPI = 90  # the figure is made at the dpi it is saved at: its transforms are the PNG's pixels


def _esc(v: Any) -> str:
    return html.escape(str(v))


def draw_km(ax: Any, survival: dict[str, Any], *, highlight: str | None = None) -> None:
    """The Kaplan-Meier curves of each out-of-fold risk group (step, pointwise band), titled with the log-rank p.

    ``highlight``: the group drawn bold, the others faded (a patient's group); None draws all alike.
    """
    for group, curve in (survival.get("km") or {}).items():
        c = _KM_COLOURS.get(group, "#555")
        lw = 2.6 if highlight == group else 1.4
        alpha = 1.0 if highlight in (None, group) else 0.45
        ax.step(curve.get("t", []), curve.get("s", []), where="post", color=c, lw=lw, alpha=alpha,
                label=f"{group} risk (n={curve.get('n')}, events={curve.get('events')})")
        if curve.get("lo") and curve.get("hi"):
            ax.fill_between(curve["t"], curve["lo"], curve["hi"], step="post", color=c, alpha=0.12 * alpha)
    p = (survival.get("logrank") or {}).get("p")
    ax.set_title("Kaplan-Meier by out-of-fold risk group (log-rank p = "
                 f"{'–' if p is None or p != p else f'{float(p):.3f}'})", fontsize=8.5)
    ax.set_xlabel("time (days)")
    ax.set_ylabel("survival probability")
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower left", fontsize=6.5)


@dataclass(frozen=True)
class Base:
    """One cohort drawing: its PNG and the map from data to the PNG's pixels.

    ``x_px``/``y_px``: ``(offset, scale)`` with ``pixel = offset + scale * value`` (pixels from the
    image's left and top edges); ``axes_px``: the axes' ``(left, top, right, bottom)`` in pixels.
    """

    id: str
    png: bytes
    width: int
    height: int
    x_px: tuple[float, float]
    y_px: tuple[float, float]
    axes_px: tuple[float, float, float, float]

    def x(self, value: float) -> float:
        return self.x_px[0] + self.x_px[1] * value

    def y(self, value: float) -> float:
        return self.y_px[0] + self.y_px[1] * value

    def definition(self) -> str:
        """The drawing as an SVG ``<image>`` for the page's ``<defs>`` (kept once, shown by every ``<use>``)."""
        data = base64.b64encode(self.png).decode()
        return (f"<image id='{self.id}' width='{self.width}' height='{self.height}' "
                f"href='data:image/png;base64,{data}'/>")

    def svg(self, marks: list[str], *, plot: str, label: str) -> str:
        """An inline SVG of this drawing with ``marks`` (SVG elements in its pixels) on top."""
        return (f"<svg class='plot' data-plot='{_esc(plot)}' role='img' aria-label='{_esc(label)}' "
                f"width='{self.width}' height='{self.height}' viewBox='0 0 {self.width} {self.height}'>"
                f"<title>{_esc(label)}</title><use href='#{self.id}'/>{''.join(marks)}</svg>")


def _saved(fig: Any, ax: Any, id_: str) -> Base:
    """Save ``fig`` as PNG (no tight crop: the figure's pixels are the image's) with ``ax``'s pixel map."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    width, height = (int(round(v)) for v in fig.get_size_inches() * _DPI)
    to_px = ax.transData  # display pixels, origin at the bottom left (the layout is final once saved)
    (x0, y0), (x1, y1) = to_px.transform([(0.0, 0.0), (1.0, 1.0)])
    box = ax.get_window_extent()
    return Base(id=id_, png=buf.getvalue(), width=width, height=height, x_px=(x0, x1 - x0),
                y_px=(height - y0, -(y1 - y0)), axes_px=(box.x0, height - box.y1, box.x1, height - box.y0))


def _figure(size: tuple[float, float]) -> tuple[Any, Any]:
    """A figure and its axes of their own (no pyplot state to close), at the dpi they are saved at."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=size, dpi=_DPI)
    return fig, fig.subplots()


class PatientPlots:
    """The cohort drawings behind every patient's plots, each drawn once, and the patients' marked plots.

    Parameters
    ----------
    cohort_risks : list of float
        The cohort's out-of-fold risks (probabilities), shown grey in every risk strip.
    survival : dict
        The discovery's ``survival`` result (``km`` curves per risk group, ``logrank``).
    times : list of float
        Every patient's follow-up time (days) that will be marked: the time axis covers them all.
    """

    def __init__(self, cohort_risks: list[float], survival: dict[str, Any], times: list[float]) -> None:
        self.cohort_risks = [float(r) for r in cohort_risks]
        self.survival = survival or {}
        self.times = [float(t) for t in times if np.isfinite(t)]
        self._bases: dict[str, Base] = {}

    def _risk_base(self) -> Base:
        base = self._bases.get("risk")
        if base is None:
            fig, ax = _figure((4.6, 1.2))
            risks = self.cohort_risks
            if risks:
                ax.scatter(risks, np.zeros(len(risks)) + np.linspace(-0.15, 0.15, len(risks)), s=10, color="#999",
                           label="cohort (out-of-fold)")
            ax.scatter([], [], s=60, color=RISK_COLOUR, label="this patient")  # the legend's entry for the marker
            ax.set_xlim(0, 1)
            ax.set_ylim(-0.5, 0.5)
            ax.set_yticks([])
            ax.set_xlabel("predicted probability", fontsize=8)
            ax.legend(loc="upper right", fontsize=6, ncol=2, framealpha=0.7)
            fig.tight_layout(pad=0.3)
            base = self._bases["risk"] = _saved(fig, ax, "mf-risk")
        return base

    def _km_base(self, highlight: str | None) -> Base:
        name = f"km-{highlight or 'all'}"
        base = self._bases.get(name)
        if base is None:
            fig, ax = _figure((4.2, 3.0))
            draw_km(ax, self.survival, highlight=highlight)
            ends = self.times + [float(v) for curve in (self.survival.get("km") or {}).values()
                                 for v in curve.get("t", [])]
            if ends:  # every patient's marker inside the axes (as a marker line drawn by matplotlib would widen them)
                lo, hi = min(0.0, min(ends)), max(ends)
                pad = 0.05 * (hi - lo) if hi > lo else 1.0
                ax.set_xlim(lo - pad, hi + pad)
            fig.tight_layout(pad=0.3)
            base = self._bases[name] = _saved(fig, ax, f"mf-{name}")
        return base

    def risk(self, risk: float, ci: Any) -> str:
        """The risk strip with this patient's risk (a dot) and interval (a bar), as inline SVG."""
        base = self._risk_base()
        y = base.y(0.0)
        marks = []
        if ci and len(ci) == 2 and None not in ci:
            x0, x1 = base.x(float(ci[0])), base.x(float(ci[1]))
            marks.append(f"<line x1='{x0:.1f}' y1='{y:.1f}' x2='{x1:.1f}' y2='{y:.1f}' stroke='{RISK_COLOUR}' "
                         f"stroke-width='5' stroke-opacity='0.4'/>")
        radius = float(np.sqrt(60.0)) / 2 * _DPI / 72  # matplotlib's marker of area 60 pt^2
        marks.append(f"<circle class='mark' cx='{base.x(float(risk)):.1f}' cy='{y:.1f}' r='{radius:.2f}' "
                     f"fill='{RISK_COLOUR}'/>")
        return base.svg(marks, plot="risk", label="risk")

    def survival_position(self, group: str | None, time: float | None) -> str:
        """The Kaplan-Meier curves, ``group`` emphasised, with a dotted line at this patient's ``time``."""
        base = self._km_base(group)
        marks = []
        if time is not None and np.isfinite(time):
            x = base.x(float(time))
            _left, top, _right, bottom = base.axes_px
            marks.append(f"<line class='mark' x1='{x:.1f}' y1='{top:.1f}' x2='{x:.1f}' y2='{bottom:.1f}' "
                         "stroke='#333' stroke-width='1.25' stroke-dasharray='1.25,2.06'/>")
            marks.append(f"<text x='{x:.1f}' y='{base.y(0.04):.1f}' font-size='8.75' fill='#333' "
                         "font-family='DejaVu Sans, sans-serif'>\u00a0this patient</text>")
        return base.svg(marks, plot="km-patient", label="survival position")

    def definitions(self) -> str:
        """The drawings made so far, once, in a hidden SVG's ``<defs>`` (empty when none was drawn)."""
        if not self._bases:
            return ""
        return ("<svg width='0' height='0' style='position:absolute' aria-hidden='true'><defs>"
                + "".join(b.definition() for b in self._bases.values()) + "</defs></svg>")
