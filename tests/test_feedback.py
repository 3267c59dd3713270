"""Feedback workbooks read back with openpyxl after a real ingest of two cases.

Case 07 (a rejected row of every kind) and case 05 (ID numbers typed as numbers in an
XLSX) are landed together with one more penalty file of the environment bureau. That
file contains texts starting with ``=``, ``+``, ``-`` and ``@`` in landed late rows and in
rejected rows, and natural persons whose names and ID numbers must be masked.
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import openpyxl
import pytest
from conftest import (
    CASES_DIR,
    CASES_MISSING_REASON,
    SETTLED_AGE_SECONDS,
    copy_case_files,
    csv_bytes,
    make_id,
    make_uscc,
    set_mtime,
    wrong_check,
)

from credit_etl.feedback import write_feedback
from credit_etl.figures import compute_figures
from credit_etl.ingest import ingest_incoming
from credit_etl.periods import Quarter
from credit_etl.settings import REPO_ROOT, Settings
from credit_etl.warehouse import connect

pytestmark = pytest.mark.skipif(not CASES_DIR.is_dir(), reason=CASES_MISSING_REASON)

QUARTER = Quarter(2018, 4)
SHEETS = ["概况", "文件", "退回记录", "逾期公示"]
CASE07_FILE = "incoming/environment/20181015_penalty.csv"
CASE05_FILE = "incoming/urban_management/20181015_penalty.xlsx"
EXTRA_FILE = "incoming/environment/20181020_penalty.csv"
FORMULA_PREFIXES = ("=", "+", "-", "@")

# An ID number: six region digits, a birth date, three digits and a check character.
# The birth date part keeps 18-digit organisation codes from matching.
ID_PATTERN = re.compile(
    r"(?<![0-9A-Za-z])\d{6}(?:(?:18|19|20)\d{2})(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])"
    r"\d{3}[0-9Xx](?![0-9A-Za-z])"
    r"|(?<![0-9A-Za-z])\d{6}\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}"
    r"(?![0-9A-Za-z])"
)


FENG_ID = make_id("41070219850312123")
REN_ID = make_id("41070319921105678")
LINGHU_ID = wrong_check(make_id("41071119790228456"))
LONG_NAME = "=" + "A" * 4001

EXTRA_HEADER = [
    "行政相对人名称",
    "行政相对人类别",
    "统一社会信用代码",
    "证件号码",
    "行政处罚决定书文号",
    "处罚内容",
    "罚款金额（万元）",
    "处罚决定日期",
]
ORG = "法人及非法人组织"
PERSON = "自然人"
# Received 2018-10-20: rows 2 to 6 land late, rows 7 to 12 are rejected.
# fmt: off
EXTRA_ROWS = [
    ["=1+1", ORG, make_uscc(1), "", "@SUM(A1:A2)", "罚款", "1", "2018-10-01"],
    ["+1-1", ORG, make_uscc(2), "", "-2+3", "罚款", "1", "2018-10-02"],
    ["@A1", ORG, make_uscc(3), "", "新环罚〔2018〕703号", "罚款", "1", "2018-10-05"],
    ["冯宝宝", PERSON, "", FENG_ID, "新环罚〔2018〕704号", "罚款", "0.1", "2018-10-03"],
    ["=任盈盈", PERSON, "", REN_ID, "新环罚〔2018〕705号", "罚款", "0.1", "2018-10-04"],
    ["新乡市甲公司", ORG, make_uscc(4), "", "新环罚〔2018〕706号", "罚款", "=1+2", "2018-10-18"],
    ["新乡市乙公司", ORG, make_uscc(5), "", "新环罚〔2018〕707号", "罚款", "1", "@2018-10-18"],
    ["新乡市丙公司", ORG, make_uscc(6), "", "新环罚〔2018〕708号", "罚款", "-1+1", "2018-10-18"],
    ["新乡市丁公司", ORG, make_uscc(7), "", "新环罚〔2018〕709号", "罚款", "+5万", "2018-10-18"],
    [LONG_NAME, ORG, make_uscc(8), "", "新环罚〔2018〕710号", "罚款", "1", "2018-10-18"],
    ["令狐冲", PERSON, "", LINGHU_ID, "新环罚〔2018〕711号", "罚款", "0.1", "2018-10-18"],
]
# fmt: on

# Every natural person delivered, with the full ID number where one was delivered
# as text. IDs that Excel stored as numbers lost their digits before delivery.
PERSONS = {
    "何兰洋": "410702199807199355",
    "邹秀芳": "410702196411142305",
    "顾刚红": "410702199002301236",
    "许娜超": "410702198504128811",
    "朱霞华": None,
    "赵涛东": None,
    "邱雨鹏": "41070319901203270X",
    "沈怡玉": "410704680721315",
    "王芳伟": None,
    "侯霞红": "410782197608286520",
    "冯宝宝": FENG_ID,
    "任盈盈": REN_ID,
    "令狐冲": LINGHU_ID,
}


@dataclass
class FeedbackRun:
    settings: Settings
    folder: Path

    def workbook(self, unit_id: str) -> openpyxl.Workbook:
        return openpyxl.load_workbook(self.folder / f"{unit_id}.xlsx")

    def rows(self, unit_id: str, sheet: str) -> list[tuple]:
        worksheet = self.workbook(unit_id)[sheet]
        return list(worksheet.iter_rows(values_only=True))


@pytest.fixture(scope="module")
def feedback(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FeedbackRun]:
    """Land cases 07 and 05 and the extra file, compute 2018Q4, write every workbook."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("feedback") / "data")
    for case in ("07-every-rejection-kind", "05-xlsx-id-number-as-number"):
        copy_case_files(
            CASES_DIR / case / "incoming", settings.incoming_dir, SETTLED_AGE_SECONDS
        )
    extra = settings.data_dir / EXTRA_FILE
    extra.write_bytes(csv_bytes(EXTRA_HEADER, EXTRA_ROWS))
    set_mtime(extra)
    con = connect(settings)
    try:
        ingest_incoming(con, settings)
        compute_figures(con, settings, QUARTER)
        write_feedback(con, settings, QUARTER)
    finally:
        con.close()
    yield FeedbackRun(settings, settings.exports_dir / QUARTER.label / "feedback")


