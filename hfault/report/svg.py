"""Inline SVG chart primitives for the HTML report: line chart, heatmap, node-link drawing and
spectral-interval chart. Plain strings, no dependencies and no JavaScript, so a report renders
offline, prints, and survives being mailed around as one file.

Every text that reaches the SVG goes through :func:`esc`: component names, labels and tooltips come
from the user's script and are untrusted. Values are report numbers
(:func:`hfault.numbers.as_float`): floats, ints, ``None`` for missing, and ``"nan"``/``"inf"``/
``"-inf"`` for non-finite ones; a missing value is a gap in a line, a non-finite one a red band.
"""

from __future__ import annotations

import html
import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hfault.numbers import fmt

PALETTE = ("#4e79a7", "#f28e2b", "#59a14f", "#e15759", "#76b7b2", "#edc948", "#b07aa1",
           "#ff9da7", "#9c755f", "#bab0ac")
BAD = "#d62728"
CHAR_W = 6.2  # average glyph width at the 11px chart font, for layout without a browser
MAX_LINE_POINTS = 1500


def esc(text: Any) -> str:
    """Escape for HTML and XML text and attributes (reports hold untrusted strings)."""
    return html.escape(str(text), quote=True)


def _f(v: float) -> str:
    """Coordinates with two decimals: small files, no visible rounding."""
    return f"{v:.2f}".rstrip("0").rstrip(".")


def text_width(text: str, size: float = 11) -> float:
    return len(text) * CHAR_W * size / 11


def clip(text: str, width: float, size: float = 11) -> str:
    """Text cut to about width pixels, with an ellipsis (the full text goes in a tooltip)."""
    if text_width(text, size) <= width:
        return text
    keep = max(int(width / (CHAR_W * size / 11)) - 1, 1)
    return text[:keep] + "…"


# ---------------------------------------------------------------- scales


def nice_step(span: float, count: int) -> float:
    """A 1/2/5×10^k step that cuts span into about count intervals."""
    raw = span / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    for m in (1, 2, 5, 10):
        if raw <= m * mag * 1.0000001:
            return m * mag
    return 10 * mag


@dataclass
class Scale:
    """Maps a data domain onto pixels: linear, log10, or symlog (linear within ±linthresh)."""

    lo: float
    hi: float
    a: float
    b: float
    kind: str = "linear"
    linthresh: float = 1.0
    integer: bool = False

    def _t(self, v: float) -> float:
        if self.kind == "log":
            return math.log10(max(v, 1e-300))
        if self.kind == "symlog":
            return math.copysign(math.log10(1 + abs(v) / self.linthresh), v)
        return v

    def __call__(self, v: float) -> float:
        t0, t1 = self._t(self.lo), self._t(self.hi)
        if t1 == t0:
            return (self.a + self.b) / 2
        v = min(max(v, self.lo), self.hi)
        return self.a + (self._t(v) - t0) / (t1 - t0) * (self.b - self.a)

    def ticks(self, count: int = 4) -> list[float]:
        if self.kind == "log":
            k0, k1 = math.floor(math.log10(self.lo)), math.ceil(math.log10(self.hi))
            stride = max(1, math.ceil((k1 - k0 + 1) / 6))
            return [10.0**k for k in range(k0, k1 + 1, stride) if self.lo <= 10.0**k <= self.hi]
        if self.kind == "symlog":
            return _symlog_ticks(self.lo, self.hi, self.linthresh)
        if self.hi <= self.lo:
            return [self.lo]
        step = nice_step(self.hi - self.lo, count)
        if self.integer:
            step = max(1.0, round(step))
        first = math.ceil(self.lo / step - 1e-9)
        out = []
        k = first
        while k * step <= self.hi + step * 1e-9:
            out.append(round(k * step / step) * step)
            k += 1
        return out


def _symlog_ticks(lo: float, hi: float, c: float) -> list[float]:
    k0 = math.ceil(math.log10(c) - 1e-9)
    top = max(abs(lo), abs(hi))
    powers = [10.0**k for k in range(k0, math.floor(math.log10(top) + 1e-9) + 1)] if top > 0 else []
    while len(powers) > 4:
        powers = powers[1::2] if len(powers) % 2 == 0 else powers[::2]
    ticks = [-p for p in reversed(powers) if -p >= lo] + ([0.0] if lo <= 0 <= hi else [])
    return ticks + [p for p in powers if p <= hi]


