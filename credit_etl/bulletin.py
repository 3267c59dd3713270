"""The 2018 bulletin's annex tables, and record counts that reproduce them.

The bulletin's four annex tables ship in ``data/bulletin_2018``. Their cells were typed
by hand and some contradict others, so no set of records can produce all of them.
``derive_targets`` works out per unit the record counts ("atoms") that reproduce as
many printed cells as possible, and lists every printed cell that those counts cannot
reproduce. ``expected_annexes`` computes every annex cell from atoms, the way the
product computes it from records, so a generated data set has exact expected annexes.

Atoms of a unit are non-negative record counts per category and per receiving period.
The periods are the four quarters of 2018 and the year 2017. Every record received
outside 2018 but on or before the cut-off date 2019-01-10 is put in 2017. Red/black-list
records and commitments are only received in 2018. ``timely`` counts the licence and
penalty records of a period received at most 7 calendar days after their decision date.

Rules for an annex 1 or annex 3 row, applied in this order. A primed name is the
accepted value, and a cell whose accepted value differs from the printed one is listed
with the reason of the first rule that changed it. S = total_stock, Y = year_stock,
Q = q4_increment, DS/DY/DQ = dp_stock/dp_year_stock/dp_q4_increment, RY/RQ =
redblack_year/redblack_q4.

1. S' = S. Y' = min(Y, S'). Q' = min(Q, Y').
2. DS' = min(DS, S'). DY' = min(DY, DS', Y'). DQ' = min(DQ, DY', Q').
3. DY' = min(DY', DQ' + (Y' - Q')): the double-publicity records of 2018Q1-Q3 fit into
   the records of 2018Q1-Q3.
4. DS' = min(DS', DY' + (S' - Y')): those received outside 2018 fit likewise.
5. RY' = min(RY, Y' - DY'). RQ' = min(RQ, RY', Q' - DQ').
   RY' = min(RY', RQ' + (Y' - Q') - (DY' - DQ')). What is left in each period is
   ``other`` records, never negative by these rules.
6. Rates. A printed rate of R basis points over n records is reproducible by t timely
   records exactly when t lies in [ceil(R*n/10000), ceil((R+1)*n/10000) - 1], because
   the rate is printed truncated to two decimals of a percent. The fourth quarter's
   rate is taken first (t4 in [0, DQ']). The 2018 rate must also satisfy
   t4 <= ty <= t4 + (DY' - DQ'). A rate printed over zero records is replaced by 0;
   a rate that no t can give is replaced by the nearest reproducible one.
7. per_capita = S' / (population_10k * 10000), rounded half up to 2 decimals, with the
   registry's population.

Annex 2 (districts and counties) yields to annex 1. Its fourth-quarter licences and
penalties are scaled to add up to DQ', and its six cells of 2018Q1-Q3 to DY' - DQ'.
The records received outside 2018 are the printed current figure minus the accepted
year figure, per category, and they are scaled to add up to DS' - DY'. Scaling is
proportional with largest-remainder rounding, and printed figures that already add up
are kept. Year and current cells are then sums.

Annex 4: each type is accepted as printed and the total is their sum. The column
``other_types`` contains the other national types (容缺受理型, 证明事项型, 其他), 0 in the
bulletin.

Total rows (合计) are sums of the accepted unit cells, and population is summed too.
A pooled total rate is reproducible when some choice of each unit's t inside its
reproducible range gives it. The fourth quarter's total is fixed first, then the year's.
"""

from __future__ import annotations

import csv
import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from pathlib import Path

from credit_etl.periods import Quarter
from credit_etl.registry import Unit, load_units
from credit_etl.schema import ANNEX4_TYPES, COMMITMENT_TYPES
from credit_etl.settings import SHIPPED_DATA

logger = logging.getLogger(__name__)

BULLETIN_DIR = SHIPPED_DATA / "bulletin_2018"
REPORT_QUARTER = Quarter(2018, 4)
CUT_OFF = REPORT_QUARTER.deadline()
TOTAL_ROW = "合计"
REPRODUCTION_STOCK_LIMIT = 100_000

Value = int | Decimal

# Receiving periods of the atoms, in tuple order: 2018Q1..2018Q4, then 2017.
PERIODS: tuple[tuple[dt.date, dt.date], ...] = tuple(
    (Quarter(2018, q).start, Quarter(2018, q).end) for q in (1, 2, 3, 4)
) + ((dt.date(2017, 1, 1), dt.date(2017, 12, 31)),)
Q4 = 3
OUTSIDE_2018 = 4
YEAR_2018 = (0, 1, 2, 3)

RECORD_CATEGORIES = ("license", "penalty", "red_list", "black_list", "other")
# Every stored commitment type once, the four types of annex 4 first.
COMMITMENT_TYPE_ORDER = tuple(
    dict.fromkeys((*ANNEX4_TYPES, *COMMITMENT_TYPES.values()))
)
OTHER_COMMITMENT_TYPES = tuple(
    kind for kind in COMMITMENT_TYPE_ORDER if kind not in ANNEX4_TYPES
)

