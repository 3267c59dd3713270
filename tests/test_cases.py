"""The real-world delivery cases, each ingested into its own warehouse.

Each case folder contains the files as units deliver them and an ``expected.json`` with
the outcome, counts, rejected rows and flags of every file. The tests below also check,
one by one, the stored values that each kind of fault tends to corrupt.
"""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from conftest import (
    CASES_DIR,
    CASES_MISSING_REASON,
    RECORD_TABLES,
    SETTLED_AGE_SECONDS,
    copy_case_files,
    record_count,
    snapshot,
)

from credit_etl.discovery import EXPECTED_PATTERN, scan_incoming
from credit_etl.figures import compute_figures
from credit_etl.ingest import IngestReport, ingest_file, ingest_incoming
from credit_etl.periods import Quarter
from credit_etl.readers import fingerprint, read_csv_header, transcode_to_utf8
from credit_etl.registry import load_units
from credit_etl.settings import Settings
from credit_etl.warehouse import connect

pytestmark = pytest.mark.skipif(not CASES_DIR.is_dir(), reason=CASES_MISSING_REASON)

CASE_NAMES = (
    "01-gbk-csv-no-bom",
    "02-code-column-digits-then-letters",
    "03-quoted-fields-after-row-25000",
    "04-xlsx-government-template",
    "05-xlsx-id-number-as-number",
    "06-fullwidth-and-spaces-in-codes",
    "07-every-rejection-kind",
    "08-redelivery-and-duplicate-file",
    "09-file-and-folder-names",
)

# Round 2 of a case is copied in later than round 1, but still settled.
ROUND2_AGE_SECONDS = SETTLED_AGE_SECONDS / 2


def load_expected(case: str) -> dict:
    return json.loads((CASES_DIR / case / "expected.json").read_text(encoding="utf-8"))


def expected_files(outcome_prefix: str) -> list:
    """Return pytest params of (case, file entry) whose outcome starts with a word."""
    if not CASES_DIR.is_dir():
        return []
    params = []
    for case in CASE_NAMES:
        for entry in load_expected(case)["files"]:
            if entry["outcome"].startswith(outcome_prefix):
                params.append(
                    pytest.param(
                        case, entry, id=f"{case[:2]}-r{entry['round']}-{entry['path']}"
                    )
                )
    return params


def rel(path: str) -> str:
    """Turn an ``incoming/...`` path of the cases into the product's relative path."""
    return path.removeprefix("incoming/")


@dataclass
class CaseRun:
    settings: Settings
    con: duckdb.DuckDBPyConnection
    reports: dict[int, IngestReport] = field(default_factory=dict)
    records: dict[int, int] = field(default_factory=dict)
    before: dict[int, dict[str, bytes]] = field(default_factory=dict)
    after: dict[int, dict[str, bytes]] = field(default_factory=dict)


def run_case(case: str, data_dir: Path) -> CaseRun:
    """Ingest round 1 of a case, then round 2 when the case has one."""
    settings = Settings(data_dir=data_dir)
    run = CaseRun(settings=settings, con=connect(settings))
    sources = {1: CASES_DIR / case / "incoming"}
    round2 = CASES_DIR / case / "round2" / "incoming"
    if round2.is_dir():
        sources[2] = round2
    ages = {1: SETTLED_AGE_SECONDS, 2: ROUND2_AGE_SECONDS}
    for number, source in sources.items():
        copy_case_files(source, settings.incoming_dir, ages[number])
        run.before[number] = snapshot(settings.incoming_dir)
        run.reports[number] = ingest_incoming(run.con, settings)
        run.records[number] = record_count(run.con)
        run.after[number] = snapshot(settings.incoming_dir)
    return run


@pytest.fixture(scope="module")
def case_runs(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[[str], CaseRun]]:
    """Run each case once per module, on first use."""
    runs: dict[str, CaseRun] = {}

    def get(case: str) -> CaseRun:
        if case not in runs:
            runs[case] = run_case(case, tmp_path_factory.mktemp(case[:2]) / "data")
        return runs[case]

    yield get
    for run in runs.values():
        run.con.close()


def fetch_dicts(con: duckdb.DuckDBPyConnection, sql: str, params=None) -> list[dict]:
    cursor = con.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def text_columns(con: duckdb.DuckDBPyConnection, table: str) -> list[str]:
    return [
        name
        for name, kind, *_ in con.execute(f"DESCRIBE {table}").fetchall()
        if kind == "VARCHAR"
    ]


