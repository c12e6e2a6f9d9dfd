"""The rule condition language: a small, safe subset of Python expressions over named metrics.

Rules are data written by people who are not reviewing hfault's code, so conditions are parsed with
``ast`` into a whitelist of node types and evaluated by this module's own walker: no ``eval``, no
attribute access, no subscripts, no comprehensions, only the functions in :data:`FUNCTIONS`.

Values are numbers, booleans, strings, ``None`` (a metric that was not measured) and
:class:`Series` (a metric over the measured steps). Arithmetic and comparisons apply elementwise
to series; ``None`` propagates through arithmetic and makes a comparison false, so a rule never
fires on a metric that was not measured. Aggregates (``last``, ``max``, ``count``, ``streak``...)
turn a series into a number; a condition must end as a single boolean.
"""

from __future__ import annotations

import ast
import math
import operator
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hfault.numbers import is_number


class ExprError(ValueError):
    """A malformed expression or one that uses something outside the whitelist."""


@dataclass(frozen=True)
class Series:
    """A metric over the measured steps; ``None`` where it was not measured."""

    steps: tuple[int, ...]
    values: tuple[Any, ...]

    def __post_init__(self) -> None:
        if len(self.steps) != len(self.values):
            raise ValueError("steps and values differ in length")

    def present(self) -> list[tuple[int, Any]]:
        return [(s, v) for s, v in zip(self.steps, self.values, strict=True) if v is not None]


# ------------------------------------------------------------------ elementwise helpers
def _lift(fn: Callable[..., Any], *args: Any) -> Any:
    """Apply ``fn`` elementwise when any argument is a series (all series must be aligned)."""
    series = [a for a in args if isinstance(a, Series)]
    if not series:
        return fn(*args)
    steps = series[0].steps
    if any(s.steps != steps for s in series):
        raise ExprError("series over different steps cannot be combined")
    rows = zip(*[a.values if isinstance(a, Series) else [a] * len(steps) for a in args],
               strict=True)
    return Series(steps, tuple(fn(*row) for row in rows))


def _arith(op: Callable[[Any, Any], Any]) -> Callable[[Any, Any], Any]:
    def apply(a: Any, b: Any) -> Any:
        if a is None or b is None:
            return None
        if not (is_number(a) and is_number(b)):
            raise ExprError(f"arithmetic needs numbers, got {type(a).__name__} and "
                            f"{type(b).__name__}")
        try:
            out = op(float(a), float(b))
        except ZeroDivisionError:
            return None
        except OverflowError:
            return math.inf
        return None if isinstance(out, complex) else out  # (-8) ** 0.5

    return apply


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def apply(a: Any, b: Any) -> bool:
        if op in (operator.eq, operator.ne):
            return bool(op(a, b))
        if a is None or b is None:
            return False
        if is_number(a) and is_number(b):
            if (isinstance(a, float) and math.isnan(a)) or (isinstance(b, float) and math.isnan(b)):
                return False
            return bool(op(a, b))
        if isinstance(a, str) and isinstance(b, str):
            return bool(op(a, b))
        raise ExprError(f"cannot order {type(a).__name__} and {type(b).__name__}")

    return apply


def _truth(x: Any) -> bool:
    return bool(x) if x is not None else False


_BINOPS: dict[type, Callable[[Any, Any], Any]] = {
    ast.Add: _arith(operator.add),
    ast.Sub: _arith(operator.sub),
    ast.Mult: _arith(operator.mul),
    ast.Div: _arith(operator.truediv),
    ast.Pow: _arith(operator.pow),
    ast.Mod: _arith(operator.mod),
}
_CMPOPS: dict[type, Callable[[Any, Any], bool]] = {
    ast.Lt: _compare(operator.lt),
    ast.LtE: _compare(operator.le),
    ast.Gt: _compare(operator.gt),
    ast.GtE: _compare(operator.ge),
    ast.Eq: _compare(operator.eq),
    ast.NotEq: _compare(operator.ne),
}


# ------------------------------------------------------------------ functions
def _values(x: Any) -> list[Any]:
    if isinstance(x, Series):
        return [v for v in x.values if v is not None]
    return [] if x is None else [x]


def _nums(x: Any) -> list[float]:
    return [float(v) for v in _values(x) if is_number(v) and not math.isnan(v)]


def _agg(fn: Callable[[list[float]], float]) -> Callable[..., Any]:
    def apply(*args: Any) -> Any:
        if not args:
            raise ExprError("needs at least one argument")
        if len(args) == 1:
            values = _nums(args[0])
        else:  # max(a, b, ...): over numbers, elementwise over series
            return _lift(
                lambda *row: fn([float(v) for v in row]) if all(map(is_number, row)) else None,
                *args,
            )
        return fn(values) if values else None

    return apply