ANNEX_FILES = {
    1: "annex1_counties.csv",
    2: "annex2_double_publicity.csv",
    3: "annex3_departments.csv",
    4: "annex4_commitments.csv",
}
VOLUME_COLUMNS = (
    "total_stock",
    "q4_increment",
    "year_stock",
    "dp_stock",
    "dp_q4_increment",
    "dp_q4_timeliness_pct",
    "dp_year_stock",
    "dp_year_timeliness_pct",
    "redblack_q4",
    "redblack_year",
)
ANNEX_COLUMNS: dict[int, tuple[str, ...]] = {
    1: VOLUME_COLUMNS + ("population_10k", "per_capita"),
    2: tuple(
        f"q{quarter}_{category}"
        for quarter in (1, 2, 3, 4)
        for category in ("license", "penalty")
    )
    + ("year_license", "year_penalty", "current_license", "current_penalty"),
    3: VOLUME_COLUMNS,
    4: (
        "voluntary",
        "credit_repair",
        "approval_substitute",
        "self_discipline",
        "other_types",
        "total",
    ),
}
ANNEX4_TYPE_COLUMNS = dict(zip(ANNEX_COLUMNS[4][:4], ANNEX4_TYPES, strict=True))
RATE_COLUMNS = frozenset({"dp_q4_timeliness_pct", "dp_year_timeliness_pct"})
DECIMAL_COLUMNS = RATE_COLUMNS | {"population_10k", "per_capita"}
ZERO_PCT = Decimal("0.00")


class BulletinError(ValueError):
    """A shipped bulletin table is missing, malformed or does not match the registry."""


@dataclass(frozen=True)
class InconsistentCell:
    """A printed cell that no set of records can produce with the accepted cells."""

    annex: int
    unit_name: str
    column: str
    printed: Value
    producible: Value
    reason: str


@dataclass(frozen=True)
class BulletinTable:
    """One annex table as printed: rows by unit name (the total row is 合计)."""

    annex: int
    columns: tuple[str, ...]
    rows: dict[str, dict[str, Value]]


@dataclass(frozen=True)
class UnitAtoms:
    """Record counts of one unit, from which every annex cell follows.

    ``counts`` maps each category of ``RECORD_CATEGORIES`` to five counts, one per
    period of ``PERIODS``. ``timely`` contains the timely licence and penalty records
    of each period, and ``commitments`` maps each commitment type to five counts.
    """

    unit_id: str
    counts: Mapping[str, tuple[int, ...]]
    timely: tuple[int, ...]
    commitments: Mapping[str, tuple[int, ...]]

    def double_publicity(self, period: int) -> int:
        return self.counts["license"][period] + self.counts["penalty"][period]

    def total(self, category: str) -> int:
        return sum(self.counts[category])

    def scaled(self, scale: float) -> UnitAtoms:
        """Return every count times ``scale``, rounded half up.

        A scaled timely count is capped at the scaled number of licence and penalty
        records of its period, which rounding may have made smaller.
        """
        counts = {
            category: tuple(scale_count(n, scale) for n in values)
            for category, values in self.counts.items()
        }
        timely = tuple(
            min(scale_count(t, scale), counts["license"][p] + counts["penalty"][p])
            for p, t in enumerate(self.timely)
        )
        commitments = {
            kind: tuple(scale_count(n, scale) for n in values)
            for kind, values in self.commitments.items()
        }
        return UnitAtoms(self.unit_id, counts, timely, commitments)


@dataclass(frozen=True)
class BulletinTargets:
    """Atoms per unit id that reproduce the bulletin, and the cells they cannot."""

    atoms: dict[str, UnitAtoms]
    inconsistent: list[InconsistentCell]


def scale_count(count: int, scale: float) -> int:
    """Return ``count * scale`` rounded half up."""
    scaled = Decimal(count) * Decimal(repr(scale))
    return int(scaled.quantize(Decimal(1), rounding=ROUND_HALF_UP))


# ---------------------------------------------------------------- rates


def truncated_pct(timely: int, total: int) -> Decimal:
    """Return timely/total as a percentage truncated to 2 decimals (0 when total is 0).

    22 of 24 is 91.666...% and gives 91.66; 312 of 427 gives 73.06.
    """
    if total == 0:
        return ZERO_PCT
    basis_points = timely * 10_000 // total
    return (Decimal(basis_points) / 100).quantize(ZERO_PCT)


