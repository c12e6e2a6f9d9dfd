"""The rule condition language (hfault.rules.expr): semantics, series, None, and the whitelist."""

from __future__ import annotations

import builtins
import inspect
import math
import re
from typing import Any

import pytest

from hfault.rules import expr as expr_module
from hfault.rules.expr import FUNCTIONS, ExprError, Series, as_bool, parse

NAN = float("nan")
INF = float("inf")


def ev(source: str, **env: Any) -> Any:
    return parse(source)(env)


def same(actual: Any, expected: Any) -> bool:
    """Equal, and of the same kind (True is not 1.0, 3 is not 3.0)."""
    return actual == expected and type(actual) is type(expected)


# ------------------------------------------------------------------ scalars
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("1 + 2", 3.0),
        ("7 - 10", -3.0),
        ("2 * 3.5", 7.0),
        ("7 / 2", 3.5),
        ("2 ** 10", 1024.0),
        ("7 % 4", 3.0),
        ("-3 + 1", -2.0),
        ("+2", 2.0),
        ("1 + 2 * 3", 7.0),
        ("(1 + 2) * 3", 9.0),
        ("2 ** -1", 0.5),
        ("1 < 2", True),
        ("2 <= 2", True),
        ("3 > 4", False),
        ("3 >= 4", False),
        ("2 == 2.0", True),
        ("2 != 2", False),
        ("'a' < 'b'", True),
        ("'x' == 'x'", True),
        ("'x' != 'y'", True),
        ("1 < 2 < 3", True),
        ("1 < 3 < 2", False),
        ("3 < 1 < 2", False),
        ("True and False", False),
        ("True or False", True),
        ("not False", True),
        ("not 0", True),
        ("not 1", False),
        ("1 and 2", True),  # and/or give booleans, not Python's operand
        ("0 or 0", False),
        ("0 or 5", True),
        ("1 > 0 and 2 > 1 and 3 > 2", True),
        ("1 > 0 and 2 > 1 and 3 > 4", False),
        ("'s'", "s"),
        ("None", None),
        ("[1, 'a']", [1, "a"]),
    ],
)
def test_scalar_semantics(source: str, expected: Any) -> None:
    assert same(ev(source), expected), ev(source)


def test_names_read_the_environment() -> None:
    assert ev("loss / ratio", loss=3.0, ratio=2) == 1.5
    assert ev("optimizer == 'Adam'", optimizer="Adam") is True
    with pytest.raises(ExprError, match="unknown name 'q'"):
        ev("q + 1")


def test_overflow_is_infinity() -> None:
    assert ev("10.0 ** 400") == math.inf


@pytest.mark.parametrize("source", ["1 / 0", "0 / 0", "5 % 0", "0 ** -1", "x / 0"])
def test_division_by_zero_is_none(source: str) -> None:
    assert ev(source, x=2.0) is None


def test_series_division_by_zero_is_none_per_step() -> None:
    x = Series((1, 2), (1.0, 2.0))
    assert ev("x / 0", x=x) == Series((1, 2), (None, None))
    assert ev("x / (x - 1)", x=x) == Series((1, 2), (None, 2.0))


@pytest.mark.parametrize("source", ["'a' + 1", "True + 1", "'a' * 3", "x - 1"])
def test_arithmetic_needs_numbers(source: str) -> None:
    with pytest.raises(ExprError, match="arithmetic needs numbers"):
        ev(source, x="text")


@pytest.mark.parametrize("source", ["'a' < 1", "True > 0", "[1] < [2]"])
def test_ordering_needs_comparable_values(source: str) -> None:
    with pytest.raises(ExprError, match="cannot order"):
        ev(source)


@pytest.mark.parametrize("source", ["n > 0", "n < 0", "n >= n", "n == n", "0 <= n"])
def test_nan_compares_false(source: str) -> None:
    assert ev(source, n=NAN) is False