def all_cells(path: Path) -> Iterator[tuple[str, openpyxl.cell.Cell]]:
    workbook = openpyxl.load_workbook(path)
    for worksheet in workbook:
        for row in worksheet.iter_rows():
            for cell in row:
                if cell.value is not None:
                    yield f"{path.name}!{worksheet.title}!{cell.coordinate}", cell


def rows_by_row_no(rows: list[tuple], path: str) -> dict[int, tuple]:
    return {row[2]: row for row in rows[1:] if row[0] == path}


def test_feedback_sheet_names(feedback: FeedbackRun) -> None:
    for unit_id in ("environment", "urban_management", "weibin"):
        assert feedback.workbook(unit_id).sheetnames == SHEETS


def test_rejects_sheet_header(feedback: FeedbackRun) -> None:
    rows = feedback.rows("environment", "退回记录")
    assert rows[0] == ("文件", "工作表", "行号", "列", "值", "原因")


def test_rejects_sheet_one_row_each(feedback: FeedbackRun) -> None:
    rows = feedback.rows("environment", "退回记录")
    listed = [(row[0], row[2]) for row in rows[1:]]
    case07 = [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 17, 19]
    extra = [7, 8, 9, 10, 11, 12]
    expected = [(CASE07_FILE, n) for n in case07] + [(EXTRA_FILE, n) for n in extra]
    assert listed == expected


