"""PS3.15 Table E.1-1 loaded from the packaged JSON (Innolitics dicom-standard, 2024b).

Each row becomes a :class:`Rule`: the Basic Profile action and, per option column,
the option action. Tags are matched exactly, through repeating-group wildcards
(``(50XX,XXXX)``, ``(60XX,3000)``: ``X`` is any hex digit) or, for the row
``(GGGG,EEEE) WHERE GGGG IS ODD``, as "any private attribute".
"""

from __future__ import annotations

import functools
import importlib.resources
import json
import re
from dataclasses import dataclass, field

TABLE_FILE = "confidentiality_profile_attributes.json"
#: option keys of the JSON that medflow implements, mapped to DeidOptions field names
OPTION_COLUMNS = {
    "rtnLongModifDatesOpt": "retain_longitudinal_modified_dates",
    "rtnPatCharsOpt": "retain_patient_characteristics",
    "cleanDescOpt": "clean_descriptors",
    "rtnSafePrivOpt": "retain_safe_private",
}
BASIC_ACTIONS = frozenset({"X", "Z", "D", "K", "C", "U", "X/Z", "X/D", "Z/D", "X/Z/D", "X/Z/U*"})
_TAG_RE = re.compile(r"^\(([0-9A-Fa-fXx]{4}),([0-9A-Fa-fXx]{4})\)$")


@dataclass(frozen=True)
class Rule:
    """One row of Table E.1-1."""

    tag: str  # as printed in the table, e.g. "(0010,0010)" or "(60XX,3000)"
    name: str
    basic: str  # Basic Profile action
    options: dict[str, str] = field(default_factory=dict)  # JSON option column -> action
    mask: int = 0xFFFFFFFF  # bits of the tag that must equal ``value``
    value: int = 0
    private: bool = False  # the "(GGGG,EEEE) WHERE GGGG IS ODD" row

    def matches(self, tag: int) -> bool:
        if self.private:
            return bool((tag >> 16) & 1)
        return (tag & self.mask) == self.value

    @property
    def is_wildcard(self) -> bool:
        return self.private or self.mask != 0xFFFFFFFF


@dataclass(frozen=True)
class Profile:
    rules: tuple[Rule, ...]
    exact: dict[int, Rule]
    wildcards: tuple[Rule, ...]
    private: Rule | None

    def rule_for(self, tag: int) -> Rule | None:
        """The row that governs ``tag`` (exact match first, then repeating groups); private -> private row."""
        tag = int(tag)
        if (tag >> 16) & 1:
            return self.private
        r = self.exact.get(tag)
        if r is not None:
            return r
        for w in self.wildcards:
            if w.matches(tag):
                return w
        return None


def parse_rule(row: dict) -> Rule:
    """One JSON row -> :class:`Rule` (raises ValueError on an unknown tag form or action)."""
    basic = row["basicProfile"]
    if basic not in BASIC_ACTIONS:
        raise ValueError(f"unknown Basic Profile action {basic!r} for {row['tag']}")
    options = {k: v for k, v in row.items() if k.endswith("Opt")}
    tag = row["tag"]
    if tag.upper().startswith("(GGGG,EEEE)"):
        return Rule(tag=tag, name=row["name"], basic=basic, options=options, private=True, mask=0, value=0)
    m = _TAG_RE.match(tag)
    if not m:
        raise ValueError(f"unparseable tag {tag!r} in Table E.1-1")
    hexits = (m.group(1) + m.group(2)).upper()
    mask = int("".join("0" if c == "X" else "F" for c in hexits), 16)
    value = int("".join("0" if c == "X" else c for c in hexits), 16)
    return Rule(tag=tag, name=row["name"], basic=basic, options=options, mask=mask, value=value)


def table_text() -> str:
    """The packaged table's JSON text."""
    return importlib.resources.files("storage.deid").joinpath(TABLE_FILE).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=1)
def load_profile() -> Profile:
    """Parse the packaged Table E.1-1 once."""
    rows = json.loads(table_text())
    rules = tuple(parse_rule(r) for r in rows)
    exact = {r.value: r for r in rules if not r.is_wildcard}
    wild = tuple(r for r in rules if r.is_wildcard and not r.private)
    private = next((r for r in rules if r.private), None)
    return Profile(rules=rules, exact=exact, wildcards=wild, private=private)