# ------------------------------------------------------------------ None (not measured)
@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("m + 1", None),
        ("2 * m", None),
        ("m / 2", None),
        ("m ** 2", None),
        ("-m", None),
        ("abs(m)", None),
        ("log10(m)", None),
        ("sqrt(m)", None),
        ("last(m)", None),
        ("first(m)", None),
        ("max(m)", None),
        ("mean(m)", None),
        ("max(m, 1)", None),
        ("m > 1", False),
        ("m < 1", False),
        ("m >= 0", False),
        ("m <= m", False),
        ("1 < m", False),
        ("m in (1, 2)", False),
        ("exists(m)", False),
        ("isfinite(m)", False),
        ("count(m)", 0),
        ("any(m)", False),
        ("all(m)", False),
        ("streak(m)", 0),
        ("not m", True),
        ("m and True", False),
        ("m or True", True),
    ],
)
def test_none_propagates(source: str, expected: Any) -> None:
    assert same(ev(source, m=None), expected), ev(source, m=None)


def test_none_inside_a_series() -> None:
    x = Series((1, 2, 3), (1.0, None, 3.0))
    assert ev("x + 1", x=x) == Series((1, 2, 3), (2.0, None, 4.0))
    assert ev("x > 2", x=x) == Series((1, 2, 3), (False, False, True))
    assert ev("x < 2", x=x) == Series((1, 2, 3), (True, False, False))
    assert ev("x > m", x=x, m=None) == Series((1, 2, 3), (False, False, False))


@pytest.mark.parametrize(
    "series",
    [Series((), ()), Series((1, 2), (None, None))],
    ids=["empty", "unmeasured"],
)
def test_aggregates_of_nothing(series: Series) -> None:
    assert ev("all(x)", x=series) is False
    assert ev("all(x > 0)", x=series) is False
    assert ev("any(x)", x=series) is False
    assert ev("count(x)", x=series) == 0
    assert ev("exists(x)", x=series) is False
    for fn in ("last", "first", "max", "min", "mean", "median", "step_of_max", "step_of_min"):
        assert ev(f"{fn}(x)", x=series) is None, fn
    assert ev("mean_first(x, 0.5)", x=series) is None
    assert ev("mean_last(x, 0.5)", x=series) is None
    assert ev("last_step(x)", x=series) is None


# ------------------------------------------------------------------ if/else and in
@pytest.mark.parametrize(("c", "expected"), [(True, 1), (False, 2), (None, 2), (3, 1), (0, 2)])
def test_if_else(c: Any, expected: int) -> None:
    assert same(ev("1 if c else 2", c=c), expected)


def test_if_else_evaluates_only_the_chosen_branch() -> None:
    assert ev("1 if True else undefined_name") == 1
    assert ev("undefined_name if False else 'lo'") == "lo"
    with pytest.raises(ExprError, match="unknown name 'undefined_name'"):
        ev("1 if False else undefined_name")


def test_a_series_cannot_choose_a_branch() -> None:
    with pytest.raises(ExprError, match="series cannot choose a branch"):
        ev("1 if x > 0 else 2", x=Series((1,), (1.0,)))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("2 in (1, 2, 3)", True),
        ("4 in (1, 2, 3)", False),
        ("4 not in (1, 2)", True),
        ("2 not in (1, 2)", False),
        ("'adam' in ('adam', 'adamw')", True),
        ("o in ['SGD', 'Adam']", True),
        ("o not in ('SGD',)", True),
        ("2.0 in (1, 2)", True),
    ],
)
def test_in_with_a_tuple_or_list(source: str, expected: bool) -> None:
    assert same(ev(source, o="Adam"), expected)


def test_in_is_elementwise_on_a_series() -> None:
    x = Series((1, 2, 3), (1.0, None, 3.0))
    assert ev("x in (1.0, 3.0)", x=x) == Series((1, 2, 3), (True, False, True))
    assert ev("x not in (1.0,)", x=x) == Series((1, 2, 3), (False, True, True))