# Case 07 rows: column, the value the reason names, and the action it requests.
CASE07_REASONS = {
    4: ("统一社会信用代码", "'91410700736108233W'", "check the code"),
    5: ("证件号码", "'410702********2305'", "check the ID number"),
    6: ("证件号码", "birth date 1990-02-30", "check the ID number"),
    7: ("统一社会信用代码", "'91410700676214973' has 17 characters", "check the code"),
    8: ("统一社会信用代码", "contains Z", "check the code"),
    9: (
        "统一社会信用代码 / 证件号码",
        "统一社会信用代码 and 证件号码 are both empty",
        "give the unified social credit code",
    ),
    10: ("处罚决定日期", "'2018-02-30' is not a real date", "check the month and day"),
    11: ("处罚决定日期", "'2018年10月' cannot be read as a date", "for example"),
    12: ("处罚决定日期", "处罚决定日期 is empty", "fill it in"),
    13: ("行政处罚决定书文号", "行政处罚决定书文号 is empty", "fill it in"),
    14: ("行政相对人名称", "行政相对人名称 is empty", "fill it in"),
    15: ("处罚决定日期", "2018-10-16 is after the received date 2018-10-15", "check"),
    17: ("处罚决定日期", "1949-09-30 is before 1949-10-01", "check the year"),
    19: ("罚款金额（万元）", "'待定' cannot be read as an amount", "write a number"),
}


@pytest.mark.parametrize("row_no", sorted(CASE07_REASONS))
def test_reject_reason_case07(feedback: FeedbackRun, row_no: int) -> None:
    column, names_value, what_to_do = CASE07_REASONS[row_no]
    row = rows_by_row_no(feedback.rows("environment", "退回记录"), CASE07_FILE)[row_no]
    assert row[3] == column
    assert names_value in row[5]
    assert what_to_do in row[5]


def test_reject_reason_names_value(feedback: FeedbackRun) -> None:
    rows = feedback.rows("environment", "退回记录")
    for row in rows[1:]:
        value, reason = row[4], row[5]
        if value is None or len(value) > 50:
            continue
        assert value in reason, f"row {row[2]} of {row[0]}: {reason!r}"


def test_reject_reason_field_length(feedback: FeedbackRun) -> None:
    row = rows_by_row_no(feedback.rows("environment", "退回记录"), EXTRA_FILE)[11]
    assert row[3] == "行政相对人名称"
    assert "4002 characters" in row[5]
    assert "4000" in row[5]
    assert "shorten" in row[5]


def test_rejects_sheet_xlsx_rows(feedback: FeedbackRun) -> None:
    rows = rows_by_row_no(feedback.rows("urban_management", "退回记录"), CASE05_FILE)
    assert sorted(rows) == [3, 4, 8, 9]
    for row_no in (3, 4, 8, 9):
        assert rows[row_no][1] == "Sheet1"
    assert rows[8][3] == "统一社会信用代码"
    for row_no in (3, 4, 9):
        assert rows[row_no][3] == "证件号码"
    for row_no in (3, 4, 8):
        assert "Format the cell as Text" in rows[row_no][5]
    assert "is not an ID number" in rows[9][5]


def test_files_sheet_header(feedback: FeedbackRun) -> None:
    header = feedback.rows("environment", "文件")[0]
    assert header[:8] == (
        "文件",
        "类别",
        "接收日期",
        "状态",
        "读取行数",
        "入库行数",
        "退回行数",
        "重复行数",
    )


@pytest.mark.parametrize(
    ("unit_id", "path", "received", "counts"),
    [
        ("environment", CASE07_FILE, dt.date(2018, 10, 15), (19, 5, 14, 0)),
        ("environment", EXTRA_FILE, dt.date(2018, 10, 20), (11, 5, 6, 0)),
        ("urban_management", CASE05_FILE, dt.date(2018, 10, 15), (9, 5, 4, 0)),
    ],
)
def test_files_sheet_counts(
    feedback: FeedbackRun,
    unit_id: str,
    path: str,
    received: dt.date,
    counts: tuple[int, int, int, int],
) -> None:
    rows = {row[0]: row for row in feedback.rows(unit_id, "文件")[1:]}
    assert path in rows
    assert rows[path][2].date() == received
    assert rows[path][4:8] == counts


