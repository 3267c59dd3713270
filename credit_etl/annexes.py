"""The four annex workbooks of the quarterly bulletin.

Each annex is described once by an ``Annex``: title, sheet and file name, a column tree
whose header words take the report's period words, the units it lists and how they
are ranked. ``annex_rows`` computes the printed rows from the ``units``,
``unit_figures`` and ``total_figures`` tables, and one writer, ``render_workbook``,
renders any description with openpyxl.
"""

from __future__ import annotations

import enum
import logging
import math
import os
import secrets
import unicodedata
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import duckdb
from openpyxl import Workbook
from openpyxl.cell.cell import ILLEGAL_CHARACTERS_RE, Cell
from openpyxl.styles import Alignment, Border, Font, Side
from openpyxl.utils import get_column_letter
from openpyxl.worksheet.worksheet import Worksheet

from credit_etl.periods import QUARTER_WORDS, Quarter
from credit_etl.schema import ANNEX4_TYPES

logger = logging.getLogger(__name__)


class Format(enum.Enum):
    """Value kind of a leaf column, which decides its computation and number format."""

    ROW_NUMBER = "row_number"
    TEXT = "text"
    COUNT = "count"
    RATE = "rate"
    PER_CAPITA = "per_capita"
    POPULATION = "population"


NUMBER_FORMATS = {
    Format.ROW_NUMBER: "0",
    Format.TEXT: "@",
    Format.COUNT: "0",
    Format.RATE: "0.00%",
    Format.PER_CAPITA: "0.00",
    Format.POPULATION: "General",
}

# Kinds of unit listed by each row source. The key is also the total_figures scope.
SCOPE_KINDS = {"local": ("district", "county"), "department": ("department",)}
GROUP_LABELS = {"district": "各区", "county": "各县(市)"}
TOTAL_LABEL = "合计"

ROW_GROUP = "group"
ROW_UNIT = "unit"
ROW_TOTAL = "total"


@dataclass(frozen=True)
class Column:
    """A header cell of an annex table, either one leaf column or a heading over others.

    ``header`` may contain ``{quarter}``, ``{year}`` and ``{q1}`` to ``{q4}``, which
    become the report's period words (第四季度, 2018年, 第一季度 …). A leaf names the
    key of its value in the printed row (``key``), its ``format`` and the figure
    columns its value is computed from (``inputs``).
    """

    header: str
    key: str | None = None
    format: Format | None = None
    inputs: tuple[str, ...] = ()
    children: tuple[Column, ...] = ()

    def __post_init__(self) -> None:
        if self.children and (self.key or self.format):
            raise ValueError(f"column {self.header!r}: a heading has no key or format")
        if not self.children and not (self.key and self.format):
            raise ValueError(f"column {self.header!r}: a leaf needs a key and a format")

    def leaves(self) -> Iterator[Column]:
        if not self.children:
            yield self
            return
        for child in self.children:
            yield from child.leaves()

    @property
    def leaf_count(self) -> int:
        return sum(1 for _ in self.leaves())

    @property
    def depth(self) -> int:
        return 1 + max((child.depth for child in self.children), default=0)


@dataclass(frozen=True)
class Annex:
    """Description of one annex table: the units it lists, their order, its headers."""

    number: int
    title: str
    scope: str
    columns: tuple[Column, ...]
    rank_by: tuple[str, ...]
    grouped_by_kind: bool = False
    source: str = "数据来源：信用信息共享平台归集数据"
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.scope not in SCOPE_KINDS:
            raise ValueError(
                f"annex {self.number}: scope {self.scope!r} is not one of "
                f"{', '.join(SCOPE_KINDS)}"
            )
        keys = [leaf.key for leaf in self.leaves()]
        if len(keys) != len(set(keys)):
            raise ValueError(f"annex {self.number}: duplicate leaf keys in {keys}")

    @property
    def sheet_name(self) -> str:
        return f"附件{self.number}"

    @property
    def file_name(self) -> str:
        return f"annex{self.number}.xlsx"

    @property
    def header_depth(self) -> int:
        return max(column.depth for column in self.columns)

    def leaves(self) -> list[Column]:
        return [leaf for column in self.columns for leaf in column.leaves()]

    def leaf_headers(self, quarter: Quarter) -> list[str]:
        """Return the header words of the leaf columns, in column order."""
        words = period_words(quarter)
        return [leaf.header.format_map(words) for leaf in self.leaves()]

    def figure_columns(self) -> list[str]:
        """Return the figure columns this annex reads, each once, in a stable order."""
        names = [name for leaf in self.leaves() for name in leaf.inputs]
        return list(dict.fromkeys([*names, *self.rank_by]))

    @property
    def label_span(self) -> int:
        """Count the leading columns (序号 and the name) that a 合计 label covers."""
        span = 0
        for leaf in self.leaves():
            if leaf.format not in (Format.ROW_NUMBER, Format.TEXT):
                break
            span += 1
        return max(span, 1)