def timely_range(pct: Decimal, total: int) -> tuple[int, int]:
    """Return the range of timely counts whose truncated rate over total prints pct.

    The range is empty (low > high) when no whole number of records gives the rate.
    """
    basis_points = _basis_points(pct)
    low = -(-basis_points * total // 10_000)
    high = -(-(basis_points + 1) * total // 10_000) - 1
    return max(low, 0), min(high, total)


def _basis_points(pct: Decimal) -> int:
    return int((pct * 100).to_integral_value(rounding=ROUND_HALF_UP))


def _nearest_timely(pct: Decimal, total: int, low: int, high: int) -> int:
    """Return the t in [low, high] whose truncated rate is nearest to pct."""
    target = _basis_points(pct)
    ideal_low, _ = timely_range(pct, total)
    candidates = {low, high, min(max(ideal_low, low), high)}
    candidates.add(min(max(ideal_low - 1, low), high))

    def distance(t: int) -> tuple[int, int]:
        return abs(t * 10_000 // total - target), t

    return min(candidates, key=distance)


# ---------------------------------------------------------------- loading


def load_bulletin(directory: Path = BULLETIN_DIR) -> dict[int, BulletinTable]:
    """Read the four annex tables. Empty cells are 0, and percentages have no % sign."""
    tables: dict[int, BulletinTable] = {}
    for annex, filename in ANNEX_FILES.items():
        path = directory / filename
        if not path.is_file():
            raise BulletinError(f"bulletin table not found: {path}")
        tables[annex] = _read_table(annex, path)
    return tables


def _read_table(annex: int, path: Path) -> BulletinTable:
    printed_columns = tuple(
        column for column in ANNEX_COLUMNS[annex] if column != "other_types"
    )
    rows: dict[str, dict[str, Value]] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = set(printed_columns) - set(reader.fieldnames or ())
        if missing:
            raise BulletinError(f"{path}: missing columns {sorted(missing)}")
        for line, raw in enumerate(reader, start=2):
            name = (raw["unit_name"] or "").strip()
            if not name:
                raise BulletinError(f"{path}, line {line}: unit_name is empty")
            rows[name] = {
                column: _parse_cell(path, line, column, raw[column])
                for column in printed_columns
            }
    if TOTAL_ROW not in rows:
        raise BulletinError(f"{path}: the total row {TOTAL_ROW} is missing")
    return BulletinTable(annex, printed_columns, rows)


def _parse_cell(path: Path, line: int, column: str, text: str | None) -> Value:
    text = (text or "").strip()
    try:
        if column in DECIMAL_COLUMNS:
            return Decimal(text) if text else ZERO_PCT
        return int(text) if text else 0
    except (ValueError, InvalidOperation):
        raise BulletinError(
            f"{path}, line {line}, column {column}: {text!r} is not a number"
        ) from None


# ---------------------------------------------------------------- derivation


@dataclass
class _Ledger:
    """Accepted values of one printed row, with the first reason each one changed."""

    annex: int
    unit_name: str
    printed: Mapping[str, Value]
    accepted: dict[str, Value] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.accepted = dict(self.printed)

    def __getitem__(self, column: str) -> Value:
        return self.accepted[column]

    def limit(self, column: str, bound: int, reason: str) -> None:
        """Lower a count to bound when it is larger."""
        if self.accepted[column] > bound:
            self.reasons.setdefault(
                column, f"{column} {self.accepted[column]} {reason} ({bound})"
            )
            self.accepted[column] = bound

    def set(self, column: str, value: Value, reason: str) -> None:
        if self.accepted.get(column) != value:
            self.reasons.setdefault(column, reason)
            self.accepted[column] = value

    def cells(self) -> list[InconsistentCell]:
        return [
            InconsistentCell(
                self.annex,
                self.unit_name,
                column,
                self.printed[column],
                self.accepted[column],
                self.reasons[column],
            )
            for column in self.printed
            if self.printed[column] != self.accepted[column]
        ]


@dataclass
class _TimelyChoice:
    """Reproducible timely counts of one row: t4 and ty ranges and the Q1-Q3 room."""

    q4_low: int
    q4_high: int
    year_low: int
    year_high: int
    q1_q3_records: int
    q4: int = 0
    year: int = 0


def _apply_count_rules(row: _Ledger) -> None:
    """Apply rules 1 to 5 to the counts of an annex 1 or annex 3 row."""
    total = row["total_stock"]
    row.limit("year_stock", total, "is larger than total_stock")
    row.limit("q4_increment", row["year_stock"], "is larger than year_stock")
    row.limit("dp_stock", total, "is larger than total_stock")
    row.limit("dp_year_stock", row["dp_stock"], "is larger than dp_stock")
    row.limit("dp_year_stock", row["year_stock"], "is larger than year_stock")
    row.limit("dp_q4_increment", row["dp_year_stock"], "is larger than dp_year_stock")
    row.limit("dp_q4_increment", row["q4_increment"], "is larger than q4_increment")

    year, quarter = row["year_stock"], row["q4_increment"]
    row.limit(
        "dp_year_stock",
        row["dp_q4_increment"] + (year - quarter),
        "leaves a negative number of other records in 2018Q1-Q3: it can be at most "
        "dp_q4_increment plus year_stock minus q4_increment",
    )
    row.limit(
        "dp_stock",
        row["dp_year_stock"] + (total - year),
        "leaves a negative number of other records received outside 2018: it can be "
        "at most dp_year_stock plus total_stock minus year_stock",
    )
    dp_year, dp_quarter = row["dp_year_stock"], row["dp_q4_increment"]
    row.limit(
        "redblack_year",
        year - dp_year,
        "plus dp_year_stock is larger than year_stock: red/black records can be at "
        "most year_stock minus dp_year_stock",
    )
    row.limit("redblack_q4", row["redblack_year"], "is larger than redblack_year")
    row.limit(
        "redblack_q4",
        quarter - dp_quarter,
        "plus dp_q4_increment is larger than q4_increment",
    )
    row.limit(
        "redblack_year",
        row["redblack_q4"] + (year - quarter) - (dp_year - dp_quarter),
        "leaves more red/black records in 2018Q1-Q3 than the records of 2018Q1-Q3 "
        "left after double publicity",
    )


def _choose_rate_ranges(row: _Ledger) -> _TimelyChoice:
    """Apply rule 6: find the reproducible timely ranges and fix unreproducible rates."""
    dp_quarter = row["dp_q4_increment"]
    dp_year = row["dp_year_stock"]
    room = dp_year - dp_quarter

    q4_low, q4_high = _rate_range(
        row, "dp_q4_timeliness_pct", dp_quarter, 0, dp_quarter, "the fourth quarter's"
    )
    year_low, year_high = _rate_range(
        row, "dp_year_timeliness_pct", dp_year, q4_low, q4_high + room, "2018's"
    )
    return _TimelyChoice(q4_low, q4_high, year_low, year_high, room)


def _rate_range(
    row: _Ledger, column: str, total: int, low: int, high: int, period: str
) -> tuple[int, int]:
    printed = row[column]
    if total == 0:
        if printed != 0:
            row.set(column, ZERO_PCT, f"{column} {printed}% is printed over 0 records")
        return 0, 0
    ideal_low, ideal_high = timely_range(printed, total)
    feasible_low, feasible_high = max(ideal_low, low), min(ideal_high, high)
    if feasible_low <= feasible_high:
        return feasible_low, feasible_high
    chosen = _nearest_timely(printed, total, low, high)
    if ideal_low > ideal_high:
        reason = (
            f"{column} {printed}%: no whole number of timely records out of {total} "
            "gives this rate when truncated"
        )
    else:
        reason = (
            f"{column} {printed}% needs {ideal_low} to {ideal_high} timely records of "
            f"{total}, but {period} other cells allow only {low} to {high}"
        )
    row.set(column, truncated_pct(chosen, total), reason)
    return chosen, chosen


def _per_capita(total_stock: int, population_10k: Decimal) -> Decimal:
    if population_10k == 0:
        return ZERO_PCT
    ratio = Decimal(total_stock) / (population_10k * 10_000)
    return ratio.quantize(ZERO_PCT, rounding=ROUND_HALF_UP)


def _population(unit: Unit) -> Decimal:
    if unit.population_10k is None:
        return Decimal(0)
    return Decimal(repr(unit.population_10k))


def apportion(total: int, weights: Sequence[int]) -> list[int]:
    """Split total in proportion to weights, by largest remainder (ties: first).

    Equal weights are used when every weight is 0.
    """
    weights = [max(weight, 0) for weight in weights]
    if sum(weights) == 0:
        weights = [1] * len(weights)
    weight_sum = sum(weights)
    shares = [total * weight // weight_sum for weight in weights]
    remainders = sorted(
        range(len(weights)),
        key=lambda i: (-(total * weights[i] % weight_sum), i),
    )
    for i in remainders[: total - sum(shares)]:
        shares[i] += 1
    return shares


def _keep_or_apportion(total: int, printed: Sequence[int]) -> list[int]:
    if sum(printed) == total and min(printed, default=0) >= 0:
        return list(printed)
    return apportion(total, printed)


def _annex2_split(
    printed: Mapping[str, Value], accepted: _Ledger
) -> tuple[dict[str, Value], dict[str, str]]:
    """Split annex 1's double-publicity counts into annex 2's licences and penalties."""
    dp_quarter = accepted["dp_q4_increment"]
    dp_year = accepted["dp_year_stock"]
    dp_stock = accepted["dp_stock"]
    values: dict[str, Value] = {}

    q4 = _keep_or_apportion(dp_quarter, [printed["q4_license"], printed["q4_penalty"]])
    values["q4_license"], values["q4_penalty"] = q4

    early_columns = [f"q{q}_{c}" for q in (1, 2, 3) for c in ("license", "penalty")]
    early = _keep_or_apportion(
        dp_year - dp_quarter, [printed[column] for column in early_columns]
    )
    values.update(zip(early_columns, early, strict=True))

    for category in ("license", "penalty"):
        values[f"year_{category}"] = sum(
            values[f"q{q}_{category}"] for q in (1, 2, 3, 4)
        )
    outside = _keep_or_apportion(
        dp_stock - dp_year,
        [
            printed["current_license"] - values["year_license"],
            printed["current_penalty"] - values["year_penalty"],
        ],
    )
    values["current_license"] = values["year_license"] + outside[0]
    values["current_penalty"] = values["year_penalty"] + outside[1]

    printed_q4 = printed["q4_license"] + printed["q4_penalty"]
    printed_early = sum(printed[column] for column in early_columns)
    printed_outside = (
        printed["current_license"]
        + printed["current_penalty"]
        - printed["year_license"]
        - printed["year_penalty"]
    )
    reasons = {
        "q4": f"the fourth quarter's licences and penalties add up to {printed_q4}, "
        f"but annex 1's dp_q4_increment is {dp_quarter}",
        "early": f"2018Q1-Q3 licences and penalties add up to {printed_early}, but "
        f"annex 1 leaves {dp_year - dp_quarter} (dp_year_stock minus "
        "dp_q4_increment)",
        "year": "the year figure is the sum of the four quarters",
        "current": f"records received outside 2018 add up to {printed_outside}, but "
        f"annex 1 leaves {dp_stock - dp_year} (dp_stock minus dp_year_stock)",
    }
    column_reasons = {}
    for column in ANNEX_COLUMNS[2]:
        if column.startswith("q4_"):
            column_reasons[column] = reasons["q4"]
        elif column.startswith("q"):
            column_reasons[column] = reasons["early"]
        elif column.startswith("year_"):
            column_reasons[column] = reasons["year"]
        else:
            column_reasons[column] = reasons["current"]
    return values, column_reasons


def _split_evenly(total: int, parts: int) -> list[int]:
    return apportion(total, [1] * parts)


def derive_targets(
    tables: Mapping[int, BulletinTable] | None = None,
    units: Sequence[Unit] | None = None,
) -> BulletinTargets:
    """Derive atoms per unit and the inconsistent cells, by the module's rules.

    Inconsistent cells are listed annex by annex, in the registry's unit order, each
    annex's total row last.
    """
    tables = tables if tables is not None else load_bulletin()
    units = list(units) if units is not None else load_units()
    _check_names(tables, units)
    local = [unit for unit in units if unit.is_local]
    departments = [unit for unit in units if not unit.is_local]

    rows: dict[str, _Ledger] = {}
    choices: dict[str, _TimelyChoice] = {}
    for unit in units:
        rows[unit.unit_id], choices[unit.unit_id] = _derive_volume_row(tables, unit)
    total_1 = _derive_volume_total(tables[1], local, rows, choices)
    total_3 = _derive_volume_total(tables[3], departments, rows, choices)

    annex2_rows: dict[str, _Ledger] = {}
    atoms: dict[str, UnitAtoms] = {}
    for unit in units:
        split = None
        commitments: dict[str, int] = {}
        if unit.is_local:
            annex2_rows[unit.unit_id], split = _derive_annex2_row(
                tables[2], unit, rows[unit.unit_id]
            )
            commitments = _commitment_counts(tables[4].rows[unit.name_zh])
        atoms[unit.unit_id] = _build_atoms(
            unit.unit_id, rows[unit.unit_id], choices[unit.unit_id], split, commitments
        )
    annex2 = [annex2_rows[unit.unit_id] for unit in local]
    annex4 = [_annex4_ledger(tables[4].rows[u.name_zh], u.name_zh) for u in local]

    ordered = (
        [rows[unit.unit_id] for unit in local]
        + [total_1]
        + annex2
        + [_sum_ledger(2, tables[2].rows[TOTAL_ROW], annex2)]
        + [rows[unit.unit_id] for unit in departments]
        + [total_3]
        + annex4
        + [_sum_ledger(4, tables[4].rows[TOTAL_ROW], annex4)]
    )
    inconsistent = [cell for ledger in ordered for cell in ledger.cells()]
    logger.info(
        "derived record counts for %d units; %d printed bulletin cells contradict "
        "other cells and are listed in demo/inconsistent_cells.csv",
        len(atoms),
        len(inconsistent),
    )
    return BulletinTargets(atoms, inconsistent)


def _derive_volume_row(
    tables: Mapping[int, BulletinTable], unit: Unit
) -> tuple[_Ledger, _TimelyChoice]:
    """Apply rules 1 to 7 to a unit's annex 1 or annex 3 row."""
    annex = 1 if unit.is_local else 3
    row = _Ledger(annex, unit.name_zh, tables[annex].rows[unit.name_zh])
    _apply_count_rules(row)
    choice = _choose_rate_ranges(row)
    if unit.is_local:
        population = _population(unit)
        row.set(
            "per_capita",
            _per_capita(row["total_stock"], population),
            f"total_stock {row['total_stock']} over a population of {population} "
            "x 10,000 rounds half up to a different value",
        )
    return row, choice


def _derive_volume_total(
    table: BulletinTable,
    members: Sequence[Unit],
    rows: Mapping[str, _Ledger],
    choices: Mapping[str, _TimelyChoice],
) -> _Ledger:
    """Sum the unit rows into the total row and fix every unit's timely counts."""
    total = _total_ledger(table, [rows[unit.unit_id] for unit in members])
    if "population_10k" in table.columns:
        total.set(
            "population_10k",
            sum((_population(unit) for unit in members), Decimal(0)),
            "the units' populations add up to a different value",
        )
    _choose_pooled_timely(total, [choices[unit.unit_id] for unit in members])
    if "per_capita" in table.columns:
        total.set(
            "per_capita",
            _per_capita(total["total_stock"], total["population_10k"]),
            "total_stock over the summed population rounds half up to a different "
            "value",
        )
    return total


def _derive_annex2_row(
    table: BulletinTable, unit: Unit, volume_row: _Ledger
) -> tuple[_Ledger, dict[str, Value]]:
    printed = table.rows[unit.name_zh]
    split, reasons = _annex2_split(printed, volume_row)
    row = _Ledger(2, unit.name_zh, printed)
    for column, value in split.items():
        row.set(column, value, reasons[column])
    return row, split


def _check_names(tables: Mapping[int, BulletinTable], units: Sequence[Unit]) -> None:
    for annex, table in tables.items():
        expected = {unit.name_zh for unit in units if unit.is_local == (annex != 3)}
        found = set(table.rows) - {TOTAL_ROW}
        if found != expected:
            raise BulletinError(
                f"annex {annex} rows do not match the registry: missing "
                f"{sorted(expected - found)}, unknown {sorted(found - expected)}"
            )


def _total_ledger(table: BulletinTable, rows: Sequence[_Ledger]) -> _Ledger:
    """Sum the count columns of the unit rows into the table's total row."""
    total = _Ledger(table.annex, TOTAL_ROW, table.rows[TOTAL_ROW])
    for column in table.columns:
        if column in DECIMAL_COLUMNS:
            continue
        value = sum(row[column] for row in rows)
        total.set(
            column,
            value,
            f"the total row is not the sum of the unit rows, whose accepted values "
            f"add up to {value}",
        )
    return total


def _sum_ledger(
    annex: int, printed: Mapping[str, Value], rows: Sequence[_Ledger]
) -> _Ledger:
    total = _Ledger(annex, TOTAL_ROW, printed)
    for column in printed:
        value = sum(row[column] for row in rows)
        total.set(
            column,
            value,
            f"the total row is not the sum of the unit rows, whose accepted values "
            f"add up to {value}",
        )
    return total


def _choose_pooled_timely(total: _Ledger, choices: Sequence[_TimelyChoice]) -> None:
    """Pick each unit's t4 and ty so that the pooled total rates print as printed."""
    # A unit's t4 must leave some ty in its year range: ty - room <= t4 <= ty.
    q4_bounds = [
        (max(c.q4_low, c.year_low - c.q1_q3_records), min(c.q4_high, c.year_high))
        for c in choices
    ]
    q4_values = _distribute_pooled(
        total, "dp_q4_timeliness_pct", total["dp_q4_increment"], q4_bounds
    )
    year_bounds = []
    for choice, q4 in zip(choices, q4_values, strict=True):
        choice.q4 = q4
        year_bounds.append(
            (
                max(choice.year_low, q4),
                min(choice.year_high, q4 + choice.q1_q3_records),
            )
        )
    year_values = _distribute_pooled(
        total, "dp_year_timeliness_pct", total["dp_year_stock"], year_bounds
    )
    for choice, year in zip(choices, year_values, strict=True):
        choice.year = year


def _distribute_pooled(
    total: _Ledger, column: str, records: int, bounds: Sequence[tuple[int, int]]
) -> list[int]:
    low_sum = sum(low for low, _ in bounds)
    high_sum = sum(high for _, high in bounds)
    printed = total[column]
    if records == 0:
        target = 0
        if printed != 0:
            total.set(
                column, ZERO_PCT, f"{column} {printed}% is printed over 0 records"
            )
    else:
        ideal_low, ideal_high = timely_range(printed, records)
        low, high = max(ideal_low, low_sum), min(ideal_high, high_sum)
        if low <= high:
            target = low
        else:
            target = _nearest_timely(printed, records, low_sum, high_sum)
            if ideal_low > ideal_high:
                needed = f"no whole number of timely records out of {records} gives it"
            else:
                needed = f"it needs {ideal_low} to {ideal_high} timely records"
            total.set(
                column,
                truncated_pct(target, records),
                f"pooled {column} {printed}%: {needed}, and the unit rows allow "
                f"{low_sum} to {high_sum} of {records}",
            )
    values = [low for low, _ in bounds]
    remaining = target - low_sum
    for i, (low, high) in enumerate(bounds):
        step = min(remaining, high - low)
        values[i] += step
        remaining -= step
    return values


def _commitment_counts(printed: Mapping[str, Value]) -> dict[str, int]:
    return {kind: int(printed[column]) for column, kind in ANNEX4_TYPE_COLUMNS.items()}


def _annex4_ledger(printed: Mapping[str, Value], name: str) -> _Ledger:
    row = _Ledger(4, name, printed)
    value = sum(int(printed[column]) for column in ANNEX4_TYPE_COLUMNS)
    row.set("total", value, f"the types add up to {value}")
    return row


def _build_atoms(
    unit_id: str,
    row: _Ledger,
    choice: _TimelyChoice,
    annex2: Mapping[str, Value] | None,
    commitments: Mapping[str, int],
) -> UnitAtoms:
    """Turn a row's accepted counts into atoms per period of ``PERIODS``."""
    total, year, quarter = row["total_stock"], row["year_stock"], row["q4_increment"]
    dp_stock, dp_year, dp_quarter = (
        row["dp_stock"],
        row["dp_year_stock"],
        row["dp_q4_increment"],
    )
    rb_year, rb_quarter = row["redblack_year"], row["redblack_q4"]

    if annex2 is not None:
        license_ = [annex2[f"q{q}_license"] for q in (1, 2, 3, 4)]
        penalty = [annex2[f"q{q}_penalty"] for q in (1, 2, 3, 4)]
        license_.append(annex2["current_license"] - annex2["year_license"])
        penalty.append(annex2["current_penalty"] - annex2["year_penalty"])
    else:
        # The bulletin prints no licence/penalty split for departments. A quarter of
        # each period's double-publicity records are penalties, and the records of
        # 2018Q1-Q3 are split evenly over the three quarters.
        periods = _split_evenly(dp_year - dp_quarter, 3)
        periods += [dp_quarter, dp_stock - dp_year]
        penalty = [n // 4 for n in periods]
        license_ = [n - p for n, p in zip(periods, penalty, strict=True)]

    red_black = _split_evenly(rb_year - rb_quarter, 3) + [rb_quarter, 0]
    red = [(n + 1) // 2 for n in red_black]
    black = [n - r for n, r in zip(red_black, red, strict=True)]

    other_q1_q3 = (year - quarter) - (dp_year - dp_quarter) - (rb_year - rb_quarter)
    other = _split_evenly(other_q1_q3, 3) + [
        quarter - dp_quarter - rb_quarter,
        (total - year) - (dp_stock - dp_year),
    ]
    if min(other) < 0:
        raise AssertionError(
            f"{unit_id}: the rules left a negative count of other records {other}"
        )

    dp_by_period = [n + p for n, p in zip(license_, penalty, strict=True)]
    timely_early = apportion(choice.year - choice.q4, dp_by_period[:3])
    timely = tuple(timely_early) + (choice.q4, dp_by_period[OUTSIDE_2018] // 2)

    commitment_atoms = {
        kind: tuple(_split_evenly(commitments.get(kind, 0), 4)) + (0,)
        for kind in COMMITMENT_TYPE_ORDER
    }
    counts = {
        "license": tuple(license_),
        "penalty": tuple(penalty),
        "red_list": tuple(red),
        "black_list": tuple(black),
        "other": tuple(other),
    }
    return UnitAtoms(unit_id, counts, timely, commitment_atoms)


# ---------------------------------------------------------------- expected annexes


def unit_figures(atoms: UnitAtoms) -> dict[str, Value]:
    """Compute the annex 1/3 volume figures of one unit from its atoms."""
    record_total = [
        sum(atoms.counts[category][p] for category in RECORD_CATEGORIES)
        for p in range(len(PERIODS))
    ]
    dp = [atoms.double_publicity(p) for p in range(len(PERIODS))]
    red_black = [
        atoms.counts["red_list"][p] + atoms.counts["black_list"][p]
        for p in range(len(PERIODS))
    ]
    dp_year = sum(dp[p] for p in YEAR_2018)
    return {
        "total_stock": sum(record_total),
        "q4_increment": record_total[Q4],
        "year_stock": sum(record_total[p] for p in YEAR_2018),
        "dp_stock": sum(dp),
        "dp_q4_increment": dp[Q4],
        "dp_q4_timeliness_pct": truncated_pct(atoms.timely[Q4], dp[Q4]),
        "dp_year_stock": dp_year,
        "dp_year_timeliness_pct": truncated_pct(
            sum(atoms.timely[p] for p in YEAR_2018), dp_year
        ),
        "redblack_q4": red_black[Q4],
        "redblack_year": sum(red_black[p] for p in YEAR_2018),
    }


def _annex2_figures(atoms: UnitAtoms) -> dict[str, Value]:
    values: dict[str, Value] = {}
    for quarter in (1, 2, 3, 4):
        for category in ("license", "penalty"):
            values[f"q{quarter}_{category}"] = atoms.counts[category][quarter - 1]
    for category in ("license", "penalty"):
        values[f"year_{category}"] = sum(atoms.counts[category][p] for p in YEAR_2018)
    for category in ("license", "penalty"):
        values[f"current_{category}"] = atoms.total(category)
    return values


def _annex4_figures(atoms: UnitAtoms) -> dict[str, Value]:
    values: dict[str, Value] = {
        column: sum(atoms.commitments.get(kind, ()))
        for column, kind in ANNEX4_TYPE_COLUMNS.items()
    }
    values["other_types"] = sum(
        sum(atoms.commitments.get(kind, ())) for kind in OTHER_COMMITMENT_TYPES
    )
    values["total"] = sum(values.values())
    return values


def expected_annexes(
    atoms: Mapping[str, UnitAtoms], units: Sequence[Unit] | None = None
) -> dict[int, dict[str, dict[str, Value]]]:
    """Compute every annex cell for the units in atoms, keyed annex, unit name, column.

    Rates are percentages truncated to 2 decimals (an annex cell contains them divided
    by 100). The total row 合计 sums the given units, and the population of annex 1's total
    row sums every district and county of the registry, because the annex prints a row
    with its population for a unit with nothing delivered too.
    """
    units = list(units) if units is not None else load_units()
    by_id = {unit.unit_id: unit for unit in units}
    unknown = sorted(set(atoms) - set(by_id))
    if unknown:
        raise BulletinError(f"units not in the registry: {unknown}")
    ordered = [unit for unit in units if unit.unit_id in atoms]
    annexes: dict[int, dict[str, dict[str, Value]]] = {1: {}, 2: {}, 3: {}, 4: {}}
    for unit in ordered:
        unit_atoms = atoms[unit.unit_id]
        figures = unit_figures(unit_atoms)
        if unit.is_local:
            population = _population(unit)
            figures["population_10k"] = population
            figures["per_capita"] = _per_capita(figures["total_stock"], population)
            annexes[1][unit.name_zh] = figures
            annexes[2][unit.name_zh] = _annex2_figures(unit_atoms)
            annexes[4][unit.name_zh] = _annex4_figures(unit_atoms)
        else:
            annexes[3][unit.name_zh] = figures

    local_atoms = [atoms[u.unit_id] for u in ordered if u.is_local]
    department_atoms = [atoms[u.unit_id] for u in ordered if not u.is_local]
    annexes[1][TOTAL_ROW] = _pooled_figures(local_atoms)
    population = sum((_population(u) for u in units if u.is_local), Decimal(0))
    annexes[1][TOTAL_ROW]["population_10k"] = population
    annexes[1][TOTAL_ROW]["per_capita"] = _per_capita(
        annexes[1][TOTAL_ROW]["total_stock"], population
    )
    annexes[3][TOTAL_ROW] = _pooled_figures(department_atoms)
    for annex in (2, 4):
        annexes[annex][TOTAL_ROW] = {
            column: sum(
                annexes[annex][name][column]
                for name in annexes[annex]
                if name != TOTAL_ROW
            )
            for column in ANNEX_COLUMNS[annex]
        }
    return annexes


def _pooled_figures(members: Sequence[UnitAtoms]) -> dict[str, Value]:
    figures: dict[str, Value] = {
        column: sum(unit_figures(a)[column] for a in members)
        for column in VOLUME_COLUMNS
        if column not in RATE_COLUMNS
    }
    timely_q4 = sum(a.timely[Q4] for a in members)
    timely_year = sum(a.timely[p] for a in members for p in YEAR_2018)
    figures["dp_q4_timeliness_pct"] = truncated_pct(
        timely_q4, figures["dp_q4_increment"]
    )
    figures["dp_year_timeliness_pct"] = truncated_pct(
        timely_year, figures["dp_year_stock"]
    )
    return {column: figures[column] for column in VOLUME_COLUMNS}


def select_reproduction_units(
    tables: Mapping[int, BulletinTable] | None = None,
    units: Sequence[Unit] | None = None,
) -> list[str]:
    """Return the ids of the districts, counties and small departments.

    A department is included when its bulletin total_stock is under 100,000; the ids
    keep the registry's order.
    """
    tables = tables if tables is not None else load_bulletin()
    units = list(units) if units is not None else load_units()
    departments = tables[3].rows
    return [
        unit.unit_id
        for unit in units
        if unit.is_local
        or departments[unit.name_zh]["total_stock"] < REPRODUCTION_STOCK_LIMIT
    ]


# --------------------------------------------------------------------------- comparison

# The first row of unit data in an annex workbook, below the title and two header rows.
FIRST_DATA_ROW = 4


@dataclass
class AnnexComparison:
    """Annex cells compared with the printed bulletin and with the derived values."""

    printed_compared: int = 0
    printed_mismatches: list[str] = field(default_factory=list)
    derived_compared: int = 0
    derived_mismatches: list[str] = field(default_factory=list)


def _as_printed(column: str, value) -> Decimal:
    """Turn a workbook cell into the number the bulletin prints."""
    if value is None:
        return Decimal(0)
    if column.endswith("_pct"):
        return (Decimal(str(value)) * 100).quantize(Decimal("0.01"))
    return Decimal(str(value))


def compare_annexes(
    workbooks: Mapping[int, Path],
    expected_path: Path,
    inconsistent_path: Path,
    unit_names: set[str] | None = None,
    with_printed: bool = True,
) -> AnnexComparison:
    """Compare annex workbooks of 2018Q4 with the bulletin, cell by cell.

    Every cell is compared with the value that the demo generator derived for the
    records it wrote (``expected_path``). With ``with_printed`` (scale 1), every cell
    that ``inconsistent_path`` does not list is also compared with the printed
    bulletin. ``unit_names`` limits the comparison to some units; annex 3's total is
    then left out, since it covers all departments.
    """
    import json

    import openpyxl

    skipped = set()
    with inconsistent_path.open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            skipped.add((int(row["annex"]), row["unit_name"], row["column"]))
    expected = json.loads(expected_path.read_text(encoding="utf-8"))
    result = AnnexComparison()
    for annex, path in sorted(workbooks.items()):
        sheet = openpyxl.load_workbook(path, read_only=True).active
        rows = {
            row[1]: row
            for row in sheet.iter_rows(min_row=FIRST_DATA_ROW, values_only=True)
            if row[1] is not None
        }

        def in_scope(name: str, annex: int = annex) -> bool:
            if name == "合计":
                return unit_names is None or annex != 3
            return unit_names is None or name in unit_names

        for name, values in expected[str(annex)].items():
            if not in_scope(name):
                continue
            for offset, column in enumerate(ANNEX_COLUMNS[annex]):
                actual = _as_printed(column, rows[name][2 + offset])
                result.derived_compared += 1
                if actual != Decimal(str(values[column])):
                    result.derived_mismatches.append(
                        f"annex {annex} {name} {column}: {actual} != derived "
                        f"{values[column]}"
                    )
        if not with_printed:
            continue
        with (BULLETIN_DIR / ANNEX_FILES[annex]).open(encoding="utf-8") as handle:
            printed = {row["unit_name"]: row for row in csv.DictReader(handle)}
        for name, values in printed.items():
            if not in_scope(name):
                continue
            if name not in rows:
                result.printed_mismatches.append(f"annex {annex} has no row {name}")
                continue
            for offset, column in enumerate(ANNEX_COLUMNS[annex]):
                # 其他类型 (other_types) is not a column of the printed bulletin.
                if column not in values or (annex, name, column) in skipped:
                    continue
                result.printed_compared += 1
                actual = _as_printed(column, rows[name][2 + offset])
                text = values[column].strip()
                if actual != (Decimal(text) if text else Decimal(0)):
                    result.printed_mismatches.append(
                        f"annex {annex} {name} {column}: {actual} != printed {text}"
                    )
    return result