def test_files_sheet_lists_own_files(feedback: FeedbackRun) -> None:
    paths = [row[0] for row in feedback.rows("environment", "文件")[1:]]
    assert paths == [CASE07_FILE, EXTRA_FILE]


def late_days(rows: list[tuple]) -> dict[str, int]:
    return {row[1]: row[6] for row in rows[1:]}


def test_late_sheet_environment(feedback: FeedbackRun) -> None:
    days = late_days(feedback.rows("environment", "逾期公示"))
    assert days == {
        "新环罚〔2018〕617号": 25216,
        "@SUM(A1:A2)": 19,
        "-2+3": 18,
        "新环罚〔2018〕704号": 17,
        "新环罚〔2018〕705号": 16,
        "新环罚〔2018〕703号": 15,
    }


def test_late_sheet_xlsx_unit(feedback: FeedbackRun) -> None:
    days = late_days(feedback.rows("urban_management", "逾期公示"))
    assert days == {
        "新城管罚〔2018〕401号": 12,
        "新城管罚〔2018〕404号": 9,
        "新城管罚〔2018〕405号": 8,
    }


def test_late_sheet_skips_seven_days(feedback: FeedbackRun) -> None:
    # Decided 2018-10-08, received 2018-10-15: exactly 7 days is on time.
    environment = late_days(feedback.rows("environment", "逾期公示"))
    urban = late_days(feedback.rows("urban_management", "逾期公示"))
    assert "新环罚〔2018〕601号" not in environment
    assert "新城管罚〔2018〕406号" not in urban


def test_late_sheet_most_days_first(feedback: FeedbackRun) -> None:
    rows = feedback.rows("environment", "逾期公示")[1:]
    days = [row[6] for row in rows]
    assert days == sorted(days, reverse=True)


def test_late_sheet_row_fields(feedback: FeedbackRun) -> None:
    rows = {row[1]: row for row in feedback.rows("environment", "逾期公示")[1:]}
    row = rows["新环罚〔2018〕704号"]
    assert row[0] == "行政处罚"
    assert row[4].date() == dt.date(2018, 10, 3)
    assert row[5].date() == dt.date(2018, 10, 20)
    assert row[7] == EXTRA_FILE
    assert row[8] == 5


def figures_of(feedback: FeedbackRun, unit_id: str) -> dict[str, object]:
    return {row[0]: row[1] for row in feedback.rows(unit_id, "概况")}


def test_figures_sheet_environment(feedback: FeedbackRun) -> None:
    figures = figures_of(feedback, "environment")
    assert figures["单位"] == "市环保局"
    assert figures["季度"] == "2018Q4"
    assert figures["截止日期"].date() == dt.date(2019, 1, 10)
    assert figures["总数据量 存量"] == 10
    assert figures["双公示 第四季度增量"] == 10
    assert figures["双公示 第四季度及时率"] == pytest.approx(0.4)


def test_figures_sheet_xlsx_unit(feedback: FeedbackRun) -> None:
    figures = figures_of(feedback, "urban_management")
    assert figures["双公示 第四季度增量"] == 5
    assert figures["双公示 第四季度及时率"] == pytest.approx(0.4)


def test_figures_sheet_rate_format(feedback: FeedbackRun) -> None:
    worksheet = feedback.workbook("environment")["概况"]
    formats = {
        row[0].value: row[1].number_format for row in worksheet.iter_rows(min_row=2)
    }
    assert formats["双公示 第四季度及时率"] == "0.00%"