def period_words(quarter: Quarter) -> dict[str, str]:
    """Return the words that fill ``{quarter}``, ``{year}`` and ``{q1}`` … ``{q4}``."""
    words = {"quarter": quarter.quarter_word, "year": quarter.year_word}
    words.update({f"q{number}": word for number, word in QUARTER_WORDS.items()})
    return words


def period_text(quarter: Quarter) -> str:
    return f"{quarter.year_word}{quarter.quarter_word}"


def _row_number(header: str = "序号") -> Column:
    return Column(header, key="seq", format=Format.ROW_NUMBER)


def _name(header: str) -> Column:
    return Column(header, key="name", format=Format.TEXT)


def _count(header: str, figure: str) -> Column:
    return Column(header, key=figure, format=Format.COUNT, inputs=(figure,))


def _rate(header: str, figure: str, timely: str, total: str) -> Column:
    # The printed rate comes from the counts. The stored rate only cross-checks them.
    return Column(
        header, key=figure, format=Format.RATE, inputs=(timely, total, figure)
    )


def _heading(header: str, *children: Column) -> Column:
    return Column(header, children=children)


def _total_volume() -> Column:
    return _heading(
        "总数据量",
        _count("存量", "total_stock"),
        _count("{quarter}增量", "quarter_increment"),
        _count("{year}存量", "year_stock"),
    )


def _double_publicity() -> Column:
    return _heading(
        "其中双公示",
        _count("存量", "dp_stock"),
        _count("{quarter}增量", "dp_quarter_increment"),
        _rate(
            "{quarter}及时率",
            "dp_quarter_timeliness",
            "dp_quarter_timely",
            "dp_quarter_increment",
        ),
        _count("{year}存量", "dp_year_stock"),
        _rate("{year}及时率", "dp_year_timeliness", "dp_year_timely", "dp_year_stock"),
    )


def _licence_penalty(header: str, suffix: str) -> Column:
    return _heading(
        header,
        _count("行政许可", f"license_{suffix}"),
        _count("行政处罚", f"penalty_{suffix}"),
    )


RATE_NOTE = (
    "及时率为百分比保留两位小数，截断不进位；无数据时为0.00%。"
    "合计行的及时率按全部记录合并计算。"
)
TOTAL_NOTE = "合计行由全部记录直接计算。"

ANNEX1 = Annex(
    number=1,
    title="各县（市）、区信用数据归集综合统计表",
    scope="local",
    columns=(
        _row_number(),
        _name("名称"),
        _total_volume(),
        _double_publicity(),
        _heading(
            "红黑名单",
            _count("{quarter}", "redblack_quarter"),
            _count("{year}总量", "redblack_year"),
        ),
        Column(
            "常住人口（万人）",
            key="population_10k",
            format=Format.POPULATION,
            inputs=("population_10k",),
        ),
        Column(
            "人均个人信用信息数量",
            key="per_capita",
            format=Format.PER_CAPITA,
            inputs=("total_stock", "population_10k"),
        ),
    ),
    rank_by=("total_stock",),
    grouped_by_kind=True,
    notes=(
        RATE_NOTE,
        "人均个人信用信息数量为存量除以常住人口，四舍五入保留两位小数。",
        TOTAL_NOTE,
    ),
)

ANNEX2 = Annex(
    number=2,
    title="各县（市）、区“双公示”增量统计表",
    scope="local",
    columns=(
        _row_number(),
        _name("单位名称"),
        _licence_penalty("{q1}", "q1"),
        _licence_penalty("{q2}", "q2"),
        _licence_penalty("{q3}", "q3"),
        _licence_penalty("{q4}", "q4"),
        _licence_penalty("{year}总量", "year"),
        _licence_penalty("当前总量", "stock"),
    ),
    rank_by=("license_stock", "penalty_stock"),
    notes=("按当前总量（行政许可与行政处罚之和）排序。", TOTAL_NOTE),
)

