"""Tables that fit the terminal's width: a table declares its columns and which of them matter
most; at a narrow width the least important are first abbreviated, then dropped, so the ones
that are kept print whole instead of being squeezed into unreadable slivers. Component names are
never wrapped: they are shortened from the left at a dot (``…layers.0.self_attn.q_proj``), since
their last parts are what tell components apart."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Literal

from rich import box
from rich.cells import cell_len
from rich.table import Table
from rich.text import Text

ELLIPSIS = "…"
NAME_MIN = 24  # cells a shortened name keeps: room for its layer index and last parts
WRAP_MIN = 16  # cells a column of wrapped words keeps

Cell = str | Text
Kind = Literal["fixed", "name", "wrap"]


def shorten(name: str, width: int) -> str:
    """``name`` in at most ``width`` cells, cut from the left at a dot and marked with an
    ellipsis; its last dotted part is always kept whole (even where that alone is wider)."""
    if cell_len(name) <= width:
        return name
    parts = name.split(".")
    kept = parts[-1]
    for part in reversed(parts[:-1]):
        longer = f"{part}.{kept}"
        if cell_len(longer) + 1 > width:
            break
        kept = longer
    return ELLIPSIS + kept


def _shortest(name: str) -> int:
    """Cells of ``name`` shortened as far as :func:`shorten` goes."""
    last = name.rsplit(".", 1)[-1]
    return min(cell_len(name), cell_len(last) + 1)


def distinct_width(names: Sequence[str], width: int) -> int:
    """The least width from ``width`` up at which :func:`shorten` keeps ``names`` apart
    (``…0.self_attn.out_proj`` and ``…1.self_attn.out_proj``, not ``…self_attn.out_proj``
    twice)."""
    unique = set(names)
    longest = max([width, *(cell_len(n) for n in unique)])
    for w in range(width, longest + 1):
        if len({shorten(n, w) for n in unique}) == len(unique):
            return w
    return longest


def _width(cell: Cell) -> int:
    return cell.cell_len if isinstance(cell, Text) else cell_len(cell)


@dataclass(frozen=True)
class Column:
    """One column: ``key`` is what a priority list names it by; ``kind`` says how it gives way:
    ``fixed`` prints whole, ``name`` holds names shortened from the left, ``wrap`` wraps words.
    ``short`` is its abbreviated form: a header and the cells, narrower."""

    key: str
    cells: Sequence[Cell]
    header: str | None = None
    justify: Literal["left", "right"] = "right"
    kind: Kind = "fixed"
    short: tuple[str, Sequence[Cell]] | None = None

    @property
    def title(self) -> str:
        return self.key if self.header is None else self.header

    def natural(self) -> int:
        """Cells it takes printed whole."""
        return max([cell_len(self.title), *(_width(c) for c in self.cells)])

    def minimum(self, names: Sequence[str] = ()) -> int:
        """Cells it cannot do with fewer of; a name column keeps its names apart from each
        other and from ``names`` (those of the table's other name columns)."""
        natural = self.natural()
        if self.kind == "name":
            shortest = max([0, *(_shortest(str(c)) for c in self.cells)])
            least = max(NAME_MIN, cell_len(self.title), shortest)
            return min(natural, distinct_width([*map(str, self.cells), *names], least))
        if self.kind == "wrap":  # its longest word whole, unless that is unusually long
            word = max([0, *(cell_len(w) for c in self.cells for w in str(c).split())])
            return min(natural, max(WRAP_MIN, cell_len(self.title), min(word, 2 * WRAP_MIN)))
        return natural

    def abbreviated(self) -> Column:
        if self.short is None:
            return self
        header, cells = self.short
        return replace(self, header=header, cells=cells, short=None)


def table_width(content: Sequence[int]) -> int:
    """Cells a ``box.SIMPLE`` table takes: each column padded by one cell on each side, one cell
    between columns and one at each edge."""
    return sum(content) + 3 * len(content) + 1


@dataclass(frozen=True)
class Fitted:
    """The columns kept (in their declared order, abbreviated where needed), their widths, and
    the keys of the columns left out."""

    columns: list[Column]
    widths: list[int]
    dropped: list[str]

    def table(self, title: str | None = None, *, title_justify: Literal["left", "center"] =
              "center", row_styles: Sequence[str | None] | None = None) -> Table:
        """The rich table, names shortened to their column's width."""
        table = Table(title=title, box=box.SIMPLE, title_justify=title_justify)
        for col, width in zip(self.columns, self.widths, strict=True):
            if col.kind == "wrap":
                table.add_column(col.title, justify=col.justify, width=width, overflow="fold")
            else:
                table.add_column(col.title, justify=col.justify, width=width, no_wrap=True)
        rows = len(self.columns[0].cells) if self.columns else 0
        for i in range(rows):
            cells: list[Cell] = []
            for col, width in zip(self.columns, self.widths, strict=True):
                cell = col.cells[i]
                cells.append(shorten(cell, width) if col.kind == "name" and isinstance(cell, str)
                             else cell)
            table.add_row(*cells, style=row_styles[i] if row_styles else None)
        return table


def fit(columns: Sequence[Column], priority: Sequence[str], width: int) -> Fitted:
    """Choose the columns of a ``box.SIMPLE`` table ``width`` cells wide. ``priority`` lists
    the keys of the columns that may give way, most important first; the others always stay.
    Least important first, columns are abbreviated, then dropped, until the kept ones fit at
    their minimum widths; abbreviations that turn out not to be needed are then undone, most
    important first, where the names still print whole. Extra width goes to name columns, then to
    wrapped ones."""
    present = {c.key for c in columns}
    order = [k for k in priority if k in present]
    by_key = {c.key: c for c in columns}
    short: set[str] = set()
    dropped: set[str] = set()

    def kept() -> list[Column]:
        return [c.abbreviated() if c.key in short else c for c in columns
                if c.key not in dropped]

    names = [str(n) for c in columns if c.kind == "name" for n in c.cells]

    def minimum(c: Column) -> int:
        return c.minimum(names)

    def need(names_whole: bool = False) -> int:
        return table_width([c.natural() if names_whole and c.kind == "name" else minimum(c)
                            for c in kept()])

    steps = [("short", k) for k in reversed(order) if by_key[k].short is not None]
    steps += [("drop", k) for k in reversed(order)]
    for action, key in steps:
        if need() <= width:
            break
        (short if action == "short" else dropped).add(key)
    for key in order:  # whole names come before a column's long form
        if key in short and key not in dropped:
            short.discard(key)
            if need(names_whole=True) > width:
                short.add(key)
    cols = kept()
    widths = [minimum(c) for c in cols]
    spare = width - table_width(widths)
    for kind in ("name", "wrap"):
        growing = [i for i, c in enumerate(cols) if c.kind == kind]
        while spare > 0 and growing:
            growing = [i for i in growing if widths[i] < cols[i].natural()]
            for i in growing[:spare]:
                widths[i] += 1
                spare -= 1
    return Fitted(cols, widths, [k for k in order if k in dropped])