def test_in_needs_a_tuple_or_list() -> None:
    with pytest.raises(ExprError, match="'in' needs a tuple or list"):
        ev("2 in 3")
    with pytest.raises(ExprError, match="'in' needs a tuple or list"):
        ev("'a' in 'abc'")


# ------------------------------------------------------------------ series, elementwise
A = Series((1, 2, 3), (1.0, 4.0, 2.0))
B = Series((1, 2, 3), (2.0, 2.0, 2.0))


@pytest.mark.parametrize(
    ("source", "values"),
    [
        ("a + b", (3.0, 6.0, 4.0)),
        ("a * 2", (2.0, 8.0, 4.0)),
        ("10 - a", (9.0, 6.0, 8.0)),
        ("a / b", (0.5, 2.0, 1.0)),
        ("a ** 2", (1.0, 16.0, 4.0)),
        ("a % 3", (1.0, 1.0, 2.0)),
        ("-a", (-1.0, -4.0, -2.0)),
        ("a > b", (False, True, False)),
        ("a >= 2", (False, True, True)),
        ("a == 4", (False, True, False)),
        ("a != 4", (True, False, True)),
        ("1 < a < 3", (False, False, True)),
        ("not (a > 1)", (True, False, False)),
        ("a > 1 and b > 1", (False, True, True)),
        ("a > 3 or b < 0", (False, True, False)),
        ("a > 3 or True", (True, True, True)),
        ("max(a, b)", (2.0, 4.0, 2.0)),
        ("min(a, b, 1.5)", (1.0, 1.5, 1.5)),
        ("abs(-a)", (1.0, 4.0, 2.0)),
        ("log2(a)", (0.0, 2.0, 1.0)),
        ("sqrt(a * 4)", (2.0, 4.0, math.sqrt(8.0))),
    ],
)
def test_elementwise_on_series(source: str, values: tuple[Any, ...]) -> None:
    out = ev(source, a=A, b=B)
    assert isinstance(out, Series)
    assert out.steps == (1, 2, 3)
    assert out.values == values
    assert all(type(v) is type(e) for v, e in zip(out.values, values, strict=True))


def test_series_over_different_steps_do_not_combine() -> None:
    with pytest.raises(ExprError, match="different steps"):
        ev("a + c", a=A, c=Series((1, 2, 4), (1.0, 1.0, 1.0)))


def test_series_needs_aligned_steps_and_values() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        Series((1, 2), (1.0,))
    assert Series((1, 2, 3), (1.0, None, 3.0)).present() == [(1, 1.0), (3, 3.0)]