ANNEX3 = Annex(
    number=3,
    title="市直各部门信用数据归集综合统计表",
    scope="department",
    columns=(
        _row_number(),
        _name("名称"),
        _total_volume(),
        _double_publicity(),
        _count("红黑名单（{quarter}）", "redblack_quarter"),
        _count("红黑名单（{year}）", "redblack_year"),
    ),
    rank_by=("total_stock",),
    notes=(RATE_NOTE, TOTAL_NOTE),
)

ANNEX4 = Annex(
    number=4,
    title="各县（市）、区“信用承诺”上传统计表",
    scope="local",
    columns=(
        _row_number(),
        _name("部门"),
        _heading(
            "承诺类型",
            _count(ANNEX4_TYPES[0], "commitment_voluntary"),
            _count(ANNEX4_TYPES[1], "commitment_credit_repair"),
            _count(ANNEX4_TYPES[2], "commitment_approval_substitute"),
            _count(ANNEX4_TYPES[3], "commitment_self_discipline"),
            _count("其他类型", "commitment_other_types"),
        ),
        _count("总量", "commitment_total"),
    ),
    rank_by=("commitment_total",),
    notes=("其他类型包括容缺受理型、证明事项型和其他承诺。", TOTAL_NOTE),
)

ANNEXES: tuple[Annex, ...] = (ANNEX1, ANNEX2, ANNEX3, ANNEX4)


def annex_by_number(number: int) -> Annex:
    for annex in ANNEXES:
        if annex.number == number:
            return annex
    raise ValueError(f"invalid annex number {number!r}. Use 1, 2, 3 or 4.")


class MissingFiguresError(LookupError):
    """The figures of a period have not been computed."""


# --- Values as printed ---------------------------------------------------------------


def truncate_rate(timely: int, total: int) -> float:
    """Return timely/total as a fraction truncated to two decimals of a percent.

    22 of 24 gives 0.9166 (printed 91.66%) and 312 of 427 gives 0.7306. The division
    is done on integers, so no floating-point error can move a value across a
    boundary. A rate with nothing under it (total 0) is 0.
    """
    if total <= 0:
        return 0.0
    if timely < 0 or timely > total:
        raise ValueError(
            f"invalid rate: {timely} timely records of {total}. The timely count "
            "must be between 0 and the total."
        )
    basis_points = timely * 10_000 // total
    return basis_points / 10_000


def exact_population(population_10k: float) -> Decimal:
    """Return the population in units of 10,000 as the decimal that was given.

    A sum of populations stored as DOUBLE carries float noise, such as
    500.09999999999997 for 500.1. Populations are given with at most two decimals, so
    rounding to six decimals restores the decimal value.
    """
    return Decimal(repr(round(population_10k, 6)))


def round_per_capita(total_stock: int, population_10k: float | None) -> float | None:
    """Return records per resident rounded half up to two decimals, or None.

    1,366 records over 19.9 (10,000 people) is 0.0069, printed 0.01. The quotient is
    computed in Decimal, so 0.015 rounds to 0.02 where float rounding gives 0.01.
    None means the population is unknown.
    """
    if population_10k is None or population_10k <= 0:
        return None
    residents = exact_population(population_10k) * 10_000
    quotient = Decimal(total_stock) / residents
    return float(quotient.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP))


def _count_value(value: Any) -> int:
    return int(value) if value is not None else 0


def _rate_value(figures: dict[str, Any], leaf: Column, where: str) -> float:
    timely_column, total_column, stored_column = leaf.inputs
    timely = _count_value(figures[timely_column])
    total = _count_value(figures[total_column])
    stored = figures[stored_column]
    if total > 0:
        disagrees = stored is None or not math.isclose(
            stored, timely / total, rel_tol=0, abs_tol=1e-9
        )
    else:
        disagrees = stored is not None
    if disagrees:
        logger.warning(
            "%s: %s is %r but %s/%s gives %d/%d. The annex prints the rate from the "
            "counts.",
            where,
            stored_column,
            stored,
            timely_column,
            total_column,
            timely,
            total,
        )
    try:
        return truncate_rate(timely, total)
    except ValueError as error:
        raise ValueError(f"{where}, {stored_column}: {error}") from None