def test_unit_without_files_has_figures(feedback: FeedbackRun) -> None:
    assert (feedback.folder / "weibin.xlsx").is_file()
    figures = figures_of(feedback, "weibin")
    assert figures["单位"] == "卫滨区"
    assert figures["季度"] == "2018Q4"
    assert figures["总数据量 存量"] == 0
    assert figures["双公示 第四季度增量"] == 0
    assert len(feedback.rows("weibin", "文件")) == 1
    assert len(feedback.rows("weibin", "退回记录")) == 1


def test_every_unit_has_workbook(feedback: FeedbackRun) -> None:
    written = sorted(path.stem for path in feedback.folder.glob("*.xlsx"))
    con = connect(feedback.settings, read_only=True)
    try:
        units = sorted(
            row[0] for row in con.execute("SELECT unit_id FROM units").fetchall()
        )
    finally:
        con.close()
    assert written == units


UNITS_WITH_FILES = ("environment", "urban_management", "development_reform", "tax")


def test_ids_masked_everywhere(feedback: FeedbackRun) -> None:
    leaks = []
    for unit_id in (*UNITS_WITH_FILES, "weibin"):
        for where, cell in all_cells(feedback.folder / f"{unit_id}.xlsx"):
            for match in ID_PATTERN.finditer(str(cell.value)):
                leaks.append(f"{where}: {match.group(0)}")
    assert not leaks, "\n".join(leaks)


@pytest.mark.parametrize(
    ("decision_number", "masked"),
    [
        ("新城管罚〔2018〕401号", "410702" + "*" * 8 + "8811"),
        ("新城管罚〔2018〕404号", "410703" + "*" * 8 + "270X"),
        ("新城管罚〔2018〕405号", "410704" + "*" * 5 + "1315"),
    ],
)
def test_late_id_masked_form(
    feedback: FeedbackRun, decision_number: str, masked: str
) -> None:
    rows = {row[1]: row for row in feedback.rows("urban_management", "逾期公示")[1:]}
    assert rows[decision_number][3] == masked


def test_reject_id_masked_form(feedback: FeedbackRun) -> None:
    rows = rows_by_row_no(feedback.rows("environment", "退回记录"), EXTRA_FILE)
    assert rows[12][4] == LINGHU_ID[:6] + "*" * 8 + LINGHU_ID[-4:]


def test_names_masked_everywhere(feedback: FeedbackRun) -> None:
    leaks = []
    for unit_id in (*UNITS_WITH_FILES, "weibin"):
        for where, cell in all_cells(feedback.folder / f"{unit_id}.xlsx"):
            for name in PERSONS:
                if name in str(cell.value):
                    leaks.append(f"{where}: {name}")
    assert not leaks, "\n".join(leaks)


def test_delivered_ids_absent(feedback: FeedbackRun) -> None:
    leaks = []
    for unit_id in (*UNITS_WITH_FILES, "weibin"):
        for where, cell in all_cells(feedback.folder / f"{unit_id}.xlsx"):
            for number in filter(None, PERSONS.values()):
                if number in str(cell.value):
                    leaks.append(f"{where}: {number}")
    assert not leaks, "\n".join(leaks)


def test_late_names_masked_form(feedback: FeedbackRun) -> None:
    urban = {
        row[1]: row[2] for row in feedback.rows("urban_management", "逾期公示")[1:]
    }
    environment = {
        row[1]: row[2] for row in feedback.rows("environment", "逾期公示")[1:]
    }
    assert urban["新城管罚〔2018〕401号"] == "许**"
    assert environment["新环罚〔2018〕704号"] == "冯**"
    assert environment["新环罚〔2018〕705号"] == "=***"


def test_organisation_name_kept(feedback: FeedbackRun) -> None:
    rows = {row[1]: row for row in feedback.rows("environment", "逾期公示")[1:]}
    assert rows["新环罚〔2018〕617号"][2] == "新乡市德昌商贸有限公司"
    assert rows["新环罚〔2018〕617号"][3] == "91410700593741161U"