# ------------------------------------------------------------------ aggregates
S = Series((10, 20, 30, 40, 50), (3.0, 1.0, 4.0, 1.0, 5.0))
GAPS = Series((1, 2, 3, 4), (None, 2.0, 7.0, None))


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("last(s)", 5.0),
        ("first(s)", 3.0),
        ("last(g)", 7.0),
        ("first(g)", 2.0),
        ("last(2)", 2),
        ("max(s)", 5.0),
        ("min(s)", 1.0),
        ("max(g)", 7.0),
        ("mean(s)", 2.8),
        ("mean(g)", 4.5),
        ("median(s)", 3.0),
        ("median(g)", 4.5),
        ("max(1, 2, 3)", 3.0),
        ("min(3, 7)", 3.0),
        ("max(4)", 4.0),
        ("count(s > 2)", 3),
        ("count(s > 9)", 0),
        ("count(s)", 0),  # counts true values, not numbers
        ("count(True)", 1),
        ("any(s > 4)", True),
        ("any(s > 5)", False),
        ("all(s > 0)", True),
        ("all(s > 1)", False),
        ("all(True)", True),
        ("streak(s > 0)", 5),
        ("streak(s > 2)", 1),
        ("streak(s < 4.5)", 4),
        ("streak(s > 9)", 0),
        ("streak(c)", 3),
        ("step_of_max(s)", 50),
        ("step_of_min(s)", 20),  # ties: the first
        ("step_of_max(g)", 3),
        ("step_of_min(g)", 2),
        ("first_step(s > 2)", 10),
        ("first_step(s > 3.5)", 30),
        ("first_step(s > 9)", None),
        ("last_step(s > 2)", 50),
        ("last_step(s < 2)", 40),
        ("last_step(s > 9)", None),
        ("last_step(g)", 3),
        ("last_step(s)", 50),
        ("max(where(s < 4, s))", 3.0),
        ("exists(s)", True),
        ("exists(g)", True),
        ("exists(0)", True),
        ("exists(False)", True),
        ("isfinite(2)", True),
        ("isfinite(i)", False),
        ("isfinite(n)", False),
        ("isfinite('a')", False),
        ("abs(-2.5)", 2.5),
        ("log10(1000)", 3.0),
        ("log10(0)", None),
        ("log10(-1)", None),
        ("log2(8)", 3.0),
        ("log2(0.5)", -1.0),
        ("log2(0)", None),
        ("sqrt(16)", 4.0),
        ("sqrt(-4)", None),
        ("mean_first(s, 0.4)", 2.0),
        ("mean_last(s, 0.4)", 3.0),
        ("mean_first(s, 0.1)", 3.0),  # at least one value
        ("mean_last(s, 0.1)", 5.0),
        ("mean_first(s, 1)", 2.8),
        ("mean_last(g, 0.5)", 7.0),
        ("mean_first(s, 'a')", None),
        ("max(tail(s, 0.6))", 5.0),
        ("min(tail(s, 0.6))", 1.0),
        ("spikes(s, 1.5, 1)", 2),  # 4 > 1.5*1 and 5 > 1.5*1
        ("spikes(s, 1.5, 5)", 0),  # no point has 5 before it
        ("spikes(s, 3, 1)", 2),
        ("spikes(s, 4.5, 1)", 1),
    ],
)
def test_functions(source: str, expected: Any) -> None:
    env = {"s": S, "g": GAPS, "i": INF, "n": NAN,
           "c": Series(tuple(range(6)), (True, True, False, True, True, True))}
    assert same(parse(source)(env), expected), parse(source)(env)


def test_where_keeps_values_where_the_condition_held() -> None:
    assert ev("where(s > 2, s)", s=S) == Series(S.steps, (3.0, None, 4.0, None, 5.0))
    assert ev("where(s > 9, s)", s=S) == Series(S.steps, (None,) * 5)


def test_isfinite_is_elementwise() -> None:
    x = Series((1, 2, 3, 4, 5), (1.0, INF, NAN, None, -INF))
    assert ev("isfinite(x)", x=x) == Series((1, 2, 3, 4, 5), (True, False, False, False, False))
    assert ev("all(isfinite(x))", x=x) is False
    assert ev("count(isfinite(x))", x=x) == 1


def test_unary_functions_are_elementwise_and_keep_none() -> None:
    x = Series((1, 2, 3, 4), (100.0, None, -1.0, 0.0))
    assert ev("log10(x)", x=x) == Series((1, 2, 3, 4), (2.0, None, None, None))
    assert ev("sqrt(x)", x=x) == Series((1, 2, 3, 4), (10.0, None, None, 0.0))
    assert ev("abs(x)", x=x) == Series((1, 2, 3, 4), (100.0, None, 1.0, 0.0))


def test_aggregates_skip_nan() -> None:
    x = Series((1, 2, 3), (NAN, 2.0, 1.0))
    assert ev("max(x)", x=x) == 2.0
    assert ev("mean(x)", x=x) == 1.5
    assert ev("step_of_max(x)", x=x) == 2
    assert ev("last(x)", x=x) == 1.0
    assert math.isnan(ev("first(x)", x=x))  # first/last return values as measured