def _leaf_value(leaf: Column, figures: dict[str, Any], where: str) -> Any:
    if leaf.format is Format.COUNT:
        return _count_value(figures[leaf.inputs[0]])
    if leaf.format is Format.RATE:
        return _rate_value(figures, leaf, where)
    if leaf.format is Format.PER_CAPITA:
        stock_column, population_column = leaf.inputs
        return round_per_capita(
            _count_value(figures[stock_column]), figures[population_column]
        )
    if leaf.format is Format.POPULATION:
        population = figures[leaf.inputs[0]]
        return None if population is None else round(population, 6)
    raise ValueError(f"column {leaf.header!r}: {leaf.format} has no figure value")


def _printed_row(
    annex: Annex,
    row_type: str,
    figures: dict[str, Any],
    where: str,
    *,
    seq: int | None = None,
    name: str | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "row_type": row_type,
        "unit_id": figures.get("unit_id"),
        "label": label,
    }
    for leaf in annex.leaves():
        if leaf.format is Format.ROW_NUMBER:
            row[leaf.key] = seq
        elif leaf.format is Format.TEXT:
            row[leaf.key] = name
        else:
            row[leaf.key] = _leaf_value(leaf, figures, where)
    return row


# --- Reading the figures -------------------------------------------------------------


def _fetch_unit_figures(
    con: duckdb.DuckDBPyConnection, quarter: Quarter, annex: Annex
) -> list[dict[str, Any]]:
    """Read every unit of the annex's scope with its figures for the period.

    A unit without a ``unit_figures`` row for the period still gets a row with NULL
    figures, so the annex lists it with zeros. Its population comes from ``units``.
    """
    selected = []
    for name in annex.figure_columns():
        if name == "population_10k":
            selected.append("COALESCE(f.population_10k, u.population_10k)")
        else:
            selected.append(f"f.{name}")
    kinds = SCOPE_KINDS[annex.scope]
    placeholders = ", ".join("?" for _ in kinds)
    query = f"""
        SELECT u.unit_id, u.name_zh, u.kind, u.annex_order, {", ".join(selected)}
        FROM units AS u
        LEFT JOIN unit_figures AS f ON f.unit_id = u.unit_id AND f.period = ?
        WHERE u.kind IN ({placeholders})
        ORDER BY u.annex_order, u.unit_id
    """
    cursor = con.execute(query, [quarter.label, *kinds])
    names = ["unit_id", "name_zh", "kind", "annex_order", *annex.figure_columns()]
    units = [dict(zip(names, values, strict=True)) for values in cursor.fetchall()]

    seen: set[str] = set()
    for unit in units:
        if unit["unit_id"] in seen:
            raise ValueError(
                f"unit_figures has more than one row for unit {unit['unit_id']} in "
                f"period {quarter.label}. Recompute the figures of {quarter.label}."
            )
        seen.add(unit["unit_id"])
    if not units:
        logger.warning(
            "annex %d for %s: the units table lists no unit of kind %s",
            annex.number,
            quarter.label,
            " or ".join(kinds),
        )
    return units


def _fetch_total_figures(
    con: duckdb.DuckDBPyConnection, quarter: Quarter, annex: Annex
) -> dict[str, Any]:
    names = annex.figure_columns()
    query = f"""
        SELECT {", ".join(names)}
        FROM total_figures
        WHERE period = ? AND scope = ?
    """
    found = con.execute(query, [quarter.label, annex.scope]).fetchall()
    if not found:
        raise MissingFiguresError(
            f"total_figures has no row for period {quarter.label} and scope "
            f"{annex.scope!r}. Compute the figures of {quarter.label} before writing "
            "the annexes."
        )
    if len(found) > 1:
        raise ValueError(
            f"total_figures has {len(found)} rows for period {quarter.label} and "
            f"scope {annex.scope!r}. Recompute the figures of {quarter.label}."
        )
    return dict(zip(names, found[0], strict=True))


def _rank_blocks(
    annex: Annex, units: list[dict[str, Any]]
) -> list[tuple[str | None, list[dict[str, Any]]]]:
    """Split units into labelled blocks and rank each one, largest first.

    Ties keep ``annex_order``, then ``unit_id`` so the order is always the same.
    """

    def rank_key(unit: dict[str, Any]) -> tuple[int, int, str]:
        value = sum(_count_value(unit[name]) for name in annex.rank_by)
        return (-value, unit["annex_order"], unit["unit_id"])

    if not annex.grouped_by_kind:
        return [(None, sorted(units, key=rank_key))]
    blocks = []
    for kind in SCOPE_KINDS[annex.scope]:
        members = [unit for unit in units if unit["kind"] == kind]
        blocks.append((GROUP_LABELS[kind], sorted(members, key=rank_key)))
    return blocks