def y_scale(values: Sequence[float], a: float, b: float, kind: str = "auto") -> Scale:
    """A y scale over the finite values: log when they are all positive and span more than ~1.5
    decades (``kind="auto"``), else linear with a nice, zero-aware domain."""
    vals = [v for v in values if math.isfinite(v)]
    if not vals:
        return Scale(0.0, 1.0, a, b)
    lo, hi = min(vals), max(vals)
    if kind == "auto":
        kind = "log" if lo > 0 and hi / lo > 30 else "linear"
    if kind == "log":
        return Scale(10 ** math.floor(math.log10(lo)), 10 ** math.ceil(math.log10(hi)), a, b, "log")
    if kind == "symlog":
        return symlog_scale(vals, a, b)
    if lo == hi:
        pad = abs(lo) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    if lo > 0 and lo < (hi - lo) * 0.5:  # close enough to 0: show it
        lo = 0.0
    step = nice_step(hi - lo, 4)
    return Scale(math.floor(lo / step + 1e-9) * step, math.ceil(hi / step - 1e-9) * step, a, b)


def symlog_scale(values: Sequence[float], a: float, b: float,
                 anchor: Sequence[float] | None = None) -> Scale:
    """Symlog over values of both signs. The linear zone ±c is the smallest order of magnitude
    among the anchor values (default: all), but no less than 1e-4 of the largest: eigenvalues
    near 0 are noise-sized and should not stretch the axis."""
    mags = [abs(v) for v in (anchor or values) if math.isfinite(v) and v != 0]
    if not mags:
        return Scale(-1.0, 1.0, a, b, "symlog", 1.0)
    top = max([*mags, *(abs(v) for v in values if math.isfinite(v))])
    c = 10 ** math.floor(math.log10(max(min(mags), top * 1e-4)))
    edge = 10 ** math.ceil(math.log10(top) - 1e-9)
    lo = -edge if min(values) < 0 else 0.0
    hi = edge if max(values) > 0 else 0.0
    return Scale(lo, hi, a, b, "symlog", c)


# ---------------------------------------------------------------- line chart


@dataclass
class Series:
    """One line. ``y`` None is a gap; a non-finite y is marked as a red band at its x."""

    label: str
    points: list[tuple[float, float | None]]
    color: str = PALETTE[0]
    dashed: bool = False
    errors: list[float | None] | None = None
    """Optional ± error bar per point (e.g. the trace's standard error)."""


@dataclass
class Mark:
    """A vertical marker at x (a finding's step)."""

    x: float
    label: str
    color: str = BAD


@dataclass
class HLine:
    """A horizontal reference line (r = 1, a rule's threshold)."""

    y: float
    label: str
    color: str = "#555"


@dataclass
class ChartBox:
    width: float = 280
    height: float = 150
    left: float = 48
    right: float = 12
    top: float = 22
    bottom: float = 28
    legend_rows: int = 0

    @property
    def plot(self) -> tuple[float, float, float, float]:
        """x0, y0 (top), x1, y1 (bottom) of the plotting area."""
        return (self.left, self.top, self.width - self.right,
                self.height - self.bottom - 14 * self.legend_rows)


def _svg_open(width: float, height: float, label: str, cls: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="{esc(cls)}" width="{_f(width)}" '
            f'height="{_f(height)}" viewBox="0 0 {_f(width)} {_f(height)}" role="img" '
            f'aria-label="{esc(label)}">')


def _title(text: str, x: float, y: float = 14) -> str:
    return f'<text class="ttl" x="{_f(x)}" y="{_f(y)}">{esc(text)}</text>' if text else ""


def _legend(series: Sequence[Series], x0: float, y: float, width: float) -> tuple[str, int]:
    parts, x, rows = [], x0, 1
    for s in series:
        w = 22 + text_width(s.label, 10) + 12
        if x + w > width and x > x0:
            x, y, rows = x0, y + 14, rows + 1
        dash = ' stroke-dasharray="4 3"' if s.dashed else ""
        parts.append(f'<line x1="{_f(x)}" y1="{_f(y - 3)}" x2="{_f(x + 16)}" y2="{_f(y - 3)}" '
                     f'stroke="{s.color}" stroke-width="2"{dash}/>'
                     f'<text class="lg" x="{_f(x + 20)}" y="{_f(y)}">{esc(s.label)}</text>')
        x += w
    return "".join(parts), rows