def _last(x: Any) -> Any:
    values = _values(x)
    return values[-1] if values else None


def _first(x: Any) -> Any:
    values = _values(x)
    return values[0] if values else None


def _count(x: Any) -> int:
    return sum(1 for v in _values(x) if v is True)


def _any(x: Any) -> bool:
    return any(v is True for v in _values(x))


def _all(x: Any) -> bool:
    values = _values(x)
    return bool(values) and all(v is True for v in values)


def _streak(x: Any) -> int:
    """Longest run of consecutive measured steps where the condition held."""
    best = run = 0
    for v in x.values if isinstance(x, Series) else [x]:
        run = run + 1 if v is True else 0
        best = max(best, run)
    return best


def _step_of(pick: Callable[[Sequence[float]], float]) -> Callable[[Any], Any]:
    def apply(x: Any) -> Any:
        if not isinstance(x, Series):
            raise ExprError("step_of_max/step_of_min need a series")
        pairs = [(s, float(v)) for s, v in x.present() if is_number(v) and not math.isnan(v)]
        if not pairs:
            return None
        target = pick([v for _, v in pairs])
        return next(s for s, v in pairs if v == target)

    return apply


def _first_step(x: Any) -> Any:
    if not isinstance(x, Series):
        raise ExprError("first_step needs a series condition")
    return next((s for s, v in zip(x.steps, x.values, strict=True) if v is True), None)


def _last_step(x: Any) -> Any:
    if not isinstance(x, Series):
        raise ExprError("last_step needs a series")
    return next((s for s, v in reversed(list(zip(x.steps, x.values, strict=True)))
                 if v is not None and v is not False), None)


def _where(cond: Any, x: Any) -> Any:
    return _lift(lambda c, v: v if c is True else None, cond, x)


def _exists(x: Any) -> bool:
    return bool(_values(x))


def _unary(fn: Callable[[float], float]) -> Callable[[Any], Any]:
    def scalar(v: Any) -> Any:
        if v is None:
            return None
        if not is_number(v):
            raise ExprError(f"expected a number, got {type(v).__name__}")
        try:
            return fn(float(v))
        except (ValueError, ZeroDivisionError):
            return None

    return lambda x: _lift(scalar, x)


def _isfinite(x: Any) -> Any:
    return _lift(lambda v: is_number(v) and math.isfinite(v), x)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _fraction(frac: Any) -> float:
    if not is_number(frac) or not math.isfinite(frac):
        raise ExprError(f"a fraction must be a finite number, not {frac!r}")
    return float(frac)


def _share(x: Any, frac: Any, tail: bool) -> list[float]:
    values = _nums(x)
    if not values or not is_number(frac):
        return []
    frac = _fraction(frac)
    k = max(1, int(len(values) * float(frac)))
    return values[-k:] if tail else values[:k]


def _mean_first(x: Any, frac: Any) -> Any:
    values = _share(x, frac, tail=False)
    return statistics.fmean(values) if values else None


def _mean_last(x: Any, frac: Any) -> Any:
    values = _share(x, frac, tail=True)
    return statistics.fmean(values) if values else None


def _tail(x: Any, frac: Any) -> Series:
    if not isinstance(x, Series) or not is_number(frac):
        raise ExprError("tail(series, fraction) needs a series and a number")
    frac = _fraction(frac)
    k = max(1, int(len(x.steps) * float(frac))) if x.steps else 0
    return Series(x.steps[len(x.steps) - k :], x.values[len(x.values) - k :])


def _spikes(x: Any, factor: Any, window: Any) -> int:
    """Points above ``factor`` × the median of the ``window`` measured points before them."""
    values = _nums(x)
    if is_number(window) and not math.isfinite(window):
        raise ExprError("spikes(series, factor, window): the window must be finite")
    w = int(window) if is_number(window) else 5
    if not is_number(factor) or w < 1:
        raise ExprError("spikes(series, factor, window) needs numbers")
    return sum(
        1 for i in range(w, len(values))
        if values[i] > float(factor) * statistics.median(values[i - w : i])
    )


def _rolling_median(x: Any, window: Any) -> Series:
    """At each measured point, the median of it and the ``window − 1`` measured points before
    (the first ``window − 1`` points have none): a level that one noisy batch cannot move."""
    if not isinstance(x, Series) or not is_number(window) or not math.isfinite(window):
        raise ExprError("rolling_median(series, window) needs a series and a finite number")
    w = max(1, int(window))
    pairs = [(s, float(v)) for s, v in x.present() if is_number(v) and math.isfinite(v)]
    steps = tuple(s for s, _ in pairs[w - 1 :])
    values = tuple(statistics.median(v for _, v in pairs[i - w + 1 : i + 1])
                   for i in range(w - 1, len(pairs)))
    return Series(steps, values)