def stored_texts(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Return every non-empty text value of every record table."""
    values: list[str] = []
    for table in RECORD_TABLES:
        for column in text_columns(con, table):
            values += [
                row[0]
                for row in con.execute(
                    f"SELECT {column} FROM {table} WHERE {column} IS NOT NULL"
                ).fetchall()
            ]
    return values


def value_fragments(reason: str) -> list[str]:
    """Return the parts of an expected reason that name the offending value."""
    fragments = re.findall(r"`([^`]+)`", reason)
    fragments += re.findall(r"\d\.\d+E\+\d+", reason)
    fragments += re.findall(r"\d{4}-\d{2}-\d{2}", reason)
    fragments += re.findall(r"expected \w, found \w", reason)
    return fragments


def without_remark(flag: str) -> str:
    """Drop a trailing parenthetical remark from an expected flag."""
    return re.sub(r"\s*\([^)]*\)$", "", flag)


# ----------------------------------------------------------------------------- per file


@pytest.mark.parametrize(("case", "entry"), expected_files("read"))
def test_read_file_counts(case_runs, case: str, entry: dict) -> None:
    report = case_runs(case).reports[entry["round"]]
    results = {result.rel_path: result for result in report.results}
    result = results.get(rel(entry["path"]))

    assert result is not None, (
        f"{entry['path']} has no result in round {entry['round']}"
    )
    assert result.status == "landed", result.error
    assert result.rows_read == entry["rows_read"]
    assert result.rows_landed == entry["landed"]
    assert result.rows_rejected == entry["rejected"]
    assert result.rows_repeated == entry["repeated"]


@pytest.mark.parametrize(("case", "entry"), expected_files("duplicate"))
def test_duplicate_file_adds_nothing(case_runs, case: str, entry: dict) -> None:
    run = case_runs(case)
    report = run.reports[entry["round"]]
    results = {result.rel_path: result for result in report.results}
    result = results.get(rel(entry["path"]))

    assert result is not None, f"{entry['path']} has no result"
    assert result.status == "duplicate"
    assert result.rows_landed is None
    assert result.duplicate_of is not None
    rows_from_file = run.con.execute(
        "SELECT count(*) FROM rec_penalty WHERE file_id = ?", [result.file_id]
    ).fetchone()[0]
    assert rows_from_file == 0


@pytest.mark.parametrize(("case", "entry"), expected_files("not read"))
def test_misplaced_file_reported(case_runs, case: str, entry: dict) -> None:
    report = case_runs(case).reports[entry["round"]]
    problems = [p for p in report.problems if p.rel_path == rel(entry["path"])]

    assert len(problems) == 1
    assert problems[0].expected == EXPECTED_PATTERN
    assert problems[0].problem
    assert rel(entry["path"]) not in {r.rel_path for r in report.results}


@pytest.mark.parametrize(("case", "entry"), expected_files("skipped"))
def test_transient_file_skipped(case_runs, case: str, entry: dict) -> None:
    report = case_runs(case).reports[entry["round"]]
    skipped = {line.split(": ", 1)[0] for line in report.skipped}

    assert rel(entry["path"]) in skipped
    assert rel(entry["path"]) not in {p.rel_path for p in report.problems}
    assert rel(entry["path"]) not in {r.rel_path for r in report.results}


# ----------------------------------------------------------------------------- per case


@pytest.mark.parametrize("case", CASE_NAMES)
def test_file_rows_add_up(case_runs, case: str) -> None:
    for report in case_runs(case).reports.values():
        for result in report.results:
            if result.status != "landed":
                continue
            parts = result.rows_landed + result.rows_rejected + result.rows_repeated
            assert result.rows_read == parts, result.rel_path


@pytest.mark.parametrize("case", CASE_NAMES)
def test_results_only_for_listed_files(case_runs, case: str) -> None:
    run = case_runs(case)
    for number, report in run.reports.items():
        listed = {
            rel(entry["path"])
            for entry in load_expected(case)["files"]
            if entry["round"] == number
            and not entry["outcome"].startswith(("not read", "skipped"))
        }
        assert {result.rel_path for result in report.results} == listed


@pytest.mark.parametrize("case", CASE_NAMES)
def test_records_after_round(case_runs, case: str) -> None:
    expected = {
        int(number): count
        for number, count in load_expected(case)["records_after_round"].items()
    }
    assert case_runs(case).records == expected


@pytest.mark.parametrize("case", CASE_NAMES)
def test_rejected_rows_match(case_runs, case: str) -> None:
    rows = fetch_dicts(
        case_runs(case).con,
        "SELECT path, row_no, column_name FROM rejects ORDER BY path, row_no",
    )
    actual = [(row["path"], row["row_no"]) for row in rows]
    expected = [(rel(r["file"]), r["row"]) for r in load_expected(case)["rejects"]]

    assert sorted(actual) == sorted(expected)


@pytest.mark.parametrize("case", CASE_NAMES)
def test_rejected_row_columns(case_runs, case: str) -> None:
    run = case_runs(case)
    for expected in load_expected(case)["rejects"]:
        found = run.con.execute(
            "SELECT column_name FROM rejects WHERE path = ? AND row_no = ?",
            [rel(expected["file"]), expected["row"]],
        ).fetchall()
        where = f"{expected['file']} row {expected['row']}"
        assert len(found) == 1, where
        column = found[0][0] or ""
        if " / " in expected["column"]:
            for name in expected["column"].split(" / "):
                assert name in column, f"{where}: column {column!r} lacks {name}"
        else:
            assert column == expected["column"], where


@pytest.mark.parametrize("case", CASE_NAMES)
def test_reject_reasons_name_values(case_runs, case: str) -> None:
    run = case_runs(case)
    for expected in load_expected(case)["rejects"]:
        found = run.con.execute(
            "SELECT reason, value FROM rejects WHERE path = ? AND row_no = ?",
            [rel(expected["file"]), expected["row"]],
        ).fetchall()
        where = f"{expected['file']} row {expected['row']}"
        assert len(found) == 1, where
        reason, value = found[0]
        for fragment in value_fragments(expected["reason"]):
            assert fragment in reason, f"{where}: {reason!r} lacks {fragment!r}"
        if value is not None:
            assert value in reason, f"{where}: {reason!r} lacks the value {value!r}"


@pytest.mark.parametrize("case", CASE_NAMES)
def test_flags_match(case_runs, case: str) -> None:
    run = case_runs(case)
    rows = fetch_dicts(run.con, "SELECT path, row_no, column_name, flag FROM row_flags")
    actual = sorted((row["path"], row["row_no"], row["column_name"]) for row in rows)
    expected_flags = load_expected(case)["flags"]
    expected = sorted((rel(f["file"]), f["row"], f["column"]) for f in expected_flags)

    assert actual == expected
    texts = {(row["path"], row["row_no"]): row["flag"] for row in rows}
    for flag in expected_flags:
        actual_flag = texts.get((rel(flag["file"]), flag["row"]), "")
        assert without_remark(flag["flag"]) in actual_flag, flag


@pytest.mark.parametrize("case", CASE_NAMES)
def test_delivered_files_unchanged(case_runs, case: str) -> None:
    run = case_runs(case)
    for number in run.reports:
        assert sorted(run.after[number]) == sorted(run.before[number]), number
        for name, data in run.before[number].items():
            assert run.after[number][name] == data, f"round {number}: {name}"


@pytest.mark.parametrize("case", CASE_NAMES)
def test_no_unknown_unit_stored(case_runs, case: str) -> None:
    con = case_runs(case).con
    known = {unit.unit_id for unit in load_units()}
    tables = [
        row[0]
        for row in con.execute(
            "SELECT DISTINCT table_name FROM duckdb_columns() "
            "WHERE column_name = 'unit_id' AND NOT internal"
        ).fetchall()
    ]
    for table in tables:
        stored = {
            row[0]
            for row in con.execute(
                f"SELECT DISTINCT unit_id FROM {table} WHERE unit_id IS NOT NULL"
            ).fetchall()
        }
        assert stored <= known, f"{table}: {sorted(stored - known)}"


@pytest.mark.parametrize("case", CASE_NAMES)
def test_no_replacement_character(case_runs, case: str) -> None:
    texts = stored_texts(case_runs(case).con)
    assert not [text for text in texts if "\ufffd" in text]


# -------------------------------------------- GBK and GB18030 without a byte-order mark


GBK_CASE = "01-gbk-csv-no-bom"


def test_gbk_file_encodings(case_runs) -> None:
    rows = (
        case_runs(GBK_CASE).con.execute("SELECT path, encoding FROM ledger").fetchall()
    )
    assert dict(rows) == {
        "hongqi/20181012_penalty.csv": "gb18030",
        "weibin/20181012_license.csv": "gb18030",
        "muye/20181012_red_list.csv": "utf-8",
    }


@pytest.mark.parametrize(
    ("path", "first_name"),
    [
        ("hongqi/20181012_penalty.csv", "行政相对人名称"),
        ("weibin/20181012_license.csv", "行政相对人名称"),
        ("muye/20181012_red_list.csv", "主体名称"),
    ],
)
def test_gbk_first_header_name(tmp_path: Path, path: str, first_name: str) -> None:
    source = CASES_DIR / GBK_CASE / "incoming" / path
    encoding = fingerprint(source).encoding
    target = tmp_path / "utf8.csv"
    transcode_to_utf8(source, encoding, target)
    names, _delimiter = read_csv_header(target, "utf-8-sig")

    assert names[0] == first_name


def test_gbk_no_unknown_columns(case_runs) -> None:
    for result in case_runs(GBK_CASE).reports[1].results:
        assert result.notes == [], result.rel_path


def test_gbk_rare_characters_kept(case_runs) -> None:
    names = {
        row[0]
        for row in case_runs(GBK_CASE)
        .con.execute("SELECT subject_name FROM rec_license")
        .fetchall()
    }
    assert "新乡市\U00020bb7祥五金机电有限公司" in names
    assert "王\u4dae" in names
    rare = [name for name in names if "祥五金" in name]
    assert len(rare) == 1
    assert len(rare[0]) == 13
    assert rare[0][3] == "\U00020bb7"


def test_gbk_middle_dot_name(case_runs) -> None:
    row = (
        case_runs(GBK_CASE)
        .con.execute(
            "SELECT subject_name FROM rec_penalty WHERE decision_number = ?",
            ["新红市监罚〔2018〕105号"],
        )
        .fetchone()
    )
    assert row == ("阿依古丽·买买提",)


def test_utf8_red_list_names(case_runs) -> None:
    rows = (
        case_runs(GBK_CASE)
        .con.execute("SELECT subject_name FROM rec_list WHERE category = 'red_list'")
        .fetchall()
    )
    assert sorted(row[0] for row in rows) == sorted(
        ["新乡豪鑫机械有限公司", "新乡信盛建材有限公司", "新乡诚锦物流有限公司"]
    )


def test_gbk_no_byte_order_mark(case_runs) -> None:
    texts = stored_texts(case_runs(GBK_CASE).con)
    assert not [text for text in texts if "\ufeff" in text]


# ------------------------------------------------- code columns of digits, then letters


DIGIT_CODES_CASE = "02-code-column-digits-then-letters"


def other_record(run: CaseRun, record_id: str) -> dict | None:
    rows = fetch_dicts(
        run.con, "SELECT * FROM rec_other WHERE record_id = ?", [record_id]
    )
    return rows[0] if len(rows) == 1 else None


@pytest.mark.parametrize(
    ("padded", "plain"),
    [("0100017", "100017"), ("00100018", "100018"), ("0130000", "130000")],
)
def test_record_ids_keep_leading_zeros(case_runs, padded: str, plain: str) -> None:
    run = case_runs(DIGIT_CODES_CASE)
    with_zeros = other_record(run, padded)
    without = other_record(run, plain)

    assert with_zeros is not None
    assert without is not None
    assert with_zeros["subject_name"] != without["subject_name"]


def test_codes_with_letters_kept(case_runs) -> None:
    run = case_runs(DIGIT_CODES_CASE)
    assert other_record(run, "SB2018100001")["uscc"] == "91410700MAXRQ8N364"
    assert other_record(run, "130001")["uscc"] == "91410700MAH516MB42"
    assert other_record(run, "130002")["id_number"] == "41072119560627505X"


def test_record_ids_all_distinct(case_runs) -> None:
    row = (
        case_runs(DIGIT_CODES_CASE)
        .con.execute("SELECT count(DISTINCT record_id), count(*) FROM rec_other")
        .fetchone()
    )
    assert row == (30011, 30011)


# ------------------------------------------------------- quoted fields late in the file


LATE_QUOTES_CASE = "03-quoted-fields-after-row-25000"


def penalty(run: CaseRun, number: str) -> dict:
    rows = fetch_dicts(
        run.con, "SELECT * FROM rec_penalty WHERE decision_number = ?", [number]
    )
    assert len(rows) == 1, number
    return rows[0]


def test_quoted_comma_kept(case_runs) -> None:
    record = penalty(case_runs(LATE_QUOTES_CASE), "新交罚〔2018〕25001号")
    assert (
        record["violation_facts"] == "未按规定办理道路运输证,擅自从事道路货物运输经营"
    )


def test_doubled_quotes_undoubled(case_runs) -> None:
    record = penalty(case_runs(LATE_QUOTES_CASE), "新交罚〔2018〕25002号")
    assert record["subject_name"] == '新乡市"顺达"物流有限公司'


def test_quoted_line_feed_kept(case_runs) -> None:
    record = penalty(case_runs(LATE_QUOTES_CASE), "新交罚〔2018〕25003号")
    assert record["violation_facts"] == (
        "2018年9月20日在G107线新乡段查获超限车辆;\n车货总重55吨,超限15吨"
    )


def test_quoted_comma_and_quotes(case_runs) -> None:
    record = penalty(case_runs(LATE_QUOTES_CASE), "新交罚〔2018〕25004号")
    assert record["legal_basis"] == (
        '《中华人民共和国道路运输条例》第六十三条,"情节严重的"从重处罚'
    )


@pytest.mark.parametrize(
    ("number", "name", "uscc", "id_number", "facts", "content", "amount"),
    [
        (
            "新交罚〔2018〕25005号",
            "秦明秀",
            None,
            "410782197202075045",
            "货车超载",
            "罚款500元",
            "0.05",
        ),
        (
            "新交罚〔2018〕25006号",
            "新乡市德义农资有限责任公司",
            "914107003279780352",
            None,
            "擅自改装车辆",
            "罚款3000元",
            "0.3",
        ),
    ],
)
def test_parsing_resumes_after_quotes(
    case_runs, number, name, uscc, id_number, facts, content, amount
) -> None:
    record = penalty(case_runs(LATE_QUOTES_CASE), number)
    assert record["subject_name"] == name
    assert record["uscc"] == uscc
    assert record["id_number"] == id_number
    assert record["violation_facts"] == facts
    assert record["legal_basis"] == "公路安全保护条例第64条"
    assert record["penalty_content"] == content
    assert record["fine_amount"] == amount
    assert record["decision_date"] == "2018-10-12"


def test_no_stray_quotes(case_runs) -> None:
    quoted = [
        text for text in stored_texts(case_runs(LATE_QUOTES_CASE).con) if '"' in text
    ]
    assert sorted(quoted) == sorted(
        [
            '新乡市"顺达"物流有限公司',
            '《中华人民共和国道路运输条例》第六十三条,"情节严重的"从重处罚',
        ]
    )


# ------------------------------------------------------------- XLSX government template


TEMPLATE_CASE = "04-xlsx-government-template"


@pytest.mark.parametrize(
    ("row_no", "number", "decided"),
    [
        (6, "卫行审许〔2018〕301号", dt.date(2018, 10, 5)),
        (7, "卫行审许〔2018〕302号", dt.date(2018, 10, 8)),
        (8, "卫行审许〔2018〕303号", dt.date(2018, 10, 9)),
        (9, "卫行审许〔2018〕304号", dt.date(2018, 10, 5)),
        (10, "卫行审许〔2018〕305号", dt.date(2018, 9, 28)),
        (11, "卫行审许〔2018〕306号", dt.date(2018, 9, 28)),
        (12, "卫行审许〔2018〕307号", dt.date(2018, 10, 10)),
        (13, "卫行审许〔2018〕308号", dt.date(2018, 10, 11)),
    ],
)
def test_template_decision_dates(case_runs, row_no: int, number: str, decided) -> None:
    row = (
        case_runs(TEMPLATE_CASE)
        .con.execute(
            "SELECT decision_number, decision_date_value FROM rec_license WHERE row_no = ?",
            [row_no],
        )
        .fetchone()
    )
    assert row == (number, decided)


def test_template_merged_authority(case_runs) -> None:
    rows = (
        case_runs(TEMPLATE_CASE)
        .con.execute("SELECT authority FROM rec_license")
        .fetchall()
    )
    assert [row[0] for row in rows] == ["卫辉市行政审批服务局"] * 8


def test_template_valid_to(case_runs) -> None:
    row = (
        case_runs(TEMPLATE_CASE)
        .con.execute("SELECT valid_to FROM rec_license WHERE row_no = 6")
        .fetchone()
    )
    assert row == ("2023-10-04",)


def test_template_no_label_columns(case_runs) -> None:
    names = {
        row[0]
        for row in case_runs(TEMPLATE_CASE)
        .con.execute("DESCRIBE rec_license")
        .fetchall()
    }
    for label in ("序号", "行政相对人信息", "许可信息", "None", ""):
        assert label not in names
    assert not [name for name in names if name.startswith("Unnamed")]


def test_template_unknown_column_once(case_runs) -> None:
    notes = case_runs(TEMPLATE_CASE).reports[1].results[0].notes
    mentions = sum(note.count("序号") for note in notes)
    assert mentions == 1


@pytest.mark.parametrize("sheet", ["填表说明", "Sheet3"])
def test_template_skipped_sheet_named(case_runs, sheet: str) -> None:
    notes = case_runs(TEMPLATE_CASE).reports[1].results[0].notes
    assert [note for note in notes if "skipped" in note and sheet in note]


# -------------------------------------------------- identifiers stored as Excel numbers


NUMERIC_IDS_CASE = "05-xlsx-id-number-as-number"


@pytest.mark.parametrize(
    ("row_no", "column", "value"),
    [
        (2, "id_number", "410702198504128811"),
        (5, "id_number", "41070319901203270X"),
        (6, "id_number", "410704680721315"),
        (7, "uscc", "91410700167094950L"),
        (10, "id_number", "410782197608286520"),
    ],
)
def test_numeric_ids_landed_as_text(
    case_runs, row_no: int, column: str, value: str
) -> None:
    row = (
        case_runs(NUMERIC_IDS_CASE)
        .con.execute(f"SELECT {column} FROM rec_penalty WHERE row_no = ?", [row_no])
        .fetchone()
    )
    assert row == (value,)


def test_numeric_ids_never_rounded(case_runs) -> None:
    rows = (
        case_runs(NUMERIC_IDS_CASE)
        .con.execute("SELECT uscc, id_number FROM rec_penalty")
        .fetchall()
    )
    codes = [code for row in rows for code in row if code is not None]
    assert codes
    for code in codes:
        assert not code.endswith(".0"), code
        assert "E" not in code, code
        assert code != "410711197712053000"


@pytest.mark.parametrize(
    ("row_no", "number"),
    [
        (3, "新城管罚〔2018〕402号"),
        (4, "新城管罚〔2018〕403号"),
        (8, "新城管罚〔2018〕407号"),
        (9, "新城管罚〔2018〕408号"),
    ],
)
def test_numeric_id_rejects_kept_whole(case_runs, row_no: int, number: str) -> None:
    row = (
        case_runs(NUMERIC_IDS_CASE)
        .con.execute("SELECT record FROM rejects WHERE row_no = ?", [row_no])
        .fetchone()
    )
    record = json.loads(row[0])
    assert record["行政处罚决定书文号"] == number
    assert record["行政相对人名称"]


# -------------------------------------------- full-width characters and spaces in codes


FULLWIDTH_CASE = "06-fullwidth-and-spaces-in-codes"


@pytest.mark.parametrize(
    ("number", "column", "folded"),
    [
        ("新工商罚〔2018〕501号", "uscc", "91410702MATERNRM4C"),
        ("新工商罚〔2018〕502号", "uscc", "91410702MAG1F1L80H"),
        ("新工商罚〔2018〕503号", "uscc", "91410702MA2YAGWE8P"),
        ("新工商罚〔2018〕504号", "uscc", "91410702MAYQ1W4Q39"),
        ("新工商罚〔2018〕505号", "id_number", "41070219850618119X"),
        ("新工商罚〔2018〕506号", "id_number", "41071119910207011X"),
        ("新工商罚〔2018〕509号", "id_number", "410721650315123"),
        ("新工商罚〔2018〕507号", "uscc", "00000000000000000X"),
        ("新工商罚〔2018〕508号", "uscc", "00000000000000000X"),
    ],
)
def test_codes_stored_folded(case_runs, number: str, column: str, folded: str) -> None:
    assert penalty(case_runs(FULLWIDTH_CASE), number)[column] == folded


def test_folded_key_corrected_once(case_runs) -> None:
    record = penalty(case_runs(FULLWIDTH_CASE), "新工商罚〔2018〕501号")
    assert record["fine_amount_value"] == Decimal("0.5")
    assert record["received_date"] == dt.date(2018, 10, 15)


# ----------------------------------------------------------------- every rejection kind


REJECTIONS_CASE = "07-every-rejection-kind"


def test_commitment_types_landed(case_runs) -> None:
    rows = (
        case_runs(REJECTIONS_CASE)
        .con.execute(
            "SELECT commitment_type_value, count(*) FROM rec_commitment GROUP BY ALL"
        )
        .fetchall()
    )
    assert dict(rows) == {
        "主动公示型": 2,
        "审批替代型": 1,
        "信用修复型": 1,
        "行业自律型": 1,
        "容缺受理型": 1,
        "证明事项型": 1,
        "其他": 1,
    }


def test_commitment_annex4_figures(case_runs) -> None:
    run = case_runs(REJECTIONS_CASE)
    compute_figures(run.con, run.settings, Quarter(2018, 4))
    figures = fetch_dicts(
        run.con,
        "SELECT * FROM unit_figures WHERE unit_id = 'development_reform'",
    )[0]
    assert figures["commitment_voluntary"] == 2
    assert figures["commitment_approval_substitute"] == 1
    assert figures["commitment_credit_repair"] == 1
    assert figures["commitment_self_discipline"] == 1
    assert figures["commitment_other_types"] == 3
    assert figures["commitment_total"] == 8
    assert figures["total_stock"] == 0


def test_boundary_dates_landed(case_runs) -> None:
    rows = (
        case_runs(REJECTIONS_CASE)
        .con.execute("SELECT decision_date_value FROM rec_penalty")
        .fetchall()
    )
    assert sorted(row[0] for row in rows) == [
        dt.date(1949, 10, 1),
        dt.date(2018, 10, 8),
        dt.date(2018, 10, 9),
        dt.date(2018, 10, 12),
        dt.date(2018, 10, 15),
    ]


@pytest.mark.parametrize(
    ("row_no", "column", "delivered"),
    [(19, "罚款金额（万元）", "待定"), (11, "处罚决定日期", "2018年10月")],
)
def test_reject_kept_verbatim(
    case_runs, row_no: int, column: str, delivered: str
) -> None:
    rows = (
        case_runs(REJECTIONS_CASE)
        .con.execute(
            "SELECT record FROM rejects WHERE path = 'environment/20181015_penalty.csv' "
            "AND row_no = ?",
            [row_no],
        )
        .fetchall()
    )
    assert len(rows) == 1
    assert json.loads(rows[0][0])[column] == delivered


# ------------------------------------------------------ re-delivery and duplicate files


REDELIVERY_CASE = "08-redelivery-and-duplicate-file"

# decision -> (received date, fine amount, content, decision date) after round 1
REDELIVERY_ROUND1 = {
    "新食药监罚〔2018〕701号": ("2018-10-10", "0.5", "警告，罚款", "2018-10-02"),
    "新食药监罚〔2018〕702号": ("2018-10-10", "0.8", "罚款", "2018-10-03"),
    "新食药监罚〔2018〕703号": (
        "2018-10-10",
        "1.2",
        "没收违法所得，罚款",
        "2018-10-04",
    ),
    "新食药监罚〔2018〕704号": (
        "2018-10-10",
        "0.3",
        "没收违法所得，罚款",
        "2018-10-09",
    ),
    "新食药监罚〔2018〕705号": ("2018-10-10", "0", "警告", "2018-10-09"),
    "新食药监罚〔2018〕706号": ("2018-10-20", "2", "罚款", "2018-10-15"),
    "新食药监罚〔2018〕707号": ("2018-10-20", "0.1", "警告，罚款", "2018-10-18"),
}


def food_drug_state(con: duckdb.DuckDBPyConnection) -> dict[str, tuple]:
    rows = con.execute(
        "SELECT decision_number, strftime(received_date, '%Y-%m-%d'), "
        "CAST(fine_amount_value AS VARCHAR), penalty_content, "
        "strftime(decision_date_value, '%Y-%m-%d'), subject_name FROM rec_penalty"
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


def normalised(state: dict[str, tuple]) -> dict[str, tuple]:
    """Drop the subject name and write amounts without trailing zeros."""
    result = {}
    for number, (received, amount, content, decided, _name) in state.items():
        result[number] = (received, str(Decimal(amount).normalize()), content, decided)
    return result


def test_redelivery_round1_values(settings, warehouse, copy_case) -> None:
    copy_case(REDELIVERY_CASE)
    ingest_incoming(warehouse, settings)
    assert normalised(food_drug_state(warehouse)) == REDELIVERY_ROUND1


def test_redelivery_rerun_unchanged(settings, warehouse, copy_case) -> None:
    copy_case(REDELIVERY_CASE)
    ingest_incoming(warehouse, settings)
    state = food_drug_state(warehouse)
    ledger = warehouse.execute("SELECT count(*) FROM ledger").fetchone()

    report = ingest_incoming(warehouse, settings)

    assert report.results == []
    assert food_drug_state(warehouse) == state
    assert warehouse.execute("SELECT count(*) FROM ledger").fetchone() == ledger


def test_redelivery_restart_between_files(settings, copy_case) -> None:
    copy_case(REDELIVERY_CASE)
    con = connect(settings)
    units = load_units()
    first = scan_incoming(settings.incoming_dir, units, settings.settle_seconds)
    ingest_file(con, settings, first.deliveries[0])
    con.close()

    con = connect(settings)
    try:
        ingest_incoming(con, settings)
        state = normalised(food_drug_state(con))
    finally:
        con.close()
    assert state == REDELIVERY_ROUND1


def test_redelivery_round2_values(case_runs) -> None:
    state = food_drug_state(case_runs(REDELIVERY_CASE).con)
    round2 = normalised(state)

    assert state["新食药监罚〔2018〕701号"][4] == "新乡市广祥农资有限责任公司"
    assert round2["新食药监罚〔2018〕701号"][0] == "2018-10-10"
    assert round2["新食药监罚〔2018〕708号"][0] == "2018-10-10"
    for number, values in REDELIVERY_ROUND1.items():
        assert round2[number] == values, number


def test_reused_name_read_again(case_runs) -> None:
    results = case_runs(REDELIVERY_CASE).reports[2].results
    assert [(r.rel_path, r.status) for r in results] == [
        ("food_drug/20181010_penalty.csv", "landed")
    ]


# ---------------------------------------------------------------- file and folder names


LAYOUT_CASE = "09-file-and-folder-names"


def test_layout_categories(case_runs) -> None:
    con = case_runs(LAYOUT_CASE).con
    penalties = con.execute(
        "SELECT DISTINCT unit_id, category, received_date FROM rec_penalty"
    ).fetchall()
    licences = con.execute(
        "SELECT DISTINCT unit_id, category, received_date FROM rec_license"
    ).fetchall()
    assert penalties == [("tax", "penalty", dt.date(2018, 10, 12))]
    assert licences == [("tax", "license", dt.date(2018, 10, 12))]


def test_layout_reported_files(case_runs) -> None:
    problems = case_runs(LAYOUT_CASE).reports[1].problems
    expected = {
        rel(entry["path"])
        for entry in load_expected(LAYOUT_CASE)["files"]
        if entry["outcome"].startswith("not read")
    }
    assert len(expected) == 9
    assert sorted(p.rel_path for p in problems) == sorted(expected)
    for problem in problems:
        assert problem.expected == (
            "incoming/<unit_id>/<YYYYMMDD>_<category>[_<free text>].csv|xlsx"
        )


def test_layout_skipped_files(case_runs) -> None:
    skipped = [
        line.split(": ", 1)[0] for line in case_runs(LAYOUT_CASE).reports[1].skipped
    ]
    assert sorted(skipped) == sorted(
        [
            "tax/~$20181012_penalty.xlsx",
            "tax/20181012_penalty.csv.part",
            "tax/20181012_license.csv.tmp",
            "tax/.20181012_penalty.csv",
        ]
    )


@pytest.mark.parametrize("name", ["市税务局", "tax_bureau", "2018Q4"])
def test_layout_no_folder_unit(case_runs, name: str) -> None:
    con = case_runs(LAYOUT_CASE).con
    for table in (*RECORD_TABLES, "rejects", "row_flags", "ledger", "units"):
        count = con.execute(
            f"SELECT count(*) FROM {table} WHERE unit_id = ?", [name]
        ).fetchone()[0]
        assert count == 0, table


def test_layout_reported_once(case_runs) -> None:
    problems = case_runs(LAYOUT_CASE).reports[1].problems
    paths = [problem.rel_path for problem in problems]
    assert len(paths) == len(set(paths))