def test_tail_keeps_the_last_share() -> None:
    assert ev("tail(s, 0.4)", s=S) == Series((40, 50), (1.0, 5.0))
    assert ev("tail(s, 0.1)", s=S) == Series((50,), (5.0,))
    assert ev("tail(s, 1)", s=S) == S
    assert ev("tail(e, 0.5)", e=Series((), ())) == Series((), ())
    loss = Series(tuple(range(6)), (9, 9, 9, 1, 1, 3))
    assert ev("spikes(tail(loss, 0.5), 1.5, 1)", loss=loss) == 1  # only (1, 1, 3) is looked at


def test_spikes_against_the_median_of_the_window() -> None:
    flat = (1.0,) * 5
    one = Series(tuple(range(8)), (*flat, 3.0, 1.0, 1.0))
    two = Series(tuple(range(8)), (*flat, 3.0, 3.0, 1.0))
    assert ev("spikes(x, 1.5, 5)", x=one) == 1
    assert ev("spikes(x, 1.5, 5)", x=two) == 2  # median of (1,1,1,1,3) is still 1
    assert ev("spikes(x, 3, 5)", x=two) == 0  # strictly above factor × median
    assert ev("spikes(x, 1.5, 'w')", x=two) == 2  # a non-number window means 5


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("step_of_max(3)", "need a series"),
        ("step_of_min(m)", "need a series"),
        ("first_step(True)", "first_step needs a series"),
        ("last_step(3)", "last_step needs a series"),
        ("tail(3, 0.5)", "tail\\(series, fraction\\)"),
        ("tail(s, 'a')", "tail\\(series, fraction\\)"),
        ("spikes(s, 'a', 5)", "spikes\\(series, factor, window\\)"),
        ("spikes(s, 1.5, 0)", "spikes\\(series, factor, window\\)"),
        ("abs('a')", "expected a number"),
        ("last(1, 2)", "last\\(\\)"),
        ("where(s)", "where\\(\\)"),
        ("tail(s)", "tail\\(\\)"),
    ],
)
def test_function_misuse_is_an_expr_error(source: str, problem: str) -> None:
    with pytest.raises(ExprError, match=problem):
        ev(source, s=S, m=None)


def test_function_table_is_the_documented_set() -> None:
    expected = {
        "last", "first", "max", "min", "mean", "median", "count", "any", "all", "streak",
        "step_of_max", "step_of_min", "first_step", "last_step", "where", "exists", "isfinite",
        "abs", "log10", "log2", "sqrt", "mean_first", "mean_last", "tail", "spikes",
        "cusum_onset", "cusum_alarm", "cusum_max", "rolling_median",
    }
    assert set(FUNCTIONS) == expected
    assert all(doc for _, doc in FUNCTIONS.values())


# ------------------------------------------------------------------ cusum
def _cusum_reference(values, k, h, calib):
    """Page's one-sided CUSUM written out plainly, for comparison."""
    ref = values[:calib]
    mu = sum(ref) / calib
    sd = (sum((v - mu) ** 2 for v in ref) / (calib - 1)) ** 0.5
    sigma = max(sd, 0.05)
    s, top, start = 0.0, 0.0, None
    for i in range(calib, len(values)):
        s = max(0.0, s + (values[i] - mu) / sigma - k)
        top = max(top, s)
        start = None if s == 0 else (start if start is not None else i)
        if s > h:
            return start, i, top
    return None, None, top


@pytest.mark.parametrize("seed", range(5))
def test_cusum_matches_the_plain_reference(seed: int) -> None:
    import random

    rng = random.Random(seed)
    values = [rng.gauss(0, 0.1) for _ in range(8)]
    values += [0.1 * i + rng.gauss(0, 0.1) for i in range(12)]
    steps = tuple(10 * (i + 1) for i in range(len(values)))
    env = {"x": Series(steps, tuple(values))}
    start, alarm, top = _cusum_reference(values, 1.0, 8.0, 4)
    assert ev("cusum_max(x, 1, 8, 4)", **env) == pytest.approx(top)
    assert ev("cusum_onset(x, 1, 8, 4)", **env) == (None if start is None else steps[start])
    assert ev("cusum_alarm(x, 1, 8, 4)", **env) == (None if alarm is None else steps[alarm])


