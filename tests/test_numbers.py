"""hfault.numbers: the one reader, JSON encoding and formatter of report numbers; and a NaN score,
which is ranked explicitly (after every known score of its severity), never read as 0."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from hfault.findings import Finding, rank, ranking_score
from hfault.numbers import as_float, clean, decode, encode, finite, fmt, is_number
from hfault.rules import evaluate
from hfault.rules.rule import load_rule
from tests.rules.fixture_report import build

# ---------------------------------------------------------------- reading


@pytest.mark.parametrize(("value", "expected"), [
    (3, 3.0), (2.5, 2.5), (-0.0, -0.0), ("inf", math.inf), ("-inf", -math.inf),
    (math.inf, math.inf), (torch.tensor(0.25), 0.25), (torch.tensor([4.0]), 4.0),
    (np.float32(1.5), 1.5), (np.int64(7), 7.0),
])
def test_as_float_reads_numbers_their_json_spellings_and_scalar_tensors(value, expected) -> None:
    x = as_float(value)
    assert isinstance(x, float) and x == expected


@pytest.mark.parametrize("value", [
    None, True, False, "1.5", "NaN", "", [1.0], {"x": 1}, torch.tensor([1.0, 2.0]),
    torch.tensor(True), np.array([1.0, 2.0]),
])
def test_as_float_rejects_what_is_not_one_number(value) -> None:
    assert as_float(value) is None


def test_nan_is_kept_by_as_float_and_dropped_by_finite() -> None:
    for nan in ("nan", math.nan, torch.tensor(math.nan)):
        x = as_float(nan)
        assert x is not None and math.isnan(x)  # a NaN gradient norm is the finding
        assert finite(nan) is None  # a non-finite loss difference is missing
    assert finite("inf") is None and finite(-math.inf) is None
    assert finite(2) == 2.0 and finite("2") is None and finite(True) is None


def test_is_number_counts_nan_and_not_bools() -> None:
    assert is_number(1) and is_number(1.5) and is_number(math.nan) and is_number(-math.inf)
    assert not is_number(True) and not is_number("1") and not is_number(None)


# ---------------------------------------------------------------- JSON


def test_encode_decode_round_trip_through_strict_json() -> None:
    data = {"a": [math.nan, math.inf, -math.inf, 1.5, 0, None, "nan", True],
            "b": (2.0, {"c": -math.inf}), 3: math.nan}
    text = json.dumps(clean(data), allow_nan=False)  # strict JSON: would raise on a raw NaN
    back = json.loads(text)
    assert back["a"][:3] == ["nan", "inf", "-inf"] and back["b"] == [2.0, {"c": "-inf"}]
    assert back["3"] == "nan"
    assert back["a"][3:] == [1.5, 0, None, "nan", True]
    decoded = [decode(v) for v in back["a"]]
    assert math.isnan(decoded[0]) and decoded[1] == math.inf and decoded[2] == -math.inf
    assert decoded[3:6] == [1.5, 0, None] and decoded[7] is True
    for x in (math.nan, math.inf, -math.inf, 0.1, 1e300):
        y = as_float(json.loads(json.dumps(encode(x))))
        assert y is not None and (y == x or (math.isnan(x) and math.isnan(y)))


def test_clean_writes_keys_json_cannot_as_strings() -> None:
    assert json.loads(json.dumps(clean({(1, "a"): math.inf}))) == {"(1, 'a')": "inf"}


# ---------------------------------------------------------------- formatting


@pytest.mark.parametrize(("value", "expected"), [
    (None, "–"), (True, "yes"), (False, "no"), (12345, "12345"), (0.000123456, "0.000123"),
    (3.14159, "3.14"), (1234.5, "1.23e+03"), (-0.0, "0"), (-1e-12, "-1e-12"),
    (math.nan, "nan"), (math.inf, "inf"), (-math.inf, "-inf"), ("nan", "nan"), ("q_proj", "q_proj"),
])
def test_fmt(value, expected) -> None:
    assert fmt(value) == expected


def test_fmt_digits_and_missing_variant() -> None:
    assert fmt(3.14159, 2) == "3.1" and fmt(2 / 3, 6) == "0.666667"
    assert fmt(None, missing="n/a") == "n/a" and fmt(0.5, missing="n/a") == "0.5"


# ---------------------------------------------------------------- NaN scores


def _finding(severity: str, score: float, component: str) -> Finding:
    return Finding("HF900", "test", severity, "m", component=component, score=score)


def test_ranking_score_keeps_unknown_and_infinite_scores() -> None:
    assert ranking_score(2.0, 0.5) == 1.0
    assert ranking_score(-3.0) == 0.0 and ranking_score(2.0, -1.0) == 0.0
    assert ranking_score(2.0, 7.0) == 2.0  # confidence clamped to 1
    assert ranking_score(math.inf) == math.inf and ranking_score(-math.inf) == 0.0
    assert ranking_score(math.inf, 0.0) == 0.0  # no confidence, not inf·0 = NaN
    for score, confidence in ((math.nan, 1.0), (None, 1.0), (1.0, math.nan), (1.0, None)):
        assert math.isnan(ranking_score(score, confidence))


def test_a_nan_score_ranks_after_every_known_score_of_its_severity() -> None:
    findings = [_finding("warning", math.nan, "a"), _finding("warning", 0.0, "z"),
                _finding("error", math.nan, "b"), _finding("warning", math.inf, "c"),
                _finding("warning", 1.0, "d"), _finding("info", 5.0, "e")]
    ordered = rank(findings)
    assert [f.component for f in ordered] == ["b", "c", "d", "z", "a", "e"]
    assert [f.rank for f in ordered] == [1, 2, 3, 4, 5, 6]
    assert ordered[4].to_dict()["score"] == "nan"  # said, not written as 0
    assert ordered[1].to_dict()["score"] == "inf"
    json.dumps([f.to_dict() for f in ordered], allow_nan=False)


NAN_SCORE_RULE = """\
id = "HF901"
name = "init-scale-test"
scope = "component"
severity = "warning"
category = "initialization"
summary = "A test rule whose score is the component's initialization scale."
rationale = "A test rule."
condition = "any(grad_rms > 1)"
score = "init_scale"
message = "{component} fired"
"""


def test_engine_keeps_a_nan_rule_score_and_ranks_it_last(tmp_path: Path) -> None:
    """A rule whose score expression gives NaN once scored 0 and tied with findings measured to be
    barely past their threshold; now its finding says "nan" and ranks after them."""
    path = tmp_path / "HF901-init-scale-test.toml"
    path.write_text(NAN_SCORE_RULE, encoding="utf-8")
    rule = load_rule(path)
    scales = {"a_nan": "nan", "b_zero": 0.0, "c_two": 2.0, "d_inf": "inf"}
    report = build({"components": [
        {"name": name, "init": {"scale": scale}, "metrics": {"grad_rms": 5.0}}
        for name, scale in scales.items()]})
    result = evaluate(report, [rule])
    assert not result.errors
    ordered = [f.to_dict() for f in rank(result.findings)]
    assert [(f["component"], f["score"]) for f in ordered] == [
        ("d_inf", "inf"), ("c_two", 2.0), ("b_zero", 0.0), ("a_nan", "nan")]