def _legend_rows(series: Sequence[Series], x0: float, width: float) -> int:
    return _legend(series, x0, 0, width)[1]


def _decimate(points: list[tuple[float, float | None]]) -> list[tuple[float, float | None]]:
    """At most ~MAX_LINE_POINTS points, keeping each bucket's min and max (spikes stay visible)
    and every gap and non-finite point."""
    if len(points) <= MAX_LINE_POINTS:
        return points
    size = math.ceil(len(points) / (MAX_LINE_POINTS / 2))
    out: list[tuple[float, float | None]] = []
    for i in range(0, len(points), size):
        bucket = points[i : i + size]
        finite = [(x, y) for x, y in bucket if y is not None and math.isfinite(y)]
        odd = [p for p in bucket if p[1] is None or not math.isfinite(p[1])]
        keep = set()
        if finite:
            low, high = min(finite, key=lambda p: p[1]), max(finite, key=lambda p: p[1])
            keep = {low, high}
        out.extend(sorted(keep | set(odd), key=lambda p: p[0]))
    return out


def _bands(xs: Sequence[float]) -> list[tuple[float, float]]:
    """Consecutive integer steps grouped into [first, last] ranges."""
    out: list[tuple[float, float]] = []
    for x in sorted(set(xs)):
        if out and x - out[-1][1] <= 1:
            out[-1] = (out[-1][0], x)
        else:
            out.append((x, x))
    return out


def line_chart(
    series: Sequence[Series],
    *,
    title: str = "",
    width: float = 280,
    height: float = 150,
    y_label: str = "",
    scale: str = "auto",
    hlines: Sequence[HLine] = (),
    marks: Sequence[Mark] = (),
    x_domain: tuple[float, float] | None = None,
    mark_labels: bool = True,
    cls: str = "chart",
) -> str:
    """A line chart over steps. Gaps for missing values, red bands where a value is non-finite,
    dashed verticals at marks (grouped per x) and labelled horizontals at hlines."""
    series = [Series(s.label, _decimate(s.points), s.color, s.dashed, s.errors) for s in series]
    box = ChartBox(width, height, top=36 if title else 20)
    if len(series) > 1:
        box.legend_rows = _legend_rows(series, box.left, width)
        box.height = height = height + 14 * box.legend_rows
    x0, y0, x1, y1 = box.plot
    out = [_svg_open(width, height, title or y_label, cls),
           _title(clip(title, width - x0 - 4, 12), x0)]
    xs = [p[0] for s in series for p in s.points] + [m.x for m in marks]
    finite = [y for s in series for _, y in s.points if y is not None and math.isfinite(y)]
    bad = [x for s in series for x, y in s.points if y is not None and not math.isfinite(y)]
    if not xs or not (finite or bad):
        out.append(f'<rect class="frame" x="{_f(x0)}" y="{_f(y0)}" width="{_f(x1 - x0)}" '
                   f'height="{_f(y1 - y0)}"/><text class="nodata" x="{_f((x0 + x1) / 2)}" '
                   f'y="{_f((y0 + y1) / 2)}">no data</text></svg>')
        return "".join(out)
    lo, hi = x_domain if x_domain else (min(xs), max(xs))
    if hi == lo:
        lo, hi = lo - 1, hi + 1
    sx = Scale(lo, hi, x0, x1, integer=True)
    bars = [y + e for s in series if s.errors for (_, y), e in zip(s.points, s.errors, strict=False)
            if y is not None and e is not None and math.isfinite(y + e)]
    sy = y_scale(finite + bars + [h.y for h in hlines], y1, y0, scale)
    out.append(_axes(sx, sy, box, y_label, y_ticks=bool(finite)))
    if not finite:
        out.append(f'<text class="nodata" x="{_f((x0 + x1) / 2)}" y="{_f((y0 + y1) / 2)}">'
                   "no finite value</text>")
    for a, b in _bands(bad):
        xa, xb = sx(a) - 3, sx(b) + 3
        out.append(f'<rect class="bad" x="{_f(xa)}" y="{_f(y0)}" width="{_f(xb - xa)}" '
                   f'height="{_f(y1 - y0)}"><title>non-finite at step '
                   f'{fmt(a) if a == b else f"{fmt(a)}–{fmt(b)}"}</title></rect>')
    for h in hlines:
        y = sy(h.y)
        out.append(f'<line class="href" x1="{_f(x0)}" x2="{_f(x1)}" y1="{_f(y)}" y2="{_f(y)}" '
                   f'stroke="{h.color}"/><text class="hlbl" x="{_f(x0 + 3)}" y="{_f(y - 3)}" '
                   f'style="fill:{h.color}">{esc(h.label)}</text>')
    out.append(_marks(marks, sx, y0, y1, mark_labels))
    for s in series:
        out.append(_line(s, sx, sy))
    if len(series) > 1:
        out.append(_legend(series, x0, y1 + 30, width)[0])
    out.append("</svg>")
    return "".join(out)


