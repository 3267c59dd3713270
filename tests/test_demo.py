"""Demo extracts: file layout, formats, identifiers and the figures they reproduce.

Figures are recomputed here straight from the written files with DuckDB, the received
date taken from each file's name, so the tests do not depend on the ingest code.
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import re
from decimal import Decimal
from pathlib import Path

import duckdb
import openpyxl
import pytest

from credit_etl.bulletin import (
    ANNEX_COLUMNS,
    TOTAL_ROW,
    derive_targets,
    load_bulletin,
    select_reproduction_units,
)
from credit_etl.demo import MAX_FILE_ROWS, write_demo_data
from credit_etl.identifiers import fold, id_problem, uscc_problem
from credit_etl.registry import load_units
from credit_etl.schema import CATEGORY_WORDS, COMMITMENT_TYPES

# Small units at scale 1 that cover listed cells (高新区, 新乡县, 市发改委, 市民族宗教委,
# 市档案局, 市地震局, 人民银行新乡市中心支行), red/black lists, commitments and
# GB18030 and XLSX files.
SAMPLE_UNITS = [
    "gaoxin",
    "jingkai",
    "pingyuan",
    "xinxiang_county",
    "tobacco",
    "development_reform",
    "ethnic_religious",
    "earthquake",
    "archives",
    "pboc_branch",
    "commerce",
]
# Units with 10,000 to 700,000 records at scale 1, for the scale test.
MID_SIZE_UNITS = ["tax", "capital_water", "education", "weibin", "fengqiu", "yanjin"]

FILE_NAME = re.compile(
    r"^(?P<date>\d{8})_(?P<category>[a-z_]+|[\u4e00-\u9fff]+)(_[^.]+)?"
    r"\.(?P<ext>csv|xlsx)$"
)
CUT_OFF = dt.date(2019, 1, 10)
DECISION_COLUMNS = {"license": "许可决定日期", "penalty": "处罚决定日期"}
EVENT_COLUMNS = {
    "license": "许可决定日期",
    "penalty": "处罚决定日期",
    "red_list": "认定日期",
    "black_list": "认定日期",
    "commitment": "承诺作出日期",
    "other": "信息日期",
}
KEY_COLUMNS = {
    "license": ["行政许可决定文书号", "统一社会信用代码", "证件号码"],
    "penalty": ["行政处罚决定书文号", "统一社会信用代码", "证件号码"],
    "red_list": ["统一社会信用代码", "名单名称", "认定日期"],
    "black_list": ["统一社会信用代码", "名单名称", "认定日期"],
    "commitment": ["承诺编码"],
    "other": ["记录编号"],
}


def _parse_name(path: Path) -> tuple[dt.date, str]:
    match = FILE_NAME.match(path.name)
    assert match, f"{path.name} does not follow <YYYYMMDD>_<category>.<csv|xlsx>"
    received = dt.datetime.strptime(match["date"], "%Y%m%d").date()
    return received, CATEGORY_WORDS[match["category"]]


def _to_utf8_csv(path: Path, scratch: Path) -> Path:
    """Return a UTF-8 CSV copy of a delivered file (GB18030 or XLSX converted)."""
    target = scratch / f"{path.parent.name}_{path.stem}.csv"
    if path.suffix == ".xlsx":
        sheet = openpyxl.load_workbook(path, read_only=True).active
        rows = list(sheet.iter_rows(min_row=2, values_only=True))
        with target.open("w", encoding="utf-8", newline="") as handle:
            writer = csv.writer(handle)
            for row in rows:
                writer.writerow(
                    [
                        value.date().isoformat()
                        if isinstance(value, dt.datetime)
                        else ("" if value is None else value)
                        for value in row
                    ]
                )
        return target
    raw = path.read_bytes()
    try:
        raw.decode("utf-8")
        return path
    except UnicodeDecodeError:
        target.write_text(raw.decode("gb18030"), encoding="utf-8")
        return target


def _load_records(incoming: Path, unit_ids: list[str], scratch: Path):
    """Load every written record into one DuckDB table with its received date."""
    con = duckdb.connect()
    con.execute(
        """
        CREATE TABLE records (
            unit_id VARCHAR, category VARCHAR, file VARCHAR, received DATE,
            decided DATE, event_date DATE, commitment_type VARCHAR,
            uscc VARCHAR, id_number VARCHAR, natural_key VARCHAR
        )
        """
    )
    for unit_id in unit_ids:
        for path in sorted((incoming / unit_id).iterdir()):
            received, category = _parse_name(path)
            source = _to_utf8_csv(path, scratch)
            header = next(csv.reader(source.open(encoding="utf-8")))

            def column(name: str, header: list[str] = header) -> str:
                return f'"{name}"' if name in header else "NULL"

            key = " || '|' || ".join(
                f"coalesce({column(name)}, '')" for name in KEY_COLUMNS[category]
            )
            con.execute(
                f"""
                INSERT INTO records
                SELECT ?, ?, ?, ?::DATE,
                    CAST({column(DECISION_COLUMNS.get(category, "-"))} AS DATE),
                    CAST({column(EVENT_COLUMNS[category])} AS DATE),
                    {column("承诺类型")},
                    {column("统一社会信用代码")}, {column("证件号码")}, {key}
                FROM read_csv(?, header = true, all_varchar = true)
                """,
                [unit_id, category, path.name, received.isoformat(), str(source)],
            )
    return con


FIGURES_SQL = """
    SELECT
        count(*) FILTER (NOT commitment AND received <= $cut_off) AS total_stock,
        count(*) FILTER (NOT commitment AND in_q4) AS q4_increment,
        count(*) FILTER (NOT commitment AND in_year) AS year_stock,
        count(*) FILTER (dp AND received <= $cut_off) AS dp_stock,
        count(*) FILTER (dp AND in_q4) AS dp_q4_increment,
        count(*) FILTER (dp AND in_q4 AND timely) AS dp_q4_timely,
        count(*) FILTER (dp AND in_year) AS dp_year_stock,
        count(*) FILTER (dp AND in_year AND timely) AS dp_year_timely,
        count(*) FILTER (red_black AND in_q4) AS redblack_q4,
        count(*) FILTER (red_black AND in_year) AS redblack_year,
        count(*) FILTER (category = 'license' AND received <= $cut_off)
            AS current_license,
        count(*) FILTER (category = 'penalty' AND received <= $cut_off)
            AS current_penalty,
        count(*) FILTER (category = 'license' AND in_year) AS year_license,
        count(*) FILTER (category = 'penalty' AND in_year) AS year_penalty,
        count(*) FILTER (category = 'license' AND quarter = 1) AS q1_license,
        count(*) FILTER (category = 'penalty' AND quarter = 1) AS q1_penalty,
        count(*) FILTER (category = 'license' AND quarter = 2) AS q2_license,
        count(*) FILTER (category = 'penalty' AND quarter = 2) AS q2_penalty,
        count(*) FILTER (category = 'license' AND quarter = 3) AS q3_license,
        count(*) FILTER (category = 'penalty' AND quarter = 3) AS q3_penalty,
        count(*) FILTER (category = 'license' AND quarter = 4) AS q4_license,
        count(*) FILTER (category = 'penalty' AND quarter = 4) AS q4_penalty,
        count(*) FILTER (commitment AND commitment_type = '主动公示型') AS voluntary,
        count(*) FILTER (commitment AND commitment_type = '信用修复型')
            AS credit_repair,
        count(*) FILTER (commitment AND commitment_type = '审批替代型')
            AS approval_substitute,
        count(*) FILTER (commitment AND commitment_type = '行业自律型')
            AS self_discipline,
        count(*) FILTER (commitment AND commitment_type
            IN ('容缺受理型', '证明事项型', '其他')) AS other_types,
        count(*) FILTER (commitment AND received <= $cut_off) AS total
    FROM (
        SELECT *,
            category = 'commitment' AS commitment,
            category IN ('license', 'penalty') AS dp,
            category IN ('red_list', 'black_list') AS red_black,
            received BETWEEN DATE '2018-10-01' AND DATE '2018-12-31' AS in_q4,
            year(received) = 2018 AS in_year,
            CASE WHEN year(received) = 2018 THEN quarter(received) END AS quarter,
            received - decided <= 7 AS timely
        FROM records
        WHERE unit_id = $unit_id
    )