def _compute_rows(
    con: duckdb.DuckDBPyConnection, quarter: Quarter, annex: Annex
) -> list[dict[str, Any]]:
    units = _fetch_unit_figures(con, quarter, annex)
    total = _fetch_total_figures(con, quarter, annex)

    rows: list[dict[str, Any]] = []
    for label, members in _rank_blocks(annex, units):
        if label is not None:
            group_row = {"row_type": ROW_GROUP, "unit_id": None, "label": label}
            group_row.update(dict.fromkeys(leaf.key for leaf in annex.leaves()))
            rows.append(group_row)
        for seq, unit in enumerate(members, start=1):
            where = f"annex {annex.number}, unit {unit['unit_id']}, {quarter.label}"
            rows.append(
                _printed_row(
                    annex, ROW_UNIT, unit, where, seq=seq, name=unit["name_zh"]
                )
            )

    where = f"annex {annex.number}, total of scope {annex.scope}, {quarter.label}"
    rows.append(_printed_row(annex, ROW_TOTAL, total, where, label=TOTAL_LABEL))
    return rows


def annex_rows(
    con: duckdb.DuckDBPyConnection, quarter: Quarter, annex_number: int
) -> list[dict[str, Any]]:
    """Return the rows of an annex as they will be printed, top to bottom.

    Each row has ``row_type`` (``group``, ``unit`` or ``total``), ``unit_id`` (None
    unless a unit row) and ``label`` (各区, 各县(市) or 合计, else None). It also has
    one entry per leaf column, keyed by ``Column.key``. Unit rows fill ``seq`` and
    ``name``. Counts are int, rates truncated fractions, per capita rounded and
    population as given. A group row has None in every column. Raises
    MissingFiguresError when the period's total row is missing.
    """
    return _compute_rows(con, quarter, annex_by_number(annex_number))


# --- Rendering -----------------------------------------------------------------------

TITLE_ROW = 1
HEADER_TOP = 2
TITLE_FONT = Font(bold=True, size=14)
BOLD = Font(bold=True)
CENTERED = Alignment(horizontal="center", vertical="center", wrap_text=True)
LEFT = Alignment(horizontal="left", vertical="center")
RIGHT = Alignment(horizontal="right", vertical="center")
THIN = Side(style="thin")
BOX = Border(left=THIN, right=THIN, top=THIN, bottom=THIN)

# Column widths are in Excel's units, about one Latin digit of the default font.
MIN_WIDTH = 6
PADDING = 2
# A longer header wraps onto more lines instead of widening its column.
HEADER_WRAP_WIDTH = 12
LINE_HEIGHT = 15.0
TITLE_LINE_HEIGHT = 21.0


def display_width(text: str) -> int:
    """Return the display width of text, with CJK characters two columns wide."""
    # Ambiguous-width characters, such as the quotes in “双公示”, are wide in CJK fonts.
    return sum(
        2 if unicodedata.east_asian_width(char) in ("W", "F", "A") else 1
        for char in text
    )


def _formatted(value: Any, fmt: Format) -> str:
    if value is None:
        return ""
    if fmt is Format.RATE:
        return f"{value * 100:.2f}%"
    if fmt is Format.PER_CAPITA:
        return f"{value:.2f}"
    if fmt is Format.POPULATION:
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class _HeaderCell:
    text: str
    first_row: int
    last_row: int
    first_column: int
    last_column: int


def _header_cells(annex: Annex, quarter: Quarter) -> list[_HeaderCell]:
    """Place every header of the column tree. A leaf above the bottom row spans down."""
    words = period_words(quarter)
    bottom = HEADER_TOP + annex.header_depth - 1
    cells: list[_HeaderCell] = []

    def place(column: Column, row: int, first_column: int) -> None:
        last_column = first_column + column.leaf_count - 1
        last_row = bottom if not column.children else row
        text = column.header.format_map(words)
        cells.append(_HeaderCell(text, row, last_row, first_column, last_column))
        child_column = first_column
        for child in column.children:
            place(child, row + 1, child_column)
            child_column += child.leaf_count

    first_column = 1
    for column in annex.columns:
        place(column, HEADER_TOP, first_column)
        first_column += column.leaf_count
    return cells