def _axes(sx: Scale, sy: Scale, box: ChartBox, y_label: str, y_ticks: bool = True) -> str:
    x0, y0, x1, y1 = box.plot
    parts = [f'<rect class="frame" x="{_f(x0)}" y="{_f(y0)}" width="{_f(x1 - x0)}" '
             f'height="{_f(y1 - y0)}"/>']
    ticks = sy.ticks() if y_ticks else []
    for t in ticks:
        y = sy(t)
        parts.append(f'<line class="grid" x1="{_f(x0)}" x2="{_f(x1)}" y1="{_f(y)}" y2="{_f(y)}"/>'
                     f'<text class="tick ty" x="{_f(x0 - 4)}" y="{_f(y + 3.5)}">'
                     f"{tick_label(t, ticks, sy.kind)}</text>")
    for t in sx.ticks(4):
        x = sx(t)
        parts.append(f'<line class="ax" x1="{_f(x)}" x2="{_f(x)}" y1="{_f(y1)}" y2="{_f(y1 + 3)}"/>'
                     f'<text class="tick tx" x="{_f(x)}" y="{_f(y1 + 13)}">{fmt(t, 6)}</text>')
    parts.append(f'<text class="axl" x="{_f(x1)}" y="{_f(y1 + 24)}">step</text>')
    if sy.kind != "linear" or y_label:
        note = {"log": " (log)", "symlog": " (symlog)"}.get(sy.kind, "")
        parts.append(f'<text class="axl0" x="4" y="{_f(y0 - 6)}">{esc(y_label)}{note}</text>')
    return "".join(parts)


def tick_label(v: float, ticks: Sequence[float], kind: str = "linear") -> str:
    """Enough digits to tell neighbouring linear ticks apart (3.384, 3.386, not 3.4, 3.4)."""
    if kind != "linear" or len(ticks) < 2 or v == 0:
        return fmt(v, 2)
    step = min(abs(b - a) for a, b in itertools.pairwise(ticks))
    if step <= 0 or abs(v) >= 1e5 or step < 1e-4:
        return fmt(v, 4)
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{v:.{decimals}f}"


def _marks(marks: Sequence[Mark], sx: Scale, y0: float, y1: float, labels: bool = True) -> str:
    grouped: dict[float, list[Mark]] = {}
    for m in marks:
        grouped.setdefault(m.x, []).append(m)
    parts = []
    for x, ms in sorted(grouped.items()):
        px = sx(x)
        label = ", ".join(dict.fromkeys(m.label for m in ms))
        anchor = "end" if px > (sx.a + sx.b) / 2 else "start"
        dx = -3 if anchor == "end" else 3
        text = (f'<text x="{_f(px + dx)}" y="{_f(y0 - 6)}" style="fill:{ms[0].color};'
                f'text-anchor:{anchor}">{esc(label)}</text>' if labels else "")
        parts.append(f'<g class="mark"><title>{esc(label)} at step {fmt(x)}</title>'
                     f'<line x1="{_f(px)}" x2="{_f(px)}" y1="{_f(y0 - 3)}" y2="{_f(y1)}" '
                     f'stroke="{ms[0].color}"/>{text}</g>')
    return "".join(parts)


