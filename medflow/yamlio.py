"""Reading YAML option files and turning validation errors into messages that name the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError


def read_yaml_mapping(path: str | Path, *, what: str, error: type[ValueError] = ValueError,
                      example: str = "") -> dict[str, Any]:
    """The top-level mapping of a YAML file (an empty file is an empty mapping).

    Raises ``FileNotFoundError`` for a missing file and ``error`` (naming the file) for
    invalid YAML or a top level that is not a mapping.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{what} does not exist: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise error(f"{p}: not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        hint = f" ({example})" if example else ""
        raise error(f"{p}: expected a mapping of {what} fields{hint}, got {type(data).__name__}")
    return data


def validation_lines(exc: ValidationError) -> list[str]:
    """One line per pydantic error: ``field 'a.b': message (got value)``; model-level errors as they are."""
    lines = []
    for err in exc.errors():
        loc = ".".join(str(part) for part in err.get("loc", ()))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        lines.append(f"field '{loc}': {msg} (got {err.get('input')!r})" if loc else msg)
    return lines
