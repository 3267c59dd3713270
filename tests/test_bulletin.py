"""Rules that turn the shipped bulletin tables into consistent record counts."""

from __future__ import annotations

import shutil
from decimal import Decimal
from pathlib import Path

import pytest

from credit_etl.bulletin import (
    ANNEX_COLUMNS,
    BULLETIN_DIR,
    OUTSIDE_2018,
    Q4,
    TOTAL_ROW,
    BulletinError,
    UnitAtoms,
    apportion,
    derive_targets,
    expected_annexes,
    load_bulletin,
    scale_count,
    select_reproduction_units,
    timely_range,
    truncated_pct,
)
from credit_etl.registry import load_units


@pytest.fixture(scope="module")
def tables():
    return load_bulletin()


@pytest.fixture(scope="module")
def targets():
    return derive_targets()


@pytest.fixture(scope="module")
def listed(targets):
    return {(c.annex, c.unit_name, c.column): c for c in targets.inconsistent}


# Each inconsistency that the metric definitions name, as the cells of which at
# least one must be listed: (annex, unit name, column).
SPEC_INCONSISTENCIES = [
    [(1, TOTAL_ROW, "q4_increment")],
    [(1, TOTAL_ROW, "dp_q4_increment")],
    [(1, TOTAL_ROW, "year_stock")],
    [(1, TOTAL_ROW, "population_10k")],
    [(3, TOTAL_ROW, "total_stock")],
    [(3, TOTAL_ROW, "dp_stock")],
    [(1, "凤泉区", "dp_year_stock")],
    [(1, "新乡县", "dp_year_stock")],
    [(3, "首创水务", "dp_q4_increment")],
    [(3, "市妇联", "dp_q4_increment")],
    [(3, "市民族宗教委", "dp_q4_increment")],
    [(3, "人民银行新乡市中心支行", "dp_year_stock")],
    [(3, "市档案局", "dp_stock")],
    [(1, "高新区", "redblack_year")],
    [(1, "红旗区", "dp_stock"), (1, "红旗区", "dp_year_stock")],
    [(1, "封丘县", "dp_stock"), (1, "封丘县", "dp_year_stock")],
    [(3, "市地震局", "dp_year_timeliness_pct")],
    [(3, "市林业局", "dp_year_timeliness_pct")],
    [(1, "新乡县", "dp_year_timeliness_pct")],
    [(3, "市烟草局", "dp_year_timeliness_pct")],
    [(3, "市住建委", "dp_year_timeliness_pct")],
    [(3, "市农牧局", "dp_year_timeliness_pct")],
    [(3, "市质监局", "dp_year_timeliness_pct")],
    [(3, "市文广新局", "dp_year_timeliness_pct")],
    [(3, "市城乡规划局", "dp_year_timeliness_pct")],
    [(3, "市发改委", "dp_year_timeliness_pct")],
    [(3, TOTAL_ROW, "dp_q4_timeliness_pct")],
    [(2, "红旗区", "year_license"), (2, "红旗区", "year_penalty")],
    [(2, "封丘县", "year_license"), (1, "封丘县", "dp_year_stock")],
]


def test_truncated_pct_examples():
    assert truncated_pct(22, 24) == Decimal("91.66")
    assert truncated_pct(312, 427) == Decimal("73.06")
    assert truncated_pct(1, 1) == Decimal("100.00")
    assert truncated_pct(0, 0) == Decimal("0.00")
    assert truncated_pct(2, 3) == Decimal("66.66")


def test_timely_range_reproducible_rates():
    assert timely_range(Decimal("91.66"), 24) == (22, 22)
    low, high = timely_range(Decimal("73.06"), 427)
    assert low <= 312 <= high
    assert timely_range(Decimal("100"), 67) == (67, 67)
    assert timely_range(Decimal("0"), 10) == (0, 0)


def test_timely_range_empty_when_unreproducible():
    low, high = timely_range(Decimal("39.13"), 1631)
    assert low > high
    low, high = timely_range(Decimal("88.23"), 19)
    assert low > high


def test_timely_range_matches_brute_force():
    for total in (1, 7, 19, 24, 213, 427):
        for timely in range(total + 1):
            low, high = timely_range(truncated_pct(timely, total), total)
            assert low <= timely <= high
            for other in (low, high):
                assert truncated_pct(other, total) == truncated_pct(timely, total)


def test_apportion_largest_remainder():
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(7, [2, 0, 5]) == [2, 0, 5]
    assert apportion(5, [0, 0]) == [3, 2]
    assert sum(apportion(1209, [732, 3, 0, 0, 964, 51])) == 1209


def test_scale_count_rounds_half_up():
    assert scale_count(5, 0.1) == 1
    assert scale_count(25, 0.1) == 3
    assert scale_count(24, 0.1) == 2
    assert scale_count(90_145_290, 1.0) == 90_145_290