def test_cusum_needs_more_than_the_calibration_window() -> None:
    env = {"x": Series((1, 2, 3, 4), (0.0, 0.0, 0.0, 9.0))}
    assert ev("cusum_onset(x, 1, 8, 4)", **env) is None
    assert ev("cusum_onset(x, 1, 2, 3)", **env) == 4  # floor 0.05: z = 180
    with pytest.raises(ExprError):
        ev("cusum_onset(1, 1, 8, 4)", **env)


# ------------------------------------------------------------------ as_bool
@pytest.mark.parametrize(("value", "expected"), [(True, True), (False, False), (None, False)])
def test_as_bool(value: Any, expected: bool) -> None:
    assert as_bool(value) is expected


def test_as_bool_rejects_a_series() -> None:
    with pytest.raises(ExprError, match="the condition is a series"):
        as_bool(Series((1,), (True,)))
    with pytest.raises(ExprError, match=r"the escalate\.error is a series"):
        as_bool(ev("x > 0", x=Series((1,), (1.0,))), "escalate.error")


@pytest.mark.parametrize("value", [1, 0, 0.0, 2.5, "yes", "", [True]])
def test_as_bool_rejects_non_booleans(value: Any) -> None:
    with pytest.raises(ExprError, match="must be true or false"):
        as_bool(value)


# ------------------------------------------------------------------ the whitelist
@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("x.__class__", "Attribute is not allowed"),
        ("x.__class__.__bases__", "Attribute is not allowed"),
        ("not x.real", "Attribute is not allowed"),
        ("x[0]", "Subscript is not allowed"),
        ("x[1:2]", "Subscript is not allowed"),
        ("__import__('os')", "unknown function '__import__'"),
        ("__import__('os').system('true')", "unknown function"),
        ("eval('1')", "unknown function 'eval'"),
        ("exec('1')", "unknown function 'exec'"),
        ("open('/etc/passwd')", "unknown function 'open'"),
        ("getattr(x, 'real')", "unknown function 'getattr'"),
        ("float('nan')", "unknown function 'float'"),
        ("'a'.join(x)", "unknown function 'that call'"),
        ("(lambda: 1)()", "unknown function 'that call'"),
        ("lambda: 1", "Lambda is not allowed"),
        ("[a for a in x]", "ListComp is not allowed"),
        ("{a for a in x}", "SetComp is not allowed"),
        ("{a: 1 for a in x}", "DictComp is not allowed"),
        ("any(a > 1 for a in x)", "GeneratorExp is not allowed"),
        ("max(x, key=abs)", "keyword arguments are not allowed"),
        ("max(**x)", "keyword arguments are not allowed"),
        ("f'{x}'", "JoinedStr is not allowed"),
        ("f'{x!r:>10}'", "JoinedStr is not allowed"),
        ("(y := 1)", "NamedExpr is not allowed"),
        ("max(*x)", "Starred is not allowed"),
        ("b'abc'", "constant b'abc' is not allowed"),
        ("...", "constant Ellipsis is not allowed"),
        ("1j", "constant 1j is not allowed"),
        ("x is None", "Is is not allowed"),
        ("{1: 2}", "Dict is not allowed"),
        ("{1, 2}", "Set is not allowed"),
        ("x // 2", "FloorDiv is not allowed"),
        ("x & 1", "BitAnd is not allowed"),
        ("x << 1", "LShift is not allowed"),
        ("~x", "Invert is not allowed"),
        ("await x", "Await is not allowed"),
        ("(yield x)", "Yield is not allowed"),
        ("import os", "syntax error"),
        ("1; 2", "syntax error"),
        ("1 +", "syntax error"),
        ("", "empty expression"),
        ("   ", "empty expression"),
    ],
)
def test_whitelist_rejects_at_parse_time(source: str, problem: str) -> None:
    with pytest.raises(ExprError, match=re.escape(problem)):
        parse(source)