"""


def _figures_from_files(con, unit_id: str) -> dict[str, object]:
    """Compute a unit's annex cells from the loaded records."""
    result = con.execute(FIGURES_SQL, {"unit_id": unit_id, "cut_off": CUT_OFF})
    names = [column[0] for column in result.description]
    row = dict(zip(names, result.fetchone(), strict=True))
    for period in ("q4", "year"):
        records = row[f"dp_{period}_stock" if period == "year" else "dp_q4_increment"]
        timely = row.pop(f"dp_{period}_timely")
        pct = Decimal(timely * 10_000 // records) / 100 if records else Decimal(0)
        row[f"dp_{period}_timeliness_pct"] = pct
    return row


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    summary = write_demo_data(root / "incoming", scale=1.0, units=SAMPLE_UNITS)
    scratch = root / "scratch"
    scratch.mkdir()
    con = _load_records(root / "incoming", SAMPLE_UNITS, scratch)
    yield summary, con
    con.close()


@pytest.fixture(scope="module")
def expected(sample):
    summary, _ = sample
    return json.loads(summary.expected_annexes_path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def units_by_id():
    return {unit.unit_id: unit for unit in load_units()}


def _unit_annexes(unit) -> list[int]:
    return [1, 2, 4] if unit.is_local else [3]


def test_file_names_follow_contract(sample):
    summary, _ = sample
    assert summary.files
    for written in summary.files:
        received, category = _parse_name(written.path)
        assert received == written.received
        assert category == written.category
        assert written.path.parent.name == written.unit_id
        assert dt.date(2017, 1, 1) <= received <= CUT_OFF


def test_no_partial_files_left(sample):
    summary, _ = sample
    leftovers = [
        path
        for path in summary.incoming_dir.rglob("*")
        if path.suffix in (".part", ".tmp") or path.name.startswith(".")
    ]
    assert leftovers == []


def test_rows_per_file_match_summary(sample):
    summary, con = sample
    rows = {
        (unit_id, file): count
        for unit_id, file, count in con.execute(
            "SELECT unit_id, file, count(*) FROM records GROUP BY ALL"
        ).fetchall()
    }
    for written in summary.files:
        assert rows[(written.unit_id, written.path.name)] == written.rows
        assert written.rows <= MAX_FILE_ROWS


def test_record_counts_match_summary(sample):
    summary, con = sample
    for unit_id, by_category in summary.records.items():
        for category, count in by_category.items():
            found = con.execute(
                "SELECT count(*) FROM records WHERE unit_id = ? AND category = ?",
                [unit_id, category],
            ).fetchone()[0]
            assert found == count, (unit_id, category)


@pytest.mark.parametrize("unit_id", SAMPLE_UNITS)
def test_files_reproduce_expected_annexes(sample, expected, units_by_id, unit_id):
    _, con = sample
    unit = units_by_id[unit_id]
    figures = _figures_from_files(con, unit_id)
    for annex in _unit_annexes(unit):
        row = expected[str(annex)][unit.name_zh]
        for column in ANNEX_COLUMNS[annex]:
            if column in ("population_10k", "per_capita"):
                continue
            want = row[column]
            got = figures[column]
            if isinstance(got, Decimal):
                got = float(got)
            assert got == want, (annex, column)


@pytest.mark.parametrize("unit_id", SAMPLE_UNITS)
def test_files_reproduce_consistent_bulletin_cells(sample, units_by_id, unit_id):
    _, con = sample
    tables = load_bulletin()
    listed = {(c.annex, c.unit_name, c.column) for c in derive_targets().inconsistent}
    unit = units_by_id[unit_id]
    figures = _figures_from_files(con, unit_id)
    for annex in _unit_annexes(unit):
        printed_row = tables[annex].rows[unit.name_zh]
        for column, printed in printed_row.items():
            if column in ("population_10k", "per_capita"):
                continue
            if (annex, unit.name_zh, column) in listed:
                continue
            assert figures[column] == printed, (annex, column)


def test_listed_cells_differ_in_files(sample):
    _, con = sample
    tables = load_bulletin()
    figures = _figures_from_files(con, "ethnic_religious")
    assert tables[3].rows["市民族宗教委"]["dp_q4_increment"] == 370
    assert figures["dp_q4_increment"] == 0
    assert figures["total_stock"] == 8
    figures = _figures_from_files(con, "development_reform")
    assert figures["dp_year_timeliness_pct"] == Decimal("89.47")


def test_timely_rate_examples_from_files(sample):
    _, con = sample
    figures = _figures_from_files(con, "gaoxin")
    assert figures["dp_q4_increment"] == 427
    assert figures["dp_q4_timeliness_pct"] == Decimal("73.06")


def test_identifiers_pass_check_digits(sample):
    _, con = sample
    usccs = [
        row[0]
        for row in con.execute(
            "SELECT DISTINCT uscc FROM records WHERE uscc IS NOT NULL"
        ).fetchall()
    ]
    ids = [
        row[0]
        for row in con.execute(
            "SELECT DISTINCT id_number FROM records WHERE id_number IS NOT NULL"
        ).fetchall()
    ]
    assert len(usccs) > 100
    assert len(ids) > 100
    for code in usccs:
        assert uscc_problem(fold(code)) is None, code
    for number in ids:
        assert id_problem(fold(number)) is None, number


def test_every_record_has_one_identifier(sample):
    _, con = sample
    missing = con.execute(
        "SELECT count(*) FROM records WHERE uscc IS NULL AND id_number IS NULL"
    ).fetchone()[0]
    assert missing == 0


def test_natural_keys_unique(sample):
    _, con = sample
    repeated = con.execute(
        """
        SELECT unit_id, category, natural_key, count(*) FROM records
        GROUP BY ALL HAVING count(*) > 1 LIMIT 5
        """
    ).fetchall()
    assert repeated == []


def test_event_dates_within_contract(sample):
    _, con = sample
    bad = con.execute(
        """
        SELECT file, event_date, received FROM records
        WHERE event_date IS NULL OR event_date > received
            OR event_date < DATE '1949-10-01'
        LIMIT 5
        """
    ).fetchall()
    assert bad == []


def test_late_records_are_8_to_40_days(sample):
    _, con = sample
    days = con.execute(
        """
        SELECT min(received - decided), max(received - decided) FROM records
        WHERE category IN ('license', 'penalty') AND received - decided > 7
        """
    ).fetchone()
    assert days[0] >= 8
    assert days[1] <= 40


def test_commitment_types_in_standard(sample):
    _, con = sample
    types = {
        row[0]
        for row in con.execute(
            "SELECT DISTINCT commitment_type FROM records WHERE category = 'commitment'"
        ).fetchall()
    }
    assert types
    assert types <= set(COMMITMENT_TYPES)


def test_gb18030_files_are_not_utf8(sample):
    summary, _ = sample
    gb_files = [f for f in summary.files if f.file_format == "csv-gb18030"]
    assert gb_files
    for written in gb_files:
        raw = written.path.read_bytes()
        assert not raw.startswith(b"\xef\xbb\xbf")
        with pytest.raises(UnicodeDecodeError):
            raw.decode("utf-8")
        header = raw.decode("gb18030").splitlines()[0]
        assert header.split(",")[0] in (
            "行政相对人名称",
            "主体名称",
            "承诺人名称",
            "记录编号",
        )


def test_xlsx_files_have_title_and_header_row(sample):
    summary, _ = sample
    xlsx_files = [f for f in summary.files if f.file_format == "xlsx"]
    assert xlsx_files
    for written in xlsx_files:
        sheet = openpyxl.load_workbook(written.path).active
        assert "信息报送表" in sheet["A1"].value
        header = [cell.value for cell in sheet[2]]
        assert header[0] in ("行政相对人名称", "主体名称", "承诺人名称", "记录编号")
        assert sheet.max_row == written.rows + 2
        for row in sheet.iter_rows(min_row=3):
            for cell, name in zip(row, header, strict=True):
                if name in ("统一社会信用代码", "证件号码") and cell.value:
                    assert isinstance(cell.value, str)
                if name.endswith("日期"):
                    assert isinstance(cell.value, dt.datetime)


def test_demo_folder_files(sample, expected):
    summary, _ = sample
    assert summary.demo_dir == summary.incoming_dir.parent / "demo"
    with summary.inconsistent_cells_path.open(encoding="utf-8", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(derive_targets().inconsistent)
    assert set(rows[0]) == {
        "annex",
        "unit_name",
        "column",
        "printed",
        "producible",
        "reason",
    }
    assert set(expected) == {"1", "2", "3", "4"}
    names = {unit.name_zh for unit in load_units() if unit.unit_id in SAMPLE_UNITS}
    for rows_by_name in expected.values():
        assert set(rows_by_name) - {TOTAL_ROW} <= names
        assert TOTAL_ROW in rows_by_name


def test_same_seed_same_bytes(tmp_path: Path):
    units = ["development_reform", "archives"]
    first = write_demo_data(tmp_path / "a" / "incoming", units=units, seed=7)
    second = write_demo_data(tmp_path / "b" / "incoming", units=units, seed=7)
    other = write_demo_data(tmp_path / "c" / "incoming", units=units, seed=8)
    assert [f.path.name for f in first.files] == [f.path.name for f in second.files]
    for a, b in zip(first.files, second.files, strict=True):
        assert a.path.read_bytes() == b.path.read_bytes(), a.path.name
    assert other.records == first.records
    first_bytes = b"".join(f.path.read_bytes() for f in first.files)
    other_bytes = b"".join(f.path.read_bytes() for f in other.files)
    assert first_bytes != other_bytes


def test_scale_writes_share_of_records(tmp_path: Path):
    summary = write_demo_data(tmp_path / "incoming", scale=0.01, units=MID_SIZE_UNITS)
    atoms = derive_targets().atoms
    full = sum(
        sum(sum(values) for values in atoms[unit_id].counts.values())
        for unit_id in MID_SIZE_UNITS
    )
    csv_paths = [str(f.path) for f in summary.files if f.file_format == "csv"]
    with duckdb.connect() as con:
        written = con.execute(
            "SELECT count(*) FROM read_csv(?, header = true, all_varchar = true, "
            "union_by_name = true)",
            [csv_paths],
        ).fetchone()[0]
    written += sum(f.rows for f in summary.files if f.file_format != "csv")
    assert written == summary.total_records
    assert 0.0095 * full <= written <= 0.0105 * full


def test_existing_unit_folder_rejected(tmp_path: Path):
    folder = tmp_path / "incoming" / "archives"
    folder.mkdir(parents=True)
    (folder / "20180101_other.csv").write_text("记录编号\n1\n", encoding="utf-8")
    with pytest.raises(FileExistsError, match="already contains files"):
        write_demo_data(tmp_path / "incoming", units=["archives"])


def test_unknown_unit_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match="unknown unit ids"):
        write_demo_data(tmp_path / "incoming", units=["no_such_unit"])


def test_non_positive_scale_rejected(tmp_path: Path):
    with pytest.raises(ValueError, match="scale"):
        write_demo_data(tmp_path / "incoming", scale=0)


@pytest.mark.slow
def test_reproduction_units_reproduce_bulletin(tmp_path: Path):
    unit_ids = select_reproduction_units()
    summary = write_demo_data(tmp_path / "incoming", units=unit_ids)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    con = _load_records(tmp_path / "incoming", unit_ids, scratch)
    expected = json.loads(summary.expected_annexes_path.read_text(encoding="utf-8"))
    units = {unit.unit_id: unit for unit in load_units()}
    for unit_id in unit_ids:
        unit = units[unit_id]
        figures = _figures_from_files(con, unit_id)
        for annex in _unit_annexes(unit):
            row = expected[str(annex)][unit.name_zh]
            for column in ANNEX_COLUMNS[annex]:
                if column in ("population_10k", "per_capita"):
                    continue
                got = figures[column]
                got = float(got) if isinstance(got, Decimal) else got
                assert got == row[column], (unit_id, annex, column)