def _column_widths(
    annex: Annex, headers: list[_HeaderCell], rows: list[dict[str, Any]]
) -> list[float]:
    leaves = annex.leaves()
    widths = [float(MIN_WIDTH)] * len(leaves)
    for index, leaf in enumerate(leaves):
        for row in rows:
            text = _formatted(row[leaf.key], leaf.format)
            widths[index] = max(widths[index], display_width(text))
    for cell in headers:
        if cell.first_column == cell.last_column:
            index = cell.first_column - 1
            wanted = min(display_width(cell.text), HEADER_WRAP_WIDTH)
            widths[index] = max(widths[index], wanted)
    widths = [width + PADDING for width in widths]

    # A heading over several columns widens them evenly when they are too narrow.
    for cell in headers:
        span = range(cell.first_column - 1, cell.last_column)
        missing = display_width(cell.text) + PADDING - sum(widths[i] for i in span)
        if cell.first_column != cell.last_column and missing > 0:
            for i in span:
                widths[i] += missing / len(span)
    return widths


def _lines_needed(text: str, width: float) -> int:
    usable = max(width - PADDING, 1)
    return max(1, math.ceil(display_width(text) / usable))


def _header_row_heights(
    annex: Annex, headers: list[_HeaderCell], widths: list[float]
) -> dict[int, float]:
    """Return a height per header row that shows every wrapped header in full."""
    lines = dict.fromkeys(range(HEADER_TOP, HEADER_TOP + annex.header_depth), 1)
    for cell in headers:
        span_width = sum(widths[cell.first_column - 1 : cell.last_column])
        rows_spanned = cell.last_row - cell.first_row + 1
        per_row = math.ceil(_lines_needed(cell.text, span_width) / rows_spanned)
        for row in range(cell.first_row, cell.last_row + 1):
            lines[row] = max(lines[row], per_row)
    return {row: LINE_HEIGHT * count + 3 for row, count in lines.items()}


def write_text(cell: Cell, text: str) -> None:
    """Store text as a string cell that Excel never evaluates as a formula.

    openpyxl types a value starting with ``=`` as a formula, so the type is set back to
    string. The quote prefix keeps Excel from evaluating it after the user edits the
    cell. Control characters that XML cannot carry are removed.
    """
    cleaned = ILLEGAL_CHARACTERS_RE.sub("", text)
    cell.value = cleaned
    cell.data_type = "s"
    cell.number_format = NUMBER_FORMATS[Format.TEXT]
    if cleaned[:1] in ("=", "+", "-", "@"):
        cell.quotePrefix = True


def _write_value(cell: Cell, value: Any, fmt: Format) -> None:
    if value is None:
        return
    if isinstance(value, str):
        write_text(cell, value)
        return
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"cell {cell.coordinate}: {value!r} is not a number or text")
    cell.value = value
    cell.number_format = NUMBER_FORMATS[fmt]


def _write_title(sheet: Worksheet, annex: Annex, widths: list[float]) -> None:
    cell = sheet.cell(row=TITLE_ROW, column=1)
    write_text(cell, annex.title)
    cell.font = TITLE_FONT
    cell.alignment = CENTERED
    sheet.merge_cells(
        start_row=TITLE_ROW,
        start_column=1,
        end_row=TITLE_ROW,
        end_column=len(widths),
    )
    # The 14-point title is about 1.3 times as wide as the same text in 11 points.
    title_lines = _lines_needed(annex.title, sum(widths) / 1.3)
    sheet.row_dimensions[TITLE_ROW].height = TITLE_LINE_HEIGHT * title_lines + 6


def _write_headers(sheet: Worksheet, headers: list[_HeaderCell]) -> None:
    for header in headers:
        for row in range(header.first_row, header.last_row + 1):
            for column in range(header.first_column, header.last_column + 1):
                sheet.cell(row=row, column=column).border = BOX
        cell = sheet.cell(row=header.first_row, column=header.first_column)
        write_text(cell, header.text)
        cell.font = BOLD
        cell.alignment = CENTERED
        if header.first_row != header.last_row or (
            header.first_column != header.last_column
        ):
            sheet.merge_cells(
                start_row=header.first_row,
                start_column=header.first_column,
                end_row=header.last_row,
                end_column=header.last_column,
            )