def test_parse_rejects_a_non_string() -> None:
    with pytest.raises(ExprError, match="empty expression"):
        parse(None)  # type: ignore[arg-type]


def test_unknown_names_with_known() -> None:
    with pytest.raises(ExprError, match=re.escape("unknown name(s): b, c")):
        parse("a + b > c", known=["a"])
    with pytest.raises(ExprError, match=re.escape("unknown name(s): open")):
        parse("open", known=["x"])
    with pytest.raises(ExprError, match=re.escape("unknown name(s): max")):
        parse("max", known=[])  # a function's name read as a value is a name
    ok = parse("max(a) > 1 if a_known else min(a)", known=["a", "a_known"])
    assert ok.names == frozenset({"a", "a_known"})  # functions are not names


def test_names_and_source() -> None:
    e = parse("  last(loss) > ratio * x  ")
    assert e.names == frozenset({"loss", "ratio", "x"})
    assert e.source == "last(loss) > ratio * x"


def test_parse_never_reaches_python_builtins(monkeypatch: pytest.MonkeyPatch) -> None:
    def forbidden(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("Python's eval/exec was called")

    monkeypatch.setattr(builtins, "eval", forbidden)
    monkeypatch.setattr(builtins, "exec", forbidden)
    e = parse("open")  # without known=, just a free name
    assert e.names == frozenset({"open"})
    with pytest.raises(ExprError, match="unknown name 'open'"):
        e({})  # not the builtin open
    assert e({"open": 7}) == 7
    assert parse("__builtins__")({"__builtins__": "mine"}) == "mine"
    with pytest.raises(ExprError, match="unknown name '__builtins__'"):
        parse("__builtins__")({})
    assert ev("max(x * 2, 1) if exists(x) else 0", x=Series((1, 2), (0.25, 3.0))) == Series(
        (1, 2), (1.0, 6.0)
    )


def test_module_source_calls_no_eval_exec_or_compile() -> None:
    source = inspect.getsource(expr_module)
    assert re.search(r"(?<![\w.])(eval|exec|compile)\s*\(", source) is None


# ------------------------------------------------------------------ regressions and known bugs
def test_fractional_power_of_a_negative_number_is_none() -> None:
    assert ev("(-8) ** 0.5") is None


def test_negating_a_string_is_an_expr_error() -> None:
    with pytest.raises(ExprError):
        ev("-'a'")


@pytest.mark.parametrize("source", ["max()", "mean()"])
def test_aggregate_without_arguments_is_an_expr_error(source: str) -> None:
    with pytest.raises(ExprError):
        ev(source)


@pytest.mark.parametrize(
    "source", ["tail(s, inf)", "mean_first(s, inf)", "mean_last(s, inf)", "spikes(s, 1.5, nan)"]
)
def test_non_finite_fraction_or_window_is_an_expr_error(source: str) -> None:
    with pytest.raises(ExprError):
        ev(source, s=S, inf=INF, nan=NAN)


def test_rolling_median_is_a_level_that_one_spike_cannot_move() -> None:
    x = Series((1, 2, 3, 4, 5, 6), (1.0, 9.0, 1.0, 1.0, None, 5.0))
    got = ev("rolling_median(x, 3)", x=x)
    assert got.steps == (3, 4, 6) and got.values == (1.0, 1.0, 1.0)
    assert ev("max(rolling_median(x, 1))", x=x) == 9.0
    with pytest.raises(ExprError):
        ev("rolling_median(1, 3)")