CUSUM_MIN_SIGMA = 0.05
"""Floor of the calibration standard deviation: a flat calibration window (sd ≈ 0) would make any
wobble an alarm. Series passed through log10 make it a 12% relative change."""


def _cusum(x: Any, k: Any, h: Any, calib: Any) -> tuple[Any, Any, float]:
    """One-sided (upward) CUSUM of a series standardized against its first ``calib`` measured
    values: S_t = max(0, S_{t-1} + z_t − k), alarm when S_t > h. Returns (onset, alarm, max S):
    the onset is the first step of the run of positive S that reached the alarm."""
    if not isinstance(x, Series) or not all(is_number(v) and math.isfinite(v)
                                            for v in (k, h, calib)):
        raise ExprError("cusum_*(series, k, h, calib) needs a series and three finite numbers")
    pairs = [(s, float(v)) for s, v in x.present() if is_number(v) and math.isfinite(v)]
    n = int(calib)
    if n < 2 or len(pairs) <= n:
        return None, None, 0.0
    ref = [v for _, v in pairs[:n]]
    mu, sigma = statistics.fmean(ref), max(statistics.stdev(ref), CUSUM_MIN_SIGMA)
    total, top, start = 0.0, 0.0, None
    for step, v in pairs[n:]:
        total = max(0.0, total + (v - mu) / sigma - float(k))
        top = max(top, total)
        if total == 0.0:
            start = None
        elif start is None:
            start = step
        if total > float(h):
            return start, step, top
    return None, None, top


FUNCTIONS: dict[str, tuple[Callable[..., Any], str]] = {
    "last": (_last, "last measured value of a series"),
    "first": (_first, "first measured value of a series"),
    "max": (_agg(max), "largest value of a series, or of several numbers (elementwise on series)"),
    "min": (_agg(min), "smallest value of a series, or of several numbers (elementwise on series)"),
    "mean": (_agg(statistics.fmean), "mean of a series' measured values"),
    "median": (_agg(_median), "median of a series' measured values"),
    "count": (_count, "number of measured steps where a condition held"),
    "any": (_any, "whether a condition held at any measured step"),
    "all": (_all, "whether a condition held at every measured step (false if none measured)"),
    "streak": (_streak, "longest run of consecutive snapshots where a condition held (an "
               "unmeasured snapshot breaks the run)"),
    "step_of_max": (_step_of(max), "the step where a series is largest"),
    "step_of_min": (_step_of(min), "the step where a series is smallest"),
    "first_step": (_first_step, "the first step where a condition held"),
    "last_step": (_last_step, "the last step where a series was measured (or a condition held)"),
    "where": (_where, "where(cond, series): the series, kept only where cond held"),
    "mean_first": (_mean_first, "mean_first(series, frac): mean of the first share of values"),
    "mean_last": (_mean_last, "mean_last(series, frac): mean of the last share of values"),
    "tail": (_tail, "tail(series, frac): the last share of a series"),
    "spikes": (_spikes, "spikes(series, factor, window): values above factor × the median "
               "of the window before them"),
    "rolling_median": (_rolling_median, "rolling_median(series, window): at each point the "
                       "median of the last `window` measured values (a level, not a spike)"),
    "cusum_onset": (lambda x, k, h, c: _cusum(x, k, h, c)[0],
                    "cusum_onset(series, k, h, calib): the step where an upward regime change "
                    "began (one-sided CUSUM standardized on the first calib values), or none"),
    "cusum_alarm": (lambda x, k, h, c: _cusum(x, k, h, c)[1],
                    "cusum_alarm(series, k, h, calib): the step where that CUSUM crossed h"),
    "cusum_max": (lambda x, k, h, c: _cusum(x, k, h, c)[2],
                  "cusum_max(series, k, h, calib): the largest CUSUM statistic reached"),
    "exists": (_exists, "whether a value (or any value of a series) was measured"),
    "isfinite": (_isfinite, "whether a number is finite (elementwise on series)"),
    "abs": (_unary(abs), "absolute value (elementwise on series)"),
    "log10": (_unary(math.log10), "base-10 logarithm; none for values ≤ 0"),
    "log2": (_unary(math.log2), "base-2 logarithm; none for values ≤ 0"),
    "sqrt": (_unary(math.sqrt), "square root; none for negative values"),
}


# ------------------------------------------------------------------ parsing
_ALLOWED = (
    ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub, ast.UAdd,
    ast.BinOp, ast.Compare, ast.Call, ast.Name, ast.Load, ast.Constant, ast.IfExp,
    ast.Tuple, ast.List, ast.In, ast.NotIn, *tuple(_BINOPS), *tuple(_CMPOPS),
)