def _write_rows(
    sheet: Worksheet, annex: Annex, rows: list[dict[str, Any]], first_row: int
) -> None:
    leaves = annex.leaves()
    for offset, row in enumerate(rows):
        row_number = first_row + offset
        labelled = row["row_type"] in (ROW_GROUP, ROW_TOTAL)
        for index, leaf in enumerate(leaves, start=1):
            cell = sheet.cell(row=row_number, column=index)
            cell.border = BOX
            if labelled and index <= annex.label_span:
                continue
            _write_value(cell, row[leaf.key], leaf.format)
            if leaf.format is Format.TEXT:
                cell.alignment = LEFT
            elif leaf.format is Format.ROW_NUMBER:
                cell.alignment = CENTERED
            else:
                cell.alignment = RIGHT
            if labelled:
                cell.font = BOLD

        if labelled:
            # The label goes in the name column, so a reader finds 合计 (and the
            # group rows) in column B like any unit.
            label_cell = sheet.cell(row=row_number, column=annex.label_span)
            write_text(label_cell, row["label"])
            label_cell.font = BOLD
            label_cell.alignment = CENTERED if row["row_type"] == ROW_TOTAL else LEFT


def _set_up_printing(
    sheet: Worksheet, annex: Annex, quarter: Quarter, first_data_row: int
) -> None:
    sheet.page_setup.orientation = "landscape"
    sheet.page_setup.paperSize = sheet.PAPERSIZE_A4
    sheet.page_setup.fitToWidth = 1
    sheet.page_setup.fitToHeight = 0
    sheet.sheet_properties.pageSetUpPr.fitToPage = True
    sheet.print_options.horizontalCentered = True
    sheet.print_title_rows = f"{HEADER_TOP}:{first_data_row - 1}"
    sheet.freeze_panes = f"A{first_data_row}"
    sheet.oddHeader.center.text = period_text(quarter)
    sheet.oddFooter.left.text = annex.source
    sheet.oddFooter.right.text = "第 &P 页，共 &N 页"


def render_workbook(
    annex: Annex, quarter: Quarter, rows: Sequence[dict[str, Any]]
) -> Workbook:
    """Build the workbook of one annex from its printed rows (see ``annex_rows``)."""
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = annex.sheet_name
    workbook.properties.title = f"{annex.sheet_name} {annex.title}"
    workbook.properties.subject = period_text(quarter)
    workbook.properties.description = "\n".join(annex.notes)
    workbook.properties.creator = "credit-etl"

    rows = list(rows)
    headers = _header_cells(annex, quarter)
    widths = _column_widths(annex, headers, rows)
    first_data_row = HEADER_TOP + annex.header_depth

    _write_title(sheet, annex, widths)
    _write_headers(sheet, headers)
    _write_rows(sheet, annex, rows, first_data_row)

    for index, width in enumerate(widths, start=1):
        sheet.column_dimensions[get_column_letter(index)].width = round(width, 1)
    for row, height in _header_row_heights(annex, headers, widths).items():
        sheet.row_dimensions[row].height = height
    _set_up_printing(sheet, annex, quarter, first_data_row)
    return workbook


def save_atomically(workbook: Workbook, path: Path) -> None:
    """Save a workbook so that ``path`` is either the old file or the complete new one.

    The workbook goes to a hidden temporary file in the same folder, which is synced
    and then renamed over ``path``. The temporary file is removed if saving fails.
    """
    temp_path = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    descriptor = os.open(temp_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(descriptor, "wb") as handle:
            workbook.save(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp_path, path)
    except BaseException:
        temp_path.unlink(missing_ok=True)
        raise


def write_annexes(
    con: duckdb.DuckDBPyConnection, quarter: Quarter, exports_dir: Path
) -> list[Path]:
    """Write annex1.xlsx … annex4.xlsx of a quarter to ``exports_dir/<label>/``.

    Every annex's rows are read before any file is written, so missing figures leave
    the previous files untouched. Returns the paths in annex order.
    """
    computed = [(annex, _compute_rows(con, quarter, annex)) for annex in ANNEXES]

    folder = Path(exports_dir) / quarter.label
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for annex, rows in computed:
        path = folder / annex.file_name
        save_atomically(render_workbook(annex, quarter, rows), path)
        unit_count = sum(1 for row in rows if row["row_type"] == ROW_UNIT)
        logger.info(
            "wrote annex %d for %s with %d units: %s",
            annex.number,
            quarter.label,
            unit_count,
            path,
        )
        paths.append(path)
    return paths
