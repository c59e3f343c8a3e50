"""IBSI-1 digital phantom: all consensus reference values, through the CLI body.

``run_features`` reads the phantom NIfTI files, extracts with preset
``ibsi-digital-phantom`` and writes the CSV; the CSV is compared with
``ibsi1_digital_phantom_reference_keys.csv`` by the IBSI rule (computed value
rounded to 3 significant digits, then ``|value - reference| <= tolerance``).
Rows are looked up by ``code_key`` (``GYBY:ITBB``); the three rows whose code the
manual does not give uniquely are looked up by IBSI short name and aggregation.
"""

from __future__ import annotations

import collections
import math
import pathlib

import pandas as pd
import pytest

from imaging.features import is_close_ibsi
from medflow.features_cli import PROVENANCE_COLUMNS, run_features

PHANTOM = "ibsi1_digital_phantom"


@pytest.fixture(scope="module")
def phantom_csv(shared_data: pathlib.Path, tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("phantom") / "features.csv"
    root = shared_data / PHANTOM / "nifti"
    run_features(root / "image" / "phantom.nii.gz", root / "mask" / "mask.nii.gz", preset="ibsi-digital-phantom",
                 settings_file=None, roi=None, out=out)
    assert out.is_file()
    return pd.read_csv(out, keep_default_na=False)


@pytest.fixture(scope="module")
def reference(shared_data: pathlib.Path) -> pd.DataFrame:
    return pd.read_csv(shared_data / PHANTOM / "ibsi1_digital_phantom_reference_keys.csv", keep_default_na=False)


def test_rule_rounds_to_three_significant_digits() -> None:
    assert is_close_ibsi(0.04114, 0.0411, 0.0)
    assert not is_close_ibsi(0.04116, 0.0411, 0.0)
    assert is_close_ibsi(-0.35546, -0.355, 0.0)
    assert is_close_ibsi(1196.0, 1200.0, 10.0)  # 1196 -> 1.20e3
    assert not is_close_ibsi(1184.0, 1200.0, 10.0)  # 1184 -> 1.18e3, 20 away
    assert not is_close_ibsi(float("nan"), 1.0, 1.0)


def test_csv_layout(phantom_csv: pd.DataFrame) -> None:
    for col in ["family", "feature", "aggregation", "ibsi_code", "value", *PROVENANCE_COLUMNS]:
        assert col in phantom_csv.columns, col
    codes = [c for c in phantom_csv["ibsi_code"] if c]
    assert len(codes) == len(set(codes)), "ibsi_code must identify a row"
    assert not phantom_csv.duplicated(["feature", "aggregation"]).any()
    assert phantom_csv["image_digest"].str.startswith("sha256:").all()
    assert phantom_csv["mask_digest"].str.startswith("sha256:").all()
    assert phantom_csv["settings_digest"].str.startswith("sha256:").all()
    assert (phantom_csv["settings_name"] == "ibsi-digital-phantom").all()


def test_digital_phantom_all_reference_values(phantom_csv: pd.DataFrame, reference: pd.DataFrame) -> None:
    by_code = {c: float(v) for c, v in zip(phantom_csv["ibsi_code"], phantom_csv["value"], strict=True) if c}
    by_key = {(f, a): float(v) for f, a, v in
              zip(phantom_csv["feature"], phantom_csv["aggregation"], phantom_csv["value"], strict=True)}
    matched: collections.Counter[str] = collections.Counter()
    total: collections.Counter[str] = collections.Counter()
    skipped: collections.Counter[str] = collections.Counter()
    failures = []
    for row in reference.itertuples(index=False):
        family = row.family_short
        if str(row.value) == "":
            skipped[family] += 1
            continue
        total[family] += 1
        if row.code_key:
            value = by_code.get(row.code_key)
        else:
            value = by_key.get((row.key.split(":")[0], row.agg_token))
        ref, tol = float(row.value), float(row.tolerance)
        if value is None:
            failures.append(f"{row.key} ({row.code_key or 'no code'}): missing")
        elif is_close_ibsi(value, ref, tol):
            matched[family] += 1
        else:
            failures.append(f"{row.key} ({row.code_key}): got {value!r}, reference {ref} +- {tol}")
    report = ", ".join(f"{f} {matched[f]}/{total[f]}" for f in total)
    print(f"\nIBSI-1 digital phantom: {sum(matched.values())}/{sum(total.values())} matched "
          f"({report}); {sum(skipped.values())} rows without consensus value skipped")
    assert sum(total.values()) + sum(skipped.values()) == len(reference) == 482
    assert not failures, "\n".join(failures)
    assert sum(matched.values()) == 482


def test_phantom_values_are_finite(phantom_csv: pd.DataFrame) -> None:
    bad = phantom_csv[[not math.isfinite(float(v)) for v in phantom_csv["value"]]]
    assert bad.empty, bad[["feature", "aggregation", "value"]].to_string()
