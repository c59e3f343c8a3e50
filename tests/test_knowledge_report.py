"""The decision-support report: the demo (2 sample patients, no clinical table) placed against the shipped case base,
rendered in headless Chromium with no console output, every plot present, and no 'skipped' anywhere."""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import subprocess

import pytest

from medflow.config import PipelineConfig

pytestmark = pytest.mark.slow

REPO = pathlib.Path(__file__).resolve().parents[1]
_CHECK = ("<script>window.addEventListener('load',function(){var ok=0,bad=0;for(var i=0;i<document.images.length;"
          "i++){if(document.images[i].complete&&document.images[i].naturalWidth>0){ok++}else{bad++}}"
          "document.body.setAttribute('data-images-ok',ok);document.body.setAttribute('data-images-bad',bad);});"
          "</script>")


@pytest.fixture(scope="session")
def chromium() -> str:
    """Debian's chromium, installed by the project's script when missing."""
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        subprocess.run(["bash", str(REPO / "scripts" / "install-browser.sh")], check=True)
        exe = shutil.which("chromium") or shutil.which("chromium-browser")
    assert exe, "scripts/install-browser.sh did not provide chromium"
    return exe


def render(chromium: str, page: pathlib.Path, tmp: pathlib.Path, *, fragment: str = "",
           screenshot: pathlib.Path | None = None, size: str = "1280,2200") -> tuple[str, list[str]]:
    """Load ``page`` from disk in headless Chromium: (DOM after load, console lines)."""
    tmp.mkdir(parents=True, exist_ok=True)
    args = [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", f"--user-data-dir={tmp / 'profile'}",
            "--enable-logging=stderr", "--v=0", f"--window-size={size}"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*args, page.resolve().as_uri() + fragment], capture_output=True, text=True, timeout=180)
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


def with_image_check(html_path: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    out.write_text(html_path.read_text().replace("</body>", _CHECK + "</body>"))
    return out


def test_console_detector_sees_errors(chromium, tmp_path):
    """The checks below can fail: a script error and a broken image are seen."""
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><body><img src='data:image/png;base64,AAAA'>"
                   "<script>undefinedFunction()</script></body></html>")
    dom, console = render(chromium, with_image_check(bad, tmp_path / "bad2.html"), tmp_path / "c")
    assert any("undefinedFunction" in line for line in console), console
    assert 'data-images-bad="1"' in dom


@pytest.fixture(scope="module")
def demo(tmp_path_factory, sample_dicom):
    """``medflow demo``: the bundled sample (STS_008, STS_025), default config, no clinical table."""
    from flows.pipeline import pipeline

    ws = tmp_path_factory.mktemp("demo") / "ws"
    summary = pipeline(PipelineConfig(source=str(sample_dicom), workspace=str(ws)))
    return {"summary": summary, "ws": ws, "report": ws / summary["report"],
            "discovery": json.loads((ws / summary["discovery"]).read_text())}


def test_demo_places_the_sample_patients_with_no_skipped_stage(demo):
    html = demo["report"].read_text()
    assert "skipped" not in html.lower()
    res = demo["discovery"]
    assert res["mode"] == "placed"
    assert len(res["patients"]) == 2
    for key, p in res["patients"].items():
        assert 0.0 <= p["risk"] <= 1.0 and len(p["risk_ci"]) == 2
        assert p["similar"] and all(s["patient_key"].startswith("STS-C") for s in p["similar"])
        assert p["survival_group"] in ("high", "low")
        assert p["rules_fired"]["en"] and p["rules_fired"]["zh"]
        assert f"id='patient-{key}'" in html
    # the imaging sections stay: one overlay per volume
    assert html.count("class='fig'") + html.count('class="fig"') >= 6


def test_report_renders_in_chromium_with_plots_and_no_console_output(demo, chromium, tmp_path):
    page = with_image_check(demo["report"], tmp_path / "report.html")
    dom, console = render(chromium, page, tmp_path / "c")
    assert console == [], console
    for plot in ("roc", "calibration", "km", "tree"):
        assert re.search(rf'data-plot="{plot}"[^>]*src="data:image/png;base64,[A-Za-z0-9+/]{{200}}', dom), plot
    ok = int(re.search(r'data-images-ok="(\d+)"', dom).group(1))
    bad = int(re.search(r'data-images-bad="(\d+)"', dom).group(1))
    assert bad == 0 and ok >= 6 + 4
    # each patient's plots: the cohort's drawing (kept once in the page) under the patient's marker
    for plot, drawing in (("risk", "mf-risk"), ("km-patient", "mf-km-")):
        uses = re.findall(rf'<svg class="plot" data-plot="{plot}"[^>]*>.*?<use href="#({drawing}[a-z-]*)"', dom)
        assert len(uses) == 2, plot
        for id_ in set(uses):
            assert len(re.findall(rf'<image id="{id_}"[^>]*href="data:image/png;base64,[A-Za-z0-9+/]{{200}}', dom)) == 1
    key = next(iter(demo["discovery"]["patients"]))
    shot = tmp_path / "patient.png"
    _dom, console = render(chromium, demo["report"], tmp_path / "s", fragment=f"#patient-{key}", screenshot=shot)
    assert console == [] and shot.stat().st_size > 10_000