def _line(s: Series, sx: Scale, sy: Scale) -> str:
    segments: list[list[str]] = [[]]
    dots = []
    errors = s.errors or []
    show_dots = len(s.points) <= 60
    for i, (x, y) in enumerate(s.points):
        if y is None or not math.isfinite(y):
            segments.append([])
            continue
        px, py = sx(x), sy(y)
        segments[-1].append(f"{_f(px)},{_f(py)}")
        err = errors[i] if i < len(errors) else None
        tip = f"{s.label} · step {fmt(x)}: {fmt(y, 4)}" + (f" ± {fmt(err, 2)}" if err else "")
        if err is not None and math.isfinite(err) and err > 0:
            ya, yb = sy(y - err), sy(y + err)
            dots.append(f'<path class="err" d="M{_f(px)} {_f(ya)}V{_f(yb)}M{_f(px - 3)} {_f(ya)}'
                        f'h6M{_f(px - 3)} {_f(yb)}h6" stroke="{s.color}"/>')
        if show_dots:
            dots.append(f'<circle cx="{_f(px)}" cy="{_f(py)}" r="2.4" fill="{s.color}">'
                        f"<title>{esc(tip)}</title></circle>")
    dash = ' stroke-dasharray="5 3"' if s.dashed else ""
    lines = "".join(f'<polyline class="ln" points="{" ".join(seg)}" stroke="{s.color}"{dash}/>'
                    for seg in segments if len(seg) > 1)
    return f'<g><title>{esc(s.label)}</title>{lines}{"".join(dots)}</g>'


# ---------------------------------------------------------------- heatmap


def _lerp_color(stops: Sequence[str], t: float) -> str:
    t = min(max(t, 0.0), 1.0) * (len(stops) - 1)
    i = min(int(t), len(stops) - 2)
    a, b = stops[i], stops[i + 1]
    frac = t - i
    rgb = [round(int(a[k : k + 2], 16) * (1 - frac) + int(b[k : k + 2], 16) * frac)
           for k in (1, 3, 5)]
    return "#" + "".join(f"{c:02x}" for c in rgb)


HEAT = ("#f7fbff", "#c6dbef", "#6baed6", "#2171b5", "#08306b")


def heat_color(value: float, vmax: float) -> str:
    """Sequential blue scale from 0 to vmax."""
    return _lerp_color(HEAT, value / vmax if vmax > 0 else 0.0)


@dataclass
class Cell:
    value: float
    tooltip: str