def formula_like_cells(path: Path) -> dict[str, openpyxl.cell.Cell]:
    return {
        where: cell
        for where, cell in all_cells(path)
        if isinstance(cell.value, str) and cell.value.startswith(FORMULA_PREFIXES)
    }


def test_formula_text_is_string(feedback: FeedbackRun) -> None:
    cells = formula_like_cells(feedback.folder / "environment.xlsx")
    assert cells
    for where, cell in cells.items():
        assert cell.data_type == "s", f"{where}: {cell.value!r} is {cell.data_type}"


@pytest.mark.parametrize(
    ("sheet", "column", "text"),
    [
        ("逾期公示", 3, "=1+1"),
        ("逾期公示", 3, "+1-1"),
        ("逾期公示", 3, "@A1"),
        ("逾期公示", 3, "=***"),
        ("逾期公示", 2, "@SUM(A1:A2)"),
        ("逾期公示", 2, "-2+3"),
        ("退回记录", 5, "=1+2"),
        ("退回记录", 5, "@2018-10-18"),
        ("退回记录", 5, "-1+1"),
        ("退回记录", 5, "+5万"),
        ("退回记录", 5, "=" + "A" * 49 + "…"),
    ],
)
def test_formula_text_kept(
    feedback: FeedbackRun, sheet: str, column: int, text: str
) -> None:
    worksheet = feedback.workbook("environment")[sheet]
    cells = [row[column - 1] for row in worksheet.iter_rows(min_row=2)]
    matching = [cell for cell in cells if cell.value == text]
    assert len(matching) == 1
    assert matching[0].data_type == "s"


def test_workbook_xml_has_no_formula(feedback: FeedbackRun) -> None:
    with zipfile.ZipFile(feedback.folder / "environment.xlsx") as archive:
        sheets = [n for n in archive.namelist() if n.startswith("xl/worksheets/")]
        assert sheets
        for name in sheets:
            assert b"<f>" not in archive.read(name), name
            assert b"<f " not in archive.read(name), name


def test_feedback_command_writes_unit(feedback: FeedbackRun, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    shutil.copytree(feedback.settings.data_dir / "incoming", data_dir / "incoming")
    set_mtime(data_dir / "incoming")

    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDIT_ETL_")}
    command = [str(REPO_ROOT / ".venv" / "bin" / "credit-etl")]
    ingest = subprocess.run(
        [*command, "ingest", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert ingest.returncode == 0, ingest.stderr

    written = subprocess.run(
        [
            *command,
            "feedback",
            "--quarter",
            "2018Q4",
            "--units",
            "environment",
            "--data-dir",
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert written.returncode == 0, written.stderr
    assert written.stdout.startswith("1 feedback workbooks")

    folder = data_dir / "exports" / "2018Q4" / "feedback"
    assert sorted(p.name for p in folder.glob("*.xlsx")) == ["environment.xlsx"]
    # A header row and the 20 rejected rows of the two environment files.
    rejects = openpyxl.load_workbook(folder / "environment.xlsx")["退回记录"]
    assert rejects.max_row == 21


@pytest.mark.skipif(
    shutil.which("soffice") is None,
    reason="LibreOffice (soffice) is not on PATH, so no PDF conversion is tried",
)
def test_feedback_converts_to_pdf(feedback: FeedbackRun, tmp_path: Path) -> None:
    outdir = tmp_path / "pdf"
    profile = (tmp_path / "lo").as_uri()
    result = subprocess.run(
        [
            "soffice",
            f"-env:UserInstallation={profile}",
            "--headless",
            "--convert-to",
            "pdf",
            "--outdir",
            str(outdir),
            str(feedback.folder / "environment.xlsx"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    pdf = outdir / "environment.pdf"
    assert pdf.is_file()
    assert pdf.stat().st_size > 0
    assert pdf.read_bytes().startswith(b"%PDF")
