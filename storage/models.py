"""Fitted models as files: joblib, with the library versions needed to load them back."""

from __future__ import annotations

import pathlib
from typing import Any


def save_model(path: str | pathlib.Path, model: Any) -> None:
    """Serialise a fitted scikit-learn pipeline (joblib, compressed)."""
    import joblib

    joblib.dump(model, str(path), compress=3)


def load_model(path: str | pathlib.Path) -> Any:
    """Load a model written by :func:`save_model`. Only load files from workspaces you trust (pickle)."""
    import joblib

    return joblib.load(str(path))