def test_scaled_atoms_cap_timely():
    atoms = UnitAtoms(
        "unit",
        {
            "license": (1, 0, 0, 1, 0),
            "penalty": (0, 0, 0, 1, 0),
            "red_list": (0,) * 5,
            "black_list": (0,) * 5,
            "other": (0,) * 5,
        },
        (1, 0, 0, 2, 0),
        {},
    )
    scaled = atoms.scaled(0.4)
    assert scaled.counts["license"][Q4] == 0
    assert scaled.timely[Q4] == 0


def test_fengquan_dp_year_stock_listed(listed):
    cell = listed[(1, "凤泉区", "dp_year_stock")]
    assert cell.printed == 9696
    assert cell.producible == 9615
    assert "year_stock" in cell.reason


def test_weibin_has_no_listed_cell(targets):
    assert [c for c in targets.inconsistent if c.unit_name == "卫滨区"] == []


@pytest.mark.parametrize(
    "alternatives", SPEC_INCONSISTENCIES, ids=lambda cells: f"{cells[0]}"
)
def test_spec_inconsistency_listed(listed, alternatives):
    assert any(cell in listed for cell in alternatives)


def test_unreproducible_rate_replaced_by_nearest(listed):
    cell = listed[(3, "市发改委", "dp_year_timeliness_pct")]
    assert cell.printed == Decimal("88.23")
    assert cell.producible == Decimal("89.47")  # 17 of 19
    cell = listed[(3, "市地震局", "dp_year_timeliness_pct")]
    assert cell.producible == Decimal("0.00")


def test_reproducible_rates_not_listed(listed):
    assert (1, "高新区", "dp_q4_timeliness_pct") not in listed
    assert (3, "市人社局", "dp_year_timeliness_pct") not in listed


def test_listed_cells_name_printed_columns(tables, targets):
    for cell in targets.inconsistent:
        assert cell.column in tables[cell.annex].columns
        assert cell.unit_name in tables[cell.annex].rows
        assert cell.printed == tables[cell.annex].rows[cell.unit_name][cell.column]
        assert cell.printed != cell.producible
        assert cell.reason


def test_expected_annexes_reproduce_bulletin(tables, targets, listed):
    expected = expected_annexes(targets.atoms)
    for annex, table in tables.items():
        for name, row in table.rows.items():
            for column, printed in row.items():
                cell = listed.get((annex, name, column))
                want = cell.producible if cell else printed
                assert expected[annex][name][column] == want, (annex, name, column)


def test_expected_annexes_columns(targets):
    expected = expected_annexes(targets.atoms)
    for annex, rows in expected.items():
        for row in rows.values():
            assert tuple(row) == ANNEX_COLUMNS[annex]
    assert expected[4][TOTAL_ROW]["other_types"] == 0
    assert expected[4][TOTAL_ROW]["total"] == 958


def test_atoms_are_consistent(targets):
    for atoms in targets.atoms.values():
        for values in atoms.counts.values():
            assert min(values) >= 0
        for period, timely in enumerate(atoms.timely):
            assert 0 <= timely <= atoms.double_publicity(period)
        assert atoms.counts["red_list"][OUTSIDE_2018] == 0
        for values in atoms.commitments.values():
            assert values[OUTSIDE_2018] == 0


def test_total_population_sums_registry():
    expected = expected_annexes({"weibin": derive_targets().atoms["weibin"]})
    assert expected[1][TOTAL_ROW]["population_10k"] == Decimal("500.10")
    assert expected[1][TOTAL_ROW]["total_stock"] == 58316


def test_select_reproduction_units(tables):
    unit_ids = select_reproduction_units()
    units = {unit.unit_id: unit for unit in load_units()}
    local = [unit_id for unit_id in unit_ids if units[unit_id].is_local]
    assert len(local) == 14
    for unit_id in unit_ids:
        if not units[unit_id].is_local:
            stock = tables[3].rows[units[unit_id].name_zh]["total_stock"]
            assert stock < 100_000
    assert "capital_water" in unit_ids
    assert "hrss" not in unit_ids
    assert "tax" not in unit_ids


def test_missing_table_raises(tmp_path: Path):
    with pytest.raises(BulletinError, match="not found"):
        load_bulletin(tmp_path)


def test_bad_cell_raises(tmp_path: Path):
    shutil.copytree(BULLETIN_DIR, tmp_path, dirs_exist_ok=True)
    path = tmp_path / "annex4_commitments.csv"
    path.write_text(
        path.read_text(encoding="utf-8").replace("475", "4x5"), encoding="utf-8"
    )
    with pytest.raises(BulletinError, match="line 2, column voluntary"):
        load_bulletin(tmp_path)
