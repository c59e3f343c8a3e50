"""The en/zh template table: both languages everywhere, same numbers, Chinese is Chinese."""

from __future__ import annotations

import re
import string

import pytest

from knowledge.language import LANGS, TEMPLATES, both, render

CJK = re.compile(r"[\u4e00-\u9fff]")


def _fields(template: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(template) if f}


@pytest.mark.parametrize("key", sorted(TEMPLATES))
def test_every_key_has_both_languages_with_the_same_fields(key):
    assert set(TEMPLATES[key]) == set(LANGS)
    assert _fields(TEMPLATES[key]["en"]) == _fields(TEMPLATES[key]["zh"])


def test_chinese_output_has_cjk_and_the_same_numbers():
    text = both("verdict.not_shown", auc=0.6123, lo=0.41, hi=0.83, clin=0.55, clo=0.32, chi=0.77, p=0.214)
    numbers = re.compile(r"\d+\.\d+")
    assert numbers.findall(text["en"]) == numbers.findall(text["zh"]) == ["0.61", "0.41", "0.83", "0.55", "0.32",
                                                                          "0.77", "0.214"]
    assert CJK.search(text["zh"]) and not CJK.search(text["en"])
    rule = both("rule.line", conditions="a > 1", klass="x", n=5, correct=4)
    assert rule["en"] == "IF a > 1 THEN x (5 cases, 4 of 5 correct)"
    assert CJK.search(rule["zh"]) and "5" in rule["zh"] and "4" in rule["zh"]
    with pytest.raises(ValueError, match="lang"):
        render("rule.and", "fr")
