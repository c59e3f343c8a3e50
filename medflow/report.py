"""HTML decision-support report: slices with mask overlays, QC, segmentation scores, features, models.

Everything shown is keyed by pseudonymous keys; no PHI reaches the report.
"""

from __future__ import annotations

import html
import io
from typing import Any

import numpy as np
import pandas as pd

from medflow.report_knowledge import CSS as _KNOWLEDGE_CSS
from medflow.report_knowledge import knowledge_sections

_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h1{font-size:1.6em} h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:1.6em}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right} th{background:#f3f3f3}
td:first-child,th:first-child{text-align:left}
.fig{display:inline-block;margin:6px;text-align:center;font-size:.8em}
.skip{color:#8a5a00} .err{color:#a00} .muted{color:#777;font-size:.85em}
"""


#: The features shown in the report's summary table (IBSI-1 names; the full table is in features.parquet).
REPORT_FEATURES = ["morph.vol", "morph.area", "morph.sphericity", "morph.diam", "stat.mean", "stat.median",
                   "stat.min", "stat.max", "stat.var", "stat.skew", "stat.kurt"]


def overlay_png(volume: np.ndarray, masks: list[tuple[str, np.ndarray]], *, spacing: tuple[float, ...],
                title: str) -> bytes:
    """PNG bytes of the axial slice through the largest mask, contours of every mask on top.

    Drawn on a :class:`matplotlib.figure.Figure` of its own (no pyplot state): volume chains draw their
    figures concurrently, in threads. The bytes are those pyplot's ``subplots``/``savefig`` gave.
    """
    from matplotlib.figure import Figure

    areas = [m.reshape(m.shape[0], -1).sum(axis=1) for _, m in masks if m.any()]
    z = int(np.argmax(np.sum(areas, axis=0))) if areas else volume.shape[0] // 2
    img = volume[z].astype(np.float32)
    lo, hi = np.percentile(img, [1, 99]) if img.size else (0, 1)
    fig = Figure(figsize=(3.2, 3.2), dpi=90)
    ax = fig.subplots()
    ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1,
              aspect=float(spacing[1] / spacing[2]) if len(spacing) == 3 else 1.0)
    colours = ["#ff3030", "#30c0ff", "#ffd700", "#40ff40", "#ff60ff"]
    for i, (name, m) in enumerate(masks):
        if m[z].any():
            ax.contour(m[z].astype(float), levels=[0.5], colors=[colours[i % len(colours)]], linewidths=1.2)
            ax.plot([], [], color=colours[i % len(colours)], label=name)
    if masks:
        ax.legend(loc="lower right", fontsize=6, framealpha=0.6)
    ax.set_title(f"{title} (slice {z})", fontsize=8)
    ax.axis("off")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _table(df: pd.DataFrame, *, max_rows: int = 200, floatfmt: str = "{:.4g}") -> str:
    if df is None or df.empty:
        return "<p class='muted'>(none)</p>"
    return df.head(max_rows).to_html(index=False, border=0, float_format=lambda v: floatfmt.format(v),
                                     na_rep="–", escape=True)


def render(*, volumes: list[dict[str, Any]], figures: list[tuple[str, str]], qc: pd.DataFrame,
           quarantine: pd.DataFrame, evaluation: pd.DataFrame, features: pd.DataFrame,
           discovery: dict[str, Any], provenance: dict[str, Any], fusion: pd.DataFrame | None = None,
           detection: pd.DataFrame | None = None) -> str:
    """The report as one self-contained HTML page."""
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>medflow report</title>"
             f"<style>{_CSS}{_KNOWLEDGE_CSS}</style>"
             "</head><body><h1>medflow decision-support report</h1>",
             "<p class='muted'>Research use only. Cases are identified by pseudonymous keys; the pseudonym map is "
             "held encrypted in the workspace vault.</p>"]
    vt = pd.DataFrame([{"volume": v["volume_key"], "patient": v["patient_key"], "modality": v.get("modality"),
                        "shape": "×".join(map(str, v.get("shape", []))),
                        "spacing (mm)": " × ".join(f"{s:.3g}" for s in v.get("spacing", []))} for v in volumes])
    parts += ["<h2>Volumes</h2>", _table(vt)]
    parts += ["<h2>Images and ROIs</h2>"]
    parts += [f"<div class='fig'><img src='data:image/png;base64,{png}'><br>{html.escape(cap)}</div>"
              for cap, png in figures]
    parts += ["<h2>Quality control</h2>", _table(qc), "<h3>Quarantined inputs</h3>", _table(quarantine)]
    parts += ["<h2>Automatic segmentation vs reference</h2>",
              "<p class='muted'>Best-matching automatic component per reference ROI: Dice, 95th-percentile "
              "Hausdorff distance (mm), volume difference (ml, automatic − reference).</p>", _table(evaluation)]
    if fusion is not None and not fusion.empty:
        parts += ["<h2>Fusion (co-registration)</h2>",
                  "<p class='muted'>Each moving series registered onto the reference grid; the transform maps "
                  "reference LPS points to moving LPS points.</p>", _table(fusion)]
    if detection is not None and not detection.empty:
        parts += ["<h2>Candidate lesions (blob detection)</h2>", _table(detection)]
    if not features.empty:
        base = features[features["image"] == "original"] if "image" in features else features
        key = base[base["family"].isin(["morph", "stat"])] if "family" in base else base
        pick = key[key["feature"].isin(REPORT_FEATURES)]
        if pick.empty:
            pick = key
        wide = pick.pivot_table(index=["volume_key", "roi_name"], columns="feature", values="value",
                                aggfunc="first").reset_index() if not pick.empty else pick
        wide = wide[["volume_key", "roi_name"] + [c for c in REPORT_FEATURES if c in wide.columns]]
        wide.columns.name = None
        parts += ["<h2>Features (selection)</h2>",
                  f"<p class='muted'>{len(features)} feature values over "
                  f"{features[['volume_key', 'roi_name']].drop_duplicates().shape[0]} ROIs; the full table is "
                  "features.parquet in the report's artifact folder.</p>", _table(wide)]
    parts.append(f"<h2>{html.escape(_ui('knowledge', discovery))}</h2>")
    parts.append(knowledge_sections({k: v for k, v in discovery.items() if k != "provenance"},
                                    lang=str(discovery.get("lang") or "en")))
    parts += ["<h2>Provenance</h2>", f"<pre>{html.escape(_fmt(provenance))}</pre></body></html>"]
    return "\n".join(parts)


def _ui(key: str, discovery: dict[str, Any]) -> str:
    lang = str(discovery.get("lang") or "en")
    return {"knowledge": {"en": "Knowledge discovery and decision support", "zh": "知识发现与决策支持"}}[key].get(
        lang, "Knowledge discovery and decision support")


def _fmt(value: Any) -> str:
    import json

    return json.dumps(value, indent=1, sort_keys=True, default=str)