@dataclass(frozen=True)
class Expr:
    """A parsed, validated expression; ``names`` are the free variables it reads."""

    source: str
    tree: ast.Expression
    names: frozenset[str]

    def __call__(self, env: Mapping[str, Any]) -> Any:
        return _eval(self.tree.body, env)


def parse(source: str, known: Iterable[str] | None = None) -> Expr:
    """Parse ``source``; with ``known``, also reject names that are neither known nor functions."""
    if not isinstance(source, str) or not source.strip():
        raise ExprError("empty expression")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise ExprError(f"syntax error: {exc.msg} (column {exc.offset})") from None
    names: set[str] = set()
    for node in ast.walk(tree):
        if not isinstance(node, _ALLOWED):
            raise ExprError(f"{type(node).__name__} is not allowed in a rule expression")
        if isinstance(node, ast.Call):
            if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS:
                what = node.func.id if isinstance(node.func, ast.Name) else "that call"
                raise ExprError(f"unknown function {what!r}; known: {', '.join(FUNCTIONS)}")
            if node.keywords:
                raise ExprError("keyword arguments are not allowed")
        elif isinstance(node, ast.Name) and not _is_call_target(tree, node):
            names.add(node.id)
        elif isinstance(node, ast.Constant) and not isinstance(
            node.value, (int, float, str, bool, type(None))
        ):
            raise ExprError(f"constant {node.value!r} is not allowed")
    if known is not None:
        unknown = sorted(names - set(known))
        if unknown:
            raise ExprError(f"unknown name(s): {', '.join(unknown)}")
    return Expr(source.strip(), tree, frozenset(names))


def _is_call_target(tree: ast.AST, name: ast.Name) -> bool:
    return any(isinstance(n, ast.Call) and n.func is name for n in ast.walk(tree))


# ------------------------------------------------------------------ evaluation
def _eval(node: ast.AST, env: Mapping[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        if node.id not in env:
            raise ExprError(f"unknown name {node.id!r}")
        return env[node.id]
    if isinstance(node, (ast.Tuple, ast.List)):
        return [_eval(e, env) for e in node.elts]
    if isinstance(node, ast.UnaryOp):
        value = _eval(node.operand, env)
        if isinstance(node.op, ast.Not):
            return _lift(lambda v: not _truth(v), value)
        sign = -1.0 if isinstance(node.op, ast.USub) else 1.0

        def signed(v: Any) -> Any:
            if v is None:
                return None
            if not is_number(v):
                raise ExprError(f"cannot negate {type(v).__name__}")
            return sign * float(v)

        return _lift(signed, value)
    if isinstance(node, ast.BinOp):
        return _lift(_BINOPS[type(node.op)], _eval(node.left, env), _eval(node.right, env))
    if isinstance(node, ast.BoolOp):
        values = [_eval(v, env) for v in node.values]
        if isinstance(node.op, ast.And):
            return _lift(lambda *row: all(_truth(v) for v in row), *values)
        return _lift(lambda *row: any(_truth(v) for v in row), *values)
    if isinstance(node, ast.Compare):
        return _eval_compare(node, env)
    if isinstance(node, ast.IfExp):
        test = _eval(node.test, env)
        if isinstance(test, Series):
            raise ExprError("a series cannot choose a branch: use any()/all()/last()")
        return _eval(node.body if _truth(test) else node.orelse, env)
    if isinstance(node, ast.Call):
        assert isinstance(node.func, ast.Name)
        fn = FUNCTIONS[node.func.id][0]
        try:
            return fn(*[_eval(a, env) for a in node.args])
        except TypeError as exc:
            raise ExprError(f"{node.func.id}(): {exc}") from None
    raise ExprError(f"{type(node).__name__} is not allowed")  # pragma: no cover - parse() guards


def _eval_compare(node: ast.Compare, env: Mapping[str, Any]) -> Any:
    left = _eval(node.left, env)
    result: Any = True
    for op, right_node in zip(node.ops, node.comparators, strict=True):
        right = _eval(right_node, env)
        if isinstance(op, (ast.In, ast.NotIn)):
            if not isinstance(right, list):
                raise ExprError("'in' needs a tuple or list on its right")
            hit = _lift(lambda v, r=right: v in r, left)
            part = hit if isinstance(op, ast.In) else _lift(lambda h: not h, hit)
        else:
            part = _lift(_CMPOPS[type(op)], left, right)
        result = part if result is True else _lift(lambda a, b: a and b, result, part)
        left = right
    return result


def as_bool(value: Any, what: str = "condition") -> bool:
    """A condition's final value: a boolean, or ``None`` (unmeasured) read as false."""
    if isinstance(value, Series):
        raise ExprError(f"the {what} is a series: reduce it with any(), all(), last() or count()")
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    raise ExprError(f"the {what} must be true or false, not {value!r}")
