"""The registry of reporting units: 14 districts and counties, 71 city departments."""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass
from pathlib import Path

from credit_etl.settings import SHIPPED_DATA

UNITS_CSV = SHIPPED_DATA / "units.csv"
KINDS = ("district", "county", "department")
LOCAL_KINDS = ("district", "county")
_UNIT_ID = re.compile(r"^[a-z][a-z0-9_]*$")


class RegistryError(ValueError):
    """The unit registry file is invalid."""


@dataclass(frozen=True)
class Unit:
    unit_id: str
    name_zh: str
    name_en: str
    kind: str
    division_code: str | None
    population_10k: float | None
    annex_order: int

    @property
    def is_local(self) -> bool:
        """True for districts and counties, which annexes 1, 2 and 4 report."""
        return self.kind in LOCAL_KINDS


def load_units(path: Path = UNITS_CSV) -> list[Unit]:
    """Read and validate the registry; raise RegistryError naming the bad line."""
    units: list[Unit] = []
    seen_ids: dict[str, int] = {}
    seen_names: dict[str, int] = {}
    with path.open(encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        expected = {
            "unit_id",
            "name_zh",
            "name_en",
            "kind",
            "division_code",
            "population_10k",
            "annex_order",
        }
        missing = expected - set(reader.fieldnames or ())
        if missing:
            raise RegistryError(
                f"{path}: missing columns {sorted(missing)}; "
                f"the header must name {sorted(expected)}"
            )
        for line, row in enumerate(reader, start=2):
            units.append(_parse_unit(path, line, row, seen_ids, seen_names))
    if not units:
        raise RegistryError(f"{path}: no units; add one line per reporting unit")
    return units


def _parse_unit(
    path: Path,
    line: int,
    row: dict[str, str],
    seen_ids: dict[str, int],
    seen_names: dict[str, int],
) -> Unit:
    where = f"{path}, line {line}"
    unit_id = (row["unit_id"] or "").strip()
    if not _UNIT_ID.match(unit_id):
        raise RegistryError(
            f"{where}, column unit_id: {unit_id!r} is invalid; use lower-case "
            "letters, digits and underscores, starting with a letter"
        )
    if unit_id in seen_ids:
        raise RegistryError(
            f"{where}, column unit_id: {unit_id!r} repeats line {seen_ids[unit_id]}; "
            "unit ids must be unique"
        )
    seen_ids[unit_id] = line

    name_zh = (row["name_zh"] or "").strip()
    if not name_zh:
        raise RegistryError(f"{where}, column name_zh: empty; give the Chinese name")
    if name_zh in seen_names:
        raise RegistryError(
            f"{where}, column name_zh: {name_zh!r} repeats line "
            f"{seen_names[name_zh]}; names must be unique"
        )
    seen_names[name_zh] = line

    kind = (row["kind"] or "").strip()
    if kind not in KINDS:
        raise RegistryError(
            f"{where}, column kind: {kind!r} is not one of {', '.join(KINDS)}"
        )

    population = _parse_population(where, kind, (row["population_10k"] or "").strip())

    try:
        annex_order = int(row["annex_order"])
    except (TypeError, ValueError):
        raise RegistryError(
            f"{where}, column annex_order: {row['annex_order']!r} is not a whole number"
        ) from None

    return Unit(
        unit_id=unit_id,
        name_zh=name_zh,
        name_en=(row["name_en"] or "").strip(),
        kind=kind,
        division_code=(row["division_code"] or "").strip() or None,
        population_10k=population,
        annex_order=annex_order,
    )


def _parse_population(where: str, kind: str, text: str) -> float | None:
    if kind not in LOCAL_KINDS:
        return float(text) if text else None
    if not text:
        raise RegistryError(
            f"{where}, column population_10k: empty; districts and counties need "
            "their resident population in units of 10,000"
        )
    try:
        value = float(text)
    except ValueError:
        raise RegistryError(
            f"{where}, column population_10k: {text!r} is not a number"
        ) from None
    if value <= 0:
        raise RegistryError(
            f"{where}, column population_10k: {text!r} must be greater than zero"
        )
    return value


def units_by_id(units: list[Unit] | None = None) -> dict[str, Unit]:
    return {unit.unit_id: unit for unit in (units or load_units())}