def heatmap(
    labels: Sequence[str],
    cells: Mapping[tuple[int, int], Cell],
    *,
    title: str,
    vmax: float,
    highlight: frozenset[int] | set[int] = frozenset(),
    legend: str = "",
) -> str:
    """A square matrix of values in [0, vmax] (missing cells blank), labels on the left and on
    top, the value written in the cell when the matrix is small, full text in <title>."""
    n = len(labels)
    cell = 34 if n <= 12 else max(12, 420 // max(n, 1))
    pad = max((text_width(s) for s in labels), default=0) + 14
    left, top = pad, pad * 0.72 + 24
    size = cell * n
    width, height = left + size + 80, top + size + 16
    out = [_svg_open(width, height, title, "chart heat"), _title(title, 4)]
    for i, name in enumerate(labels):
        cls = "hl" if i in highlight else "lbl"
        y = top + cell * i + cell / 2 + 4
        x = left + cell * i + cell / 2
        out.append(f'<text class="{cls}" x="{_f(left - 6)}" y="{_f(y)}" text-anchor="end">'
                   f"{esc(name)}</text>"
                   f'<text class="{cls}" transform="translate({_f(x + 3)},{_f(top - 6)}) '
                   f'rotate(-45)">{esc(name)}</text>')
    for i in range(n):
        for j in range(n):
            x, y = left + cell * j, top + cell * i
            c = cells.get((i, j))
            if i == j or c is None:
                out.append(f'<rect class="empty" x="{_f(x)}" y="{_f(y)}" width="{cell}" '
                           f'height="{cell}"/>')
                continue
            fill = heat_color(c.value, vmax)
            out.append(f'<g><title>{esc(c.tooltip)}</title><rect x="{_f(x)}" y="{_f(y)}" '
                       f'width="{cell}" height="{cell}" fill="{fill}" class="cell"/>')
            if cell >= 30:
                ink = "#fff" if c.value / (vmax or 1) > 0.55 else "#123"
                out.append(f'<text class="val" x="{_f(x + cell / 2)}" y="{_f(y + cell / 2 + 3.5)}"'
                           f' style="fill:{ink}">{f"{c.value:.2f}".lstrip("0")}</text>')
            out.append("</g>")
    out.append(_color_bar(left + size + 18, top, min(size, 180), vmax, legend))
    out.append("</svg>")
    return "".join(out)


def _color_bar(x: float, y: float, h: float, vmax: float, label: str) -> str:
    steps = 24
    parts = [f'<text class="lg" x="{_f(x)}" y="{_f(y - 8)}">{esc(label)}</text>']
    for k in range(steps):
        t = 1 - k / steps
        parts.append(f'<rect x="{_f(x)}" y="{_f(y + h * k / steps)}" width="12" '
                     f'height="{_f(h / steps + 0.5)}" fill="{heat_color(t * vmax, vmax)}"/>')
    parts.append(f'<rect class="frame" x="{_f(x)}" y="{_f(y)}" width="12" height="{_f(h)}"/>'
                 f'<text class="tick" x="{_f(x + 16)}" y="{_f(y + 8)}">{fmt(vmax, 2)}</text>'
                 f'<text class="tick" x="{_f(x + 16)}" y="{_f(y + h)}">0</text>')
    return "".join(parts)


# ---------------------------------------------------------------- node-link


@dataclass
class Node:
    name: str
    tooltip: str = ""
    flagged: bool = False
    on_path: bool = False
    label: str = ""
    """Text next to the node (default: the name)."""

    @property
    def text(self) -> str:
        return self.label or self.name


@dataclass
class Edge:
    source: str
    target: str
    weight: float
    """Drawing weight in [0, 1] (κ / the largest κ)."""
    tooltip: str = ""
    on_path: bool = False


def circle_layout(n: int, cx: float, cy: float, r: float) -> list[tuple[float, float]]:
    """Nodes clockwise from the top: deterministic, and no three nodes are collinear, so no edge
    hides behind another."""
    return [(cx + r * math.cos(-math.pi / 2 + 2 * math.pi * k / n),
             cy + r * math.sin(-math.pi / 2 + 2 * math.pi * k / n)) for k in range(max(n, 0))]


def node_link_width(nodes: Sequence[Node], size: float = 520) -> float:
    """Width of :func:`node_link`'s drawing: room for the longest label on both sides."""
    return size + 2 * max(max((text_width(n.text) for n in nodes), default=0) - 60, 0)


def node_link(nodes: Sequence[Node], edges: Sequence[Edge], *, title: str, uid: str,
              size: float = 520) -> str:
    """Nodes on a circle in the given order; edge width and opacity ∝ weight; flagged nodes red;
    propagation-path edges orange with arrows in path direction (drawn on top)."""
    width = node_link_width(nodes, size)
    height = size + 30
    r = max(size / 2 - 70, 60)
    cx, cy = width / 2, height / 2 + 10
    pos = dict(zip((n.name for n in nodes), circle_layout(len(nodes), cx, cy, r), strict=True))
    out = [_svg_open(width, height, title, "chart graph"), _title(title, 4),
           f'<defs><marker id="{esc(uid)}-arrow" viewBox="0 0 10 10" refX="9" refY="5" '
           'markerWidth="14" markerHeight="14" markerUnits="userSpaceOnUse" '
           'orient="auto-start-reverse">'
           '<path d="M0 0L10 5L0 10z" fill="#e8710a"/></marker></defs>']
    for e in sorted(edges, key=lambda e: (e.on_path, e.weight)):
        if e.source not in pos or e.target not in pos:
            continue
        (xa, ya), (xb, yb) = pos[e.source], pos[e.target]
        if e.on_path:  # stop at the target node's rim so the arrow stays visible
            d = math.hypot(xb - xa, yb - ya) or 1
            xb, yb = xb - (xb - xa) * 11 / d, yb - (yb - ya) * 11 / d
            style = (f'stroke="#e8710a" stroke-width="{_f(2.5 + 5 * e.weight)}" '
                     f'marker-end="url(#{esc(uid)}-arrow)" class="pathedge"')
        else:
            style = (f'stroke="#4e79a7" stroke-width="{_f(0.6 + 7 * e.weight)}" '
                     f'stroke-opacity="{_f(0.2 + 0.65 * e.weight)}"')
        out.append(f'<line x1="{_f(xa)}" y1="{_f(ya)}" x2="{_f(xb)}" y2="{_f(yb)}" {style}>'
                   f"<title>{esc(e.tooltip)}</title></line>")
    for n in nodes:
        x, y = pos[n.name]
        fill = BAD if n.flagged else ("#e8710a" if n.on_path else "#fff")
        out.append(f'<g class="node"><title>{esc(n.tooltip or n.name)}</title>'
                   f'<circle cx="{_f(x)}" cy="{_f(y)}" r="{9 if n.flagged else 7}" fill="{fill}" '
                   f'stroke="{BAD if n.flagged else "#4e79a7"}" stroke-width="2"/>')
        dx, dy = x - cx, y - cy
        d = math.hypot(dx, dy) or 1
        lx, ly = x + dx / d * 14, y + dy / d * 14 + 4
        anchor = "start" if dx / d > 0.2 else ("end" if dx / d < -0.2 else "middle")
        ly += 6 if dy / d > 0.9 else 0
        cls = "hl" if n.flagged else "lbl"
        out.append(f'<text class="{cls}" x="{_f(lx)}" y="{_f(ly)}" text-anchor="{anchor}">'
                   f"{esc(n.text)}</text></g>")
    out.append("</svg>")
    return "".join(out)


# ---------------------------------------------------------------- spectral intervals


@dataclass
class Interval:
    """One step of one block's spectrum: [λmin, λmax] and the mean eigenvalue Tr/n ± SE/n."""

    label: str
    lo: float | None
    hi: float | None
    mid: float | None = None
    mid_err: float | None = None
    tooltip: str = ""


def interval_chart(items: Sequence[Interval], *, title: str, width: float = 360,
                   height: float = 200) -> str:
    """Per step, a bar from λmin to λmax and a dot for the mean eigenvalue with its error bar, on
    a symlog axis (eigenvalues of both signs over many decades)."""
    box = ChartBox(width, height, left=58, top=36, bottom=30)
    x0, y0, x1, y1 = box.plot
    out = [_svg_open(width, height, title, "chart spec"), _title(title, x0)]
    values = [v for it in items for v in (it.lo, it.hi, it.mid) if v is not None
              and math.isfinite(v)]
    if not items or not values:
        out.append(f'<rect class="frame" x="{_f(x0)}" y="{_f(y0)}" width="{_f(x1 - x0)}" '
                   f'height="{_f(y1 - y0)}"/><text class="nodata" x="{_f((x0 + x1) / 2)}" '
                   f'y="{_f((y0 + y1) / 2)}">not measured</text></svg>')
        return "".join(out)
    ends = [v for it in items for v in (it.lo, it.hi) if v is not None and math.isfinite(v)]
    sy = symlog_scale(values, y1, y0, ends or values)
    out.append(f'<rect class="frame" x="{_f(x0)}" y="{_f(y0)}" width="{_f(x1 - x0)}" '
               f'height="{_f(y1 - y0)}"/>')
    for t in sy.ticks():
        y = sy(t)
        out.append(f'<line class="{"zero" if t == 0 else "grid"}" x1="{_f(x0)}" x2="{_f(x1)}" '
                   f'y1="{_f(y)}" y2="{_f(y)}"/><text class="tick ty" x="{_f(x0 - 4)}" '
                   f'y="{_f(y + 3.5)}">{fmt(t, 2)}</text>')
    out.append(f'<text class="axl0" x="4" y="{_f(y0 - 8)}">eigenvalue (symlog, linear '
               f"within ±{fmt(sy.linthresh, 1)})</text>"
               f'<text class="axl" x="{_f(x1)}" y="{_f(y1 + 26)}">step</text>')
    slot = (x1 - x0) / len(items)
    for k, it in enumerate(items):
        x = x0 + slot * (k + 0.5)
        out.append(f'<text class="tick tx" x="{_f(x)}" y="{_f(y1 + 13)}">{esc(it.label)}</text>'
                   f"<g><title>{esc(it.tooltip)}</title>")
        lo, hi = it.lo, it.hi
        if lo is not None and hi is not None and math.isfinite(lo) and math.isfinite(hi):
            ya, yb = sy(lo), sy(hi)
            out.append(f'<rect class="ivl" x="{_f(x - 7)}" y="{_f(min(ya, yb))}" width="14" '
                       f'height="{_f(max(abs(ya - yb), 1.5))}"/>')
        mid, err = it.mid, it.mid_err
        if mid is not None and math.isfinite(mid):
            ym = sy(mid)
            if err is not None and math.isfinite(err) and err > 0:
                out.append(f'<path class="err" stroke="#222" d="M{_f(x + 11)} {_f(sy(mid - err))}'
                           f'V{_f(sy(mid + err))}"/>')
            out.append(f'<circle cx="{_f(x + 11)}" cy="{_f(ym)}" r="3" fill="#222"/>')
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)
