"""Annex workbooks written from a real DuckDB file and read back with openpyxl."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import openpyxl
import pytest
from openpyxl.worksheet.worksheet import Worksheet

from credit_etl import annexes
from credit_etl.annexes import (
    ANNEXES,
    MissingFiguresError,
    annex_rows,
    display_width,
    round_per_capita,
    truncate_rate,
    write_annexes,
)
from credit_etl.periods import Quarter
from credit_etl.registry import load_units
from credit_etl.warehouse import FIGURE_COLUMNS

Q4 = Quarter(2018, 4)
Q2 = Quarter(2019, 2)

# The figures step's count columns, in its table order.
COUNT_COLUMNS = FIGURE_COLUMNS

# Department names that a spreadsheet would run as formulas if typed in.
FORMULA_NAMES = {
    "radio_regulation": "@SUM(A1:A2)",
    "customs": "=1+2",
    "river_affairs": "+86电话",
    "state_security": "-5",
}

# Hand-made figures for 2018Q4. Units left out have no unit_figures row at all.
# hongqi ties muye and huojia ties weihui on total stock. In both pairs the unit later
# in annex_order comes first by unit_id, so only annex_order can rank them.
Q4_FIGURES: dict[str, dict[str, int]] = {
    "hongqi": {"total_stock": 10065, "quarter_increment": 367, "year_stock": 2117},
    "weibin": {
        "total_stock": 58316,
        "quarter_increment": 20079,
        "year_stock": 57689,
        "dp_stock": 58287,
        "dp_quarter_increment": 24,
        "dp_quarter_timely": 22,
        "dp_year_stock": 57660,
        "dp_year_timely": 12241,
        "redblack_year": 29,
        "license_q1": 255,
        "penalty_q1": 20,
        "license_q4": 20010,
        "penalty_q4": 69,
        "license_year": 57545,
        "penalty_year": 115,
        "license_stock": 58123,
        "penalty_stock": 164,
        "commitment_voluntary": 10,
        "commitment_total": 10,
    },
    "muye": {
        "total_stock": 10065,
        "license_stock": 30226,
        "penalty_stock": 144,
    },
    "gaoxin": {
        "total_stock": 1500,
        "dp_stock": 1400,
        "dp_quarter_increment": 427,
        "dp_quarter_timely": 312,
        "dp_year_stock": 2436,
        "dp_year_timely": 1498,
        "redblack_quarter": 1,
        "redblack_year": 2,
        "commitment_voluntary": 9,
        "commitment_self_discipline": 21,
        "commitment_total": 30,
    },
    "jingkai": {
        "total_stock": 1366,
        "commitment_voluntary": 18,
        "commitment_approval_substitute": 2,
        "commitment_self_discipline": 4,
        "commitment_other_types": 3,
        "commitment_total": 27,
    },
    "pingyuan": {},
    "fengqiu": {"total_stock": 670239, "quarter_increment": 660658},
    "yanjin": {
        "total_stock": 398429,
        "license_stock": 10432,
        "penalty_stock": 1652,
        "commitment_voluntary": 475,
        "commitment_self_discipline": 89,
        "commitment_total": 564,
    },
    "weihui": {
        "total_stock": 25932,
        "license_stock": 12000,
        "penalty_stock": 84,
        "commitment_total": 0,
    },
    "huojia": {
        "total_stock": 25932,
        "license_stock": 20228,
        "penalty_stock": 5001,
    },
    "huixian": {"total_stock": 20518},
    "yuanyang": {"commitment_voluntary": 188, "commitment_total": 194},
    "xinxiang_county": {"total_stock": 5769},
    "hrss": {
        "total_stock": 90145290,
        "dp_stock": 84,
        "dp_quarter_increment": 1,
        "dp_quarter_timely": 1,
        "dp_year_stock": 24,
        "dp_year_timely": 22,
        "redblack_quarter": 59,
        "redblack_year": 59,
    },
    "housing_fund": {"total_stock": 16024531},
    "china_mobile": {"total_stock": 7497473},
    "public_security": {"total_stock": 7497473, "dp_year_stock": 117605},
}
# hongqi gets its commitments here to tie gaoxin (30) in annex 4.
Q4_FIGURES["hongqi"].update(commitment_voluntary=7, commitment_total=30)

Q2_FIGURES: dict[str, dict[str, int]] = {
    "weibin": {"total_stock": 100},
    "hrss": {"total_stock": 200},
}

FIGURE_DDL = ",\n".join(f"{name} BIGINT NOT NULL" for name in COUNT_COLUMNS)


def _figures_table_ddl(table: str, key_column: str) -> str:
    return f"""
        CREATE TABLE {table} (
            period VARCHAR NOT NULL,
            cutoff DATE NOT NULL,
            {key_column} VARCHAR NOT NULL,
            {FIGURE_DDL},
            dp_quarter_timeliness DOUBLE,
            dp_year_timeliness DOUBLE,
            population_10k DOUBLE,
            per_capita DOUBLE,
            PRIMARY KEY (period, {key_column})
        )
    """


def _rate(timely: int, total: int) -> float | None:
    return timely / total if total else None


def _figures_row(
    quarter: Quarter, key: str, counts: dict[str, int], population: float | None
) -> list[Any]:
    values = [counts.get(name, 0) for name in COUNT_COLUMNS]
    per_capita = None
    if population:
        per_capita = counts.get("total_stock", 0) / (population * 10_000)
    return [
        quarter.label,
        quarter.deadline(),
        key,
        *values,
        _rate(
            counts.get("dp_quarter_timely", 0), counts.get("dp_quarter_increment", 0)
        ),
        _rate(counts.get("dp_year_timely", 0), counts.get("dp_year_stock", 0)),
        population,
        per_capita,
    ]


def _sum_counts(figures: list[dict[str, int]]) -> dict[str, int]:
    return {name: sum(f.get(name, 0) for f in figures) for name in COUNT_COLUMNS}


def _insert_quarter(
    con: duckdb.DuckDBPyConnection,
    quarter: Quarter,
    figures: dict[str, dict[str, int]],
) -> None:
    units = {unit.unit_id: unit for unit in load_units()}
    placeholders = ", ".join("?" for _ in range(3 + len(COUNT_COLUMNS) + 4))
    for unit_id, counts in figures.items():
        row = _figures_row(quarter, unit_id, counts, units[unit_id].population_10k)
        con.execute(f"INSERT INTO unit_figures VALUES ({placeholders})", row)

    local = [u for u in units.values() if u.is_local]
    local_population = sum(u.population_10k for u in local)
    local_counts = _sum_counts([figures.get(u.unit_id, {}) for u in local])
    departments = [u for u in units.values() if not u.is_local]
    department_counts = _sum_counts([figures.get(u.unit_id, {}) for u in departments])
    for scope, counts, population in (
        ("local", local_counts, local_population),
        ("department", department_counts, None),
    ):
        row = _figures_row(quarter, scope, counts, population)
        con.execute(f"INSERT INTO total_figures VALUES ({placeholders})", row)


def _build_warehouse(path: Path) -> duckdb.DuckDBPyConnection:
    con = duckdb.connect(str(path))
    con.execute(
        """
        CREATE TABLE units (
            unit_id VARCHAR PRIMARY KEY, name_zh VARCHAR NOT NULL, name_en VARCHAR,
            kind VARCHAR NOT NULL, division_code VARCHAR, population_10k DOUBLE,
            annex_order INTEGER NOT NULL
        )
        """
    )
    for unit in load_units():
        con.execute(
            "INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?)",
            [
                unit.unit_id,
                FORMULA_NAMES.get(unit.unit_id, unit.name_zh),
                unit.name_en,
                unit.kind,
                unit.division_code,
                unit.population_10k,
                unit.annex_order,
            ],
        )
    con.execute(_figures_table_ddl("unit_figures", "unit_id"))
    con.execute(_figures_table_ddl("total_figures", "scope"))
    _insert_quarter(con, Q4, Q4_FIGURES)
    _insert_quarter(con, Q2, Q2_FIGURES)
    return con


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory: pytest.TempPathFactory) -> duckdb.DuckDBPyConnection:
    path = tmp_path_factory.mktemp("warehouse") / "warehouse.duckdb"
    con = _build_warehouse(path)
    yield con
    con.close()


@pytest.fixture(scope="module")
def exports(
    warehouse: duckdb.DuckDBPyConnection, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    exports_dir = tmp_path_factory.mktemp("exports")
    write_annexes(warehouse, Q4, exports_dir)
    write_annexes(warehouse, Q2, exports_dir)
    return exports_dir


@pytest.fixture(scope="module")
def sheets(exports: Path) -> dict[int, Worksheet]:
    result = {}
    for number in (1, 2, 3, 4):
        workbook = openpyxl.load_workbook(exports / "2018Q4" / f"annex{number}.xlsx")
        assert workbook.sheetnames == [f"附件{number}"]
        result[number] = workbook[f"附件{number}"]
    return result


@pytest.fixture(scope="module")
def q2_sheets(exports: Path) -> dict[int, Worksheet]:
    result = {}
    for number in (1, 2, 3, 4):
        workbook = openpyxl.load_workbook(exports / "2019Q2" / f"annex{number}.xlsx")
        result[number] = workbook.active
    return result


def _column_b(sheet: Worksheet, first_row: int = 4) -> list[Any]:
    return [
        sheet.cell(row=row, column=2).value
        for row in range(first_row, sheet.max_row + 1)
    ]


def _row_of(sheet: Worksheet, name: str) -> int:
    for row in range(4, sheet.max_row + 1):
        if sheet.cell(row=row, column=2).value == name:
            return row
    raise AssertionError(f"{name!r} not found in column B of {sheet.title}")


def _cell(sheet: Worksheet, name: str, column: str) -> Any:
    return sheet[f"{column}{_row_of(sheet, name)}"]


def _header_words(sheet: Worksheet) -> dict[str, str]:
    words = {}
    for row in (2, 3):
        for cell in sheet[row]:
            if isinstance(cell.value, str):
                words[cell.coordinate] = cell.value
    return words


# --- Files -----------------------------------------------------------------------


def test_write_annexes_paths(exports: Path) -> None:
    folder = exports / "2018Q4"
    names = sorted(path.name for path in folder.iterdir())
    assert names == ["annex1.xlsx", "annex2.xlsx", "annex3.xlsx", "annex4.xlsx"]


def test_write_annexes_returns_paths_in_order(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    paths = write_annexes(warehouse, Q4, tmp_path)
    expected = [tmp_path / "2018Q4" / f"annex{n}.xlsx" for n in (1, 2, 3, 4)]
    assert paths == expected


def test_write_annexes_replaces_old_file(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    folder = tmp_path / "2018Q4"
    folder.mkdir()
    (folder / "annex1.xlsx").write_bytes(b"old contents")

    write_annexes(warehouse, Q4, tmp_path)

    workbook = openpyxl.load_workbook(folder / "annex1.xlsx")
    assert workbook.sheetnames == ["附件1"]
    assert sorted(p.name for p in folder.iterdir()) == [
        "annex1.xlsx",
        "annex2.xlsx",
        "annex3.xlsx",
        "annex4.xlsx",
    ]


def test_failed_save_keeps_old_file(
    warehouse: duckdb.DuckDBPyConnection,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    folder = tmp_path / "2018Q4"
    folder.mkdir()
    (folder / "annex1.xlsx").write_bytes(b"old contents")

    def save_half_then_fail(self: openpyxl.Workbook, handle: Any) -> None:
        handle.write(b"PK\x03\x04 half a workbook")
        raise OSError("No space left on device")

    monkeypatch.setattr(openpyxl.Workbook, "save", save_half_then_fail)
    with pytest.raises(OSError, match="No space left"):
        write_annexes(warehouse, Q4, tmp_path)

    assert (folder / "annex1.xlsx").read_bytes() == b"old contents"
    assert [p.name for p in folder.iterdir()] == ["annex1.xlsx"]


def test_missing_totals_write_nothing(
    warehouse: duckdb.DuckDBPyConnection, tmp_path: Path
) -> None:
    with pytest.raises(MissingFiguresError, match="2020Q1"):
        write_annexes(warehouse, Quarter(2020, 1), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_annex_rows_invalid_number(warehouse: duckdb.DuckDBPyConnection) -> None:
    with pytest.raises(ValueError, match="invalid annex number 5"):
        annex_rows(warehouse, Q4, 5)


# --- Titles and headers ----------------------------------------------------------

TITLES = {
    1: "各县（市）、区信用数据归集综合统计表",
    2: "各县（市）、区“双公示”增量统计表",
    3: "市直各部门信用数据归集综合统计表",
    4: "各县（市）、区“信用承诺”上传统计表",
}


@pytest.mark.parametrize("number", [1, 2, 3, 4])
def test_title_row(sheets: dict[int, Worksheet], number: int) -> None:
    assert sheets[number]["A1"].value == TITLES[number]


def test_annex1_merged_ranges(sheets: dict[int, Worksheet]) -> None:
    merged = {str(r) for r in sheets[1].merged_cells.ranges}
    header = {"A1:N1", "A2:A3", "B2:B3", "C2:E2", "F2:J2", "K2:L2", "M2:M3", "N2:N3"}
    assert merged == header


def test_annex1_header_words(sheets: dict[int, Worksheet]) -> None:
    assert _header_words(sheets[1]) == {
        "A2": "序号",
        "B2": "名称",
        "C2": "总数据量",
        "F2": "其中双公示",
        "K2": "红黑名单",
        "M2": "常住人口（万人）",
        "N2": "人均个人信用信息数量",
        "C3": "存量",
        "D3": "第四季度增量",
        "E3": "2018年存量",
        "F3": "存量",
        "G3": "第四季度增量",
        "H3": "第四季度及时率",
        "I3": "2018年存量",
        "J3": "2018年及时率",
        "K3": "第四季度",
        "L3": "2018年总量",
    }


def test_annex1_leaf_headers_in_order() -> None:
    assert ANNEXES[0].leaf_headers(Q4) == [
        "序号",
        "名称",
        "存量",
        "第四季度增量",
        "2018年存量",
        "存量",
        "第四季度增量",
        "第四季度及时率",
        "2018年存量",
        "2018年及时率",
        "第四季度",
        "2018年总量",
        "常住人口（万人）",
        "人均个人信用信息数量",
    ]


def test_annex2_merged_ranges(sheets: dict[int, Worksheet]) -> None:
    merged = {str(r) for r in sheets[2].merged_cells.ranges}
    header = {"A1:N1", "A2:A3", "B2:B3", "C2:D2", "E2:F2", "G2:H2", "I2:J2"}
    header |= {"K2:L2", "M2:N2"}
    assert merged == header


def test_annex2_header_words(sheets: dict[int, Worksheet]) -> None:
    words = _header_words(sheets[2])
    top = [words.get(f"{c}2") for c in "ABCEGIKM"]
    assert top == [
        "序号",
        "单位名称",
        "第一季度",
        "第二季度",
        "第三季度",
        "第四季度",
        "2018年总量",
        "当前总量",
    ]
    bottom = [words[f"{c}3"] for c in "CDEFGHIJKLMN"]
    assert bottom == ["行政许可", "行政处罚"] * 6


def test_annex3_merged_ranges(sheets: dict[int, Worksheet]) -> None:
    merged = {str(r) for r in sheets[3].merged_cells.ranges}
    header = {"A1:L1", "A2:A3", "B2:B3", "C2:E2", "F2:J2", "K2:K3", "L2:L3"}
    assert merged == header


def test_annex3_header_words(sheets: dict[int, Worksheet]) -> None:
    words = _header_words(sheets[3])
    assert words["K2"] == "红黑名单（第四季度）"
    assert words["L2"] == "红黑名单（2018年）"
    assert [words[f"{c}3"] for c in "CDEFGHIJ"] == [
        "存量",
        "第四季度增量",
        "2018年存量",
        "存量",
        "第四季度增量",
        "第四季度及时率",
        "2018年存量",
        "2018年及时率",
    ]


def test_annex4_merged_ranges(sheets: dict[int, Worksheet]) -> None:
    merged = {str(r) for r in sheets[4].merged_cells.ranges}
    header = {"A1:H1", "A2:A3", "B2:B3", "C2:G2", "H2:H3"}
    assert merged == header


def test_annex4_header_words(sheets: dict[int, Worksheet]) -> None:
    assert _header_words(sheets[4]) == {
        "A2": "序号",
        "B2": "部门",
        "C2": "承诺类型",
        "H2": "总量",
        "C3": "主动公示型",
        "D3": "信用修复型",
        "E3": "审批替代型",
        "F3": "行业自律型",
        "G3": "其他类型",
    }


def test_q2_period_words(q2_sheets: dict[int, Worksheet]) -> None:
    annex1 = _header_words(q2_sheets[1])
    assert [annex1[f"{c}3"] for c in "DEGHIJKL"] == [
        "第二季度增量",
        "2019年存量",
        "第二季度增量",
        "第二季度及时率",
        "2019年存量",
        "2019年及时率",
        "第二季度",
        "2019年总量",
    ]
    annex2 = _header_words(q2_sheets[2])
    assert annex2["K2"] == "2019年总量"
    annex3 = _header_words(q2_sheets[3])
    assert annex3["K2"] == "红黑名单（第二季度）"
    assert annex3["L2"] == "红黑名单（2019年）"


def test_header_cells_centred_and_wrapped(sheets: dict[int, Worksheet]) -> None:
    for sheet in sheets.values():
        for row in (2, 3):
            for cell in sheet[row]:
                if cell.value is None:
                    continue
                assert cell.alignment.horizontal == "center", cell.coordinate
                assert cell.alignment.wrap_text, cell.coordinate


# --- Rows, ranking and numbering ---------------------------------------------------


def test_annex1_groups_and_ranking(sheets: dict[int, Worksheet]) -> None:
    sheet = sheets[1]
    assert sheet["B4"].value == "各区"
    assert sheet["B12"].value == "各县(市)"
    assert sheet["B20"].value == "合计"
    assert sheet.max_row == 20
    assert _column_b(sheet, 5)[:7] == [
        "卫滨区",
        "牧野区",
        "红旗区",
        "高新区",
        "经开区",
        "凤泉区",
        "平原示范区",
    ]
    assert _column_b(sheet, 13)[:7] == [
        "封丘县",
        "延津县",
        "卫辉市",
        "获嘉县",
        "辉县市",
        "新乡县",
        "原阳县",
    ]


def test_annex1_numbers_each_block(sheets: dict[int, Worksheet]) -> None:
    sheet = sheets[1]
    assert [sheet[f"A{row}"].value for row in range(5, 12)] == list(range(1, 8))
    assert [sheet[f"A{row}"].value for row in range(13, 20)] == list(range(1, 8))


def test_annex2_ranks_by_current_total(sheets: dict[int, Worksheet]) -> None:
    names = _column_b(sheets[2])
    assert names[:5] == ["卫滨区", "牧野区", "获嘉县", "延津县", "卫辉市"]
    # Units without double publicity keep annex_order.
    assert names[5:14] == [
        "凤泉区",
        "红旗区",
        "高新区",
        "经开区",
        "平原示范区",
        "封丘县",
        "辉县市",
        "原阳县",
        "新乡县",
    ]
    assert [sheets[2][f"A{row}"].value for row in range(4, 18)] == list(range(1, 15))


def test_annex2_quarter_columns(sheets: dict[int, Worksheet]) -> None:
    row = _row_of(sheets[2], "卫滨区")
    values = [sheets[2].cell(row=row, column=c).value for c in range(3, 15)]
    assert values == [255, 20, 0, 0, 0, 0, 20010, 69, 57545, 115, 58123, 164]


def test_annex3_ranking_and_ties(sheets: dict[int, Worksheet]) -> None:
    names = _column_b(sheets[3])
    assert names[:4] == [
        "市人社局",
        "市公积金管理中心",
        "市公安局",
        "中国移动新乡分公司",
    ]
    # The rest deliver nothing and follow annex_order.
    assert names[4:7] == ["市税务局", "首创水务", "华电热力公司"]
    assert names[67:71] == ["@SUM(A1:A2)", "=1+2", "+86电话", "-5"]
    assert len(names) == 72


def test_annex4_ranking_and_ties(sheets: dict[int, Worksheet]) -> None:
    names = _column_b(sheets[4])
    assert names[:6] == ["延津县", "原阳县", "红旗区", "高新区", "经开区", "卫滨区"]


def test_annex4_commitment_columns(sheets: dict[int, Worksheet]) -> None:
    row = _row_of(sheets[4], "经开区")
    values = [sheets[4].cell(row=row, column=c).value for c in range(3, 9)]
    assert values == [18, 0, 2, 4, 3, 27]


def test_unit_without_figures_has_zeros(sheets: dict[int, Worksheet]) -> None:
    sheet = sheets[1]
    row = _row_of(sheet, "凤泉区")
    counts = [sheet.cell(row=row, column=c).value for c in range(3, 13)]
    assert counts == [0] * 10
    assert sheet[f"M{row}"].value == 15.64
    assert sheet[f"N{row}"].value == 0


def test_total_row_from_total_figures(sheets: dict[int, Worksheet]) -> None:
    sheet = sheets[1]
    local = [u for u in load_units() if u.is_local]
    expected = sum(Q4_FIGURES.get(u.unit_id, {}).get("total_stock", 0) for u in local)
    assert sheet["C20"].value == expected
    assert sheet["M20"].value == 500.1
    assert sheet["N20"].value == round_per_capita(expected, 500.1)


def test_total_row_rate_is_pooled(sheets: dict[int, Worksheet]) -> None:
    timely = 22 + 312
    total = 24 + 427
    assert sheets[1]["H20"].value == timely * 10_000 // total / 10_000


def test_annex3_total_row(sheets: dict[int, Worksheet]) -> None:
    sheet = sheets[3]
    assert sheet["B75"].value == "合计"
    assert sheet["C75"].value == 90145290 + 16024531 + 7497473 * 2
    # Pooled: 22 timely of 24 + 117,605 records in the year.
    assert sheet["J75"].value == 22 * 10_000 // (24 + 117605) / 10_000


# --- Values and formats ----------------------------------------------------------


def test_truncated_rates(sheets: dict[int, Worksheet]) -> None:
    assert _cell(sheets[1], "卫滨区", "H").value == 0.9166
    assert _cell(sheets[1], "高新区", "H").value == 0.7306
    assert _cell(sheets[1], "高新区", "J").value == 0.6149
    assert _cell(sheets[3], "市人社局", "H").value == 1.0
    assert _cell(sheets[3], "市人社局", "J").value == 0.9166


def test_null_rate_prints_zero(sheets: dict[int, Worksheet]) -> None:
    cell = _cell(sheets[1], "经开区", "H")
    assert cell.value == 0
    assert cell.number_format == "0.00%"


def test_per_capita_rounds_half_up(sheets: dict[int, Worksheet]) -> None:
    assert _cell(sheets[1], "经开区", "N").value == 0.01
    # 1,500 / 100,000 = 0.015 exactly; float rounding would give 0.01.
    assert _cell(sheets[1], "高新区", "N").value == 0.02
    assert _cell(sheets[1], "卫滨区", "N").value == 0.26


def test_truncate_rate_cases() -> None:
    assert truncate_rate(22, 24) == 0.9166
    assert truncate_rate(312, 427) == 0.7306
    assert truncate_rate(0, 0) == 0
    assert truncate_rate(5, 5) == 1.0


def test_truncate_rate_rejects_excess() -> None:
    with pytest.raises(ValueError, match="370 timely records of 8"):
        truncate_rate(370, 8)


def test_round_per_capita_cases() -> None:
    assert round_per_capita(1366, 19.9) == 0.01
    assert round_per_capita(1500, 10.0) == 0.02
    assert round_per_capita(58316, 22.09) == 0.26
    assert round_per_capita(5, None) is None


ANNEX1_FORMATS = {
    "A": "0",
    "C": "0",
    "D": "0",
    "E": "0",
    "F": "0",
    "G": "0",
    "H": "0.00%",
    "I": "0",
    "J": "0.00%",
    "K": "0",
    "L": "0",
    "M": "General",
    "N": "0.00",
}


def test_annex1_number_formats(sheets: dict[int, Worksheet]) -> None:
    sheet = sheets[1]
    assert sheet["B5"].number_format == "@"
    for column, number_format in ANNEX1_FORMATS.items():
        cell = sheet[f"{column}5"]
        assert cell.number_format == number_format, cell.coordinate
    for column, number_format in ANNEX1_FORMATS.items():
        if column == "A":
            continue
        cell = sheet[f"{column}20"]
        assert cell.number_format == number_format, cell.coordinate


def test_annex3_rate_formats(sheets: dict[int, Worksheet]) -> None:
    sheet = sheets[3]
    for row in range(4, sheet.max_row + 1):
        assert sheet[f"H{row}"].number_format == "0.00%"
        assert sheet[f"J{row}"].number_format == "0.00%"


def test_no_number_stored_as_text(sheets: dict[int, Worksheet]) -> None:
    for number, sheet in sheets.items():
        for row in sheet.iter_rows(min_row=4, min_col=3):
            for cell in row:
                if cell.value is None:
                    continue
                where = f"annex {number} {cell.coordinate}"
                assert isinstance(cell.value, int | float), where
                assert cell.data_type == "n", where


def test_formula_looking_names_stay_text(sheets: dict[int, Worksheet]) -> None:
    for name in FORMULA_NAMES.values():
        cell = _cell(sheets[3], name, "B")
        assert cell.value == name
        assert cell.data_type == "s"


def test_formula_looking_names_get_quote_prefix(sheets: dict[int, Worksheet]) -> None:
    assert _cell(sheets[3], "=1+2", "B").quotePrefix


def test_unit_names_in_column_b_are_text(sheets: dict[int, Worksheet]) -> None:
    for sheet in sheets.values():
        for row in range(4, sheet.max_row + 1):
            cell = sheet.cell(row=row, column=2)
            if cell.value is not None:
                assert cell.data_type == "s", cell.coordinate


# --- Layout and printing ---------------------------------------------------------


def test_display_width_counts_cjk_twice() -> None:
    assert display_width("卫滨区") == 6
    assert display_width("2018年") == 6
    assert display_width("0.26") == 4


def test_name_column_fits_longest_name(sheets: dict[int, Worksheet]) -> None:
    longest = max(display_width(name) for name in _column_b(sheets[3]) if name)
    assert longest == display_width("人民银行新乡市中心支行")
    assert sheets[3].column_dimensions["B"].width >= longest


def test_count_column_fits_large_number(sheets: dict[int, Worksheet]) -> None:
    assert sheets[3].column_dimensions["C"].width >= len("90145290")


@pytest.mark.parametrize("number", [1, 2, 3, 4])
def test_print_setup(sheets: dict[int, Worksheet], number: int) -> None:
    sheet = sheets[number]
    assert sheet.page_setup.orientation == "landscape"
    assert sheet.page_setup.paperSize == 9  # A4
    assert sheet.page_setup.fitToWidth == 1
    assert sheet.print_title_rows == "$2:$3"
    assert sheet.freeze_panes == "A4"


# --- annex_rows --------------------------------------------------------------------


def test_annex_rows_shape(warehouse: duckdb.DuckDBPyConnection) -> None:
    rows = annex_rows(warehouse, Q4, 1)
    assert [row["row_type"] for row in rows].count("unit") == 14
    assert rows[0] == {"row_type": "group", "unit_id": None, "label": "各区"} | {
        leaf.key: None for leaf in ANNEXES[0].leaves()
    }
    assert rows[1]["unit_id"] == "weibin"
    assert rows[1]["seq"] == 1
    assert rows[1]["name"] == "卫滨区"
    assert rows[1]["dp_quarter_timeliness"] == 0.9166
    assert rows[-1]["label"] == "合计"
    assert rows[-1]["seq"] is None


def test_annex_rows_match_workbook(
    warehouse: duckdb.DuckDBPyConnection, sheets: dict[int, Worksheet]
) -> None:
    for annex in ANNEXES:
        sheet = sheets[annex.number]
        rows = annex_rows(warehouse, Q4, annex.number)
        for offset, row in enumerate(rows):
            if row["row_type"] != "unit":
                continue
            cells = [c.value for c in sheet[4 + offset]]
            assert cells == [row[leaf.key] for leaf in annex.leaves()]


def test_stored_rate_mismatch_logs_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    con = _build_warehouse(tmp_path / "mismatch.duckdb")
    con.execute(
        "UPDATE unit_figures SET dp_quarter_timeliness = 0.5 "
        "WHERE unit_id = ? AND period = ?",
        ["weibin", Q4.label],
    )
    with caplog.at_level("WARNING", logger=annexes.__name__):
        rows = annex_rows(con, Q4, 1)
    con.close()
    assert rows[1]["dp_quarter_timeliness"] == 0.9166
    assert "unit weibin" in caplog.text
