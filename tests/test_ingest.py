"""Ingestion of hand-made extracts, one kind of delivery fault per group of tests.

Each test writes its own files under ``tmp_path``, ingests them into a real DuckDB
file and reads the warehouse back.
"""

from __future__ import annotations

import codecs
import datetime as dt
import io
import json
import os
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path

import duckdb
import openpyxl
import pytest
from conftest import csv_bytes, record_count, set_mtime, snapshot, xlsx_bytes

from credit_etl.ingest import IngestReport, ingest_incoming
from credit_etl.readers import CHUNK
from credit_etl.settings import Settings
from credit_etl.warehouse import connect

PENALTY_HEADER = [
    "行政相对人名称",
    "统一社会信用代码",
    "证件号码",
    "行政处罚决定书文号",
    "处罚决定日期",
]
LICENSE_HEADER = [
    "行政相对人名称",
    "统一社会信用代码",
    "证件号码",
    "行政许可决定文书号",
    "许可决定日期",
]
OTHER_HEADER = ["记录编号", "主体名称", "统一社会信用代码", "证件号码", "信息类别"]
COMMITMENT_HEADER = [
    "承诺人名称",
    "统一社会信用代码",
    "承诺类型",
    "承诺作出日期",
    "承诺编码",
]

# Valid codes: USCCs with a letter and all-digit ones, and ID numbers ending in
# a digit or X.
USCC = "91410700061675925P"
USCC_2 = "91410700393825539H"
DIGIT_USCCS = ("914107003770632204", "914107005858088803", "914107003279780352")
ID_NUMBER = "410702198504128811"
ID_NUMBER_X = "41070319901203270X"
DIGIT_IDS = ("410702198504128811", "410782197608286520")


def penalty_row(
    number: str, decided: str = "2018-10-01", name: str = "新乡市某某有限公司"
):
    return [name, USCC, "", number, decided]


def run_ingest(settings: Settings, con: duckdb.DuckDBPyConnection) -> IngestReport:
    return ingest_incoming(con, settings)


def only_result(report: IngestReport):
    assert len(report.results) == 1, [r.rel_path for r in report.results]
    return report.results[0]


def fetch_one(con: duckdb.DuckDBPyConnection, sql: str, params=None):
    return con.execute(sql, params or []).fetchone()


def rejects(con: duckdb.DuckDBPyConnection) -> dict[int, tuple]:
    rows = con.execute(
        "SELECT row_no, column_name, value, reason FROM rejects ORDER BY row_no"
    ).fetchall()
    return {row[0]: row[1:] for row in rows}


# ---------------------------------------------------------------------------- encodings


def test_gb18030_rare_char_on_last_line(settings, warehouse, deliver) -> None:
    rows = [
        penalty_row(f"新环罚〔2018〕{n}号", name=f"新乡市第{n}建材有限公司")
        for n in range(1, 200)
    ]
    rows.append(
        penalty_row("新环罚〔2018〕200号", name="新乡市\U00020bb7祥五金机电有限公司")
    )
    data = csv_bytes(PENALTY_HEADER, rows, "gb18030", line_end="\r\n")
    head = csv_bytes(PENALTY_HEADER, rows[:-1], "gb18030", line_end="\r\n")
    assert head.decode("gbk") == head.decode("gb18030")
    deliver("environment/20181015_penalty.csv", data)

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 200
    name = fetch_one(
        warehouse,
        "SELECT subject_name FROM rec_penalty WHERE decision_number = '新环罚〔2018〕200号'",
    )[0]
    assert name == "新乡市\U00020bb7祥五金机电有限公司"
    encoding = fetch_one(warehouse, "SELECT encoding FROM ledger")[0]
    assert encoding == "gb18030"


def test_gb18030_after_ascii_megabyte(settings, warehouse, deliver) -> None:
    # English header aliases keep the whole first chunk ASCII.
    header = ["subject_name", "uscc", "id_number", "decision_number", "decision_date"]
    rows = [
        penalty_row(f"HB-2018-{n:06d}", name=f"Xinxiang Trading Company {n:06d}")
        for n in range(20_000)
    ]
    rows.append(penalty_row("HB-2018-LAST", name="王\u4dae"))
    data = csv_bytes(header, rows, "gb18030")
    assert data[:CHUNK].isascii()
    assert len(data) > CHUNK
    deliver("environment/20181015_penalty.csv", data)

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 20_001
    name = fetch_one(
        warehouse,
        "SELECT subject_name FROM rec_penalty WHERE decision_number = 'HB-2018-LAST'",
    )[0]
    assert name == "王\u4dae"


def test_utf8_char_across_chunk_boundary(settings, warehouse, deliver) -> None:
    parts = [(",".join(PENALTY_HEADER) + "\n").encode()]
    size = len(parts[0])
    count = 0
    while size < CHUNK - 200:
        line = f"Company {count:06d},{USCC},,HB-{count:06d},2018-10-01\n".encode()
        parts.append(line)
        size += len(line)
        count += 1
    # Pad the last name so that its first Chinese character starts one byte before
    # the end of the first chunk the reader takes.
    name = "x" * (CHUNK - 1 - size) + "新乡市永泰机械有限公司"
    parts.append(f"{name},{USCC},,HB-LAST,2018-10-01\n".encode())
    data = b"".join(parts)
    assert data[CHUNK - 1 : CHUNK + 2].decode("utf-8") == "新"
    deliver("environment/20181015_penalty.csv", data)

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == count + 1
    assert fetch_one(warehouse, "SELECT encoding FROM ledger")[0] == "utf-8"
    stored = fetch_one(
        warehouse,
        "SELECT subject_name FROM rec_penalty WHERE decision_number = 'HB-LAST'",
    )[0]
    assert stored == name


@pytest.mark.parametrize("encoding", ["utf-16-le", "utf-16-be"])
def test_utf16_bom_tab_separated(settings, warehouse, deliver, encoding: str) -> None:
    rows = [
        ["新乡市恒通商贸有限公司", USCC, "", "新环罚〔2018〕1号", "2018-10-01"],
        ["阿依古丽·买买提", "", ID_NUMBER_X, "新环罚〔2018〕2号", "2018/10/2"],
    ]
    bom = codecs.BOM_UTF16_LE if encoding.endswith("le") else codecs.BOM_UTF16_BE
    data = bom + csv_bytes(
        PENALTY_HEADER, rows, encoding, delimiter="\t", line_end="\r\n"
    )
    deliver("environment/20181015_penalty.csv", data)

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 2
    stored = warehouse.execute(
        "SELECT subject_name, id_number FROM rec_penalty ORDER BY row_no"
    ).fetchall()
    assert stored == [
        ("新乡市恒通商贸有限公司", None),
        ("阿依古丽·买买提", ID_NUMBER_X),
    ]


def test_utf8_bom_header_matched(settings, warehouse, deliver) -> None:
    rows = [penalty_row("新环罚〔2018〕1号", name="新乡市恒通商贸有限公司")]
    deliver(
        "environment/20181015_penalty.csv",
        codecs.BOM_UTF8 + csv_bytes(PENALTY_HEADER, rows),
    )

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 1
    assert result.notes == []
    name = fetch_one(warehouse, "SELECT subject_name FROM rec_penalty")[0]
    assert name == "新乡市恒通商贸有限公司"


def test_undecodable_file_fails(settings, warehouse, deliver) -> None:
    data = csv_bytes(PENALTY_HEADER, [penalty_row("新环罚〔2018〕1号")], "gb18030")
    deliver("environment/20181015_penalty.csv", data + b"\xff\xff\xff\n")

    result = only_result(run_ingest(settings, warehouse))

    assert result.status == "failed"
    assert "byte" in result.error
    assert record_count(warehouse) == 0


# --------------------------------------------------------------------------- text codes


def test_code_column_letter_after_40000_rows(settings, warehouse, deliver) -> None:
    rows = [
        [str(100_000 + n), f"单位{n}", DIGIT_USCCS[n % 3], DIGIT_IDS[n % 2], "社会保险"]
        for n in range(40_000)
    ]
    rows += [
        ["SB2018100001", "新乡市字母有限公司", "91410700MAXRQ8N364", "", "社会保险"],
        ["0100017", "补录单位", USCC, "", "社会保险"],
        ["0139999", "补录单位二", "", ID_NUMBER_X, "社会保险"],
    ]
    deliver("hrss/20181010_other.csv", csv_bytes(OTHER_HEADER, rows))

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 40_003
    assert (
        fetch_one(warehouse, "SELECT count(DISTINCT record_id) FROM rec_other")[0]
        == 40_003
    )
    for record_id in ("100017", "0100017", "139999", "0139999", "SB2018100001"):
        found = fetch_one(
            warehouse, "SELECT count(*) FROM rec_other WHERE record_id = ?", [record_id]
        )
        assert found == (1,), record_id
    uscc = fetch_one(
        warehouse, "SELECT uscc FROM rec_other WHERE record_id = 'SB2018100001'"
    )
    assert uscc == ("91410700MAXRQ8N364",)


@pytest.mark.parametrize("extension", ["csv", "xlsx"])
def test_leading_zeros_anywhere(
    settings, warehouse, write_extract, extension: str
) -> None:
    ids = ["007", "12"] + [str(n) for n in range(13, 60)] + ["0012", "000", "7"]
    rows = [[record_id, f"单位{record_id}", USCC, "", "水费"] for record_id in ids]
    write_extract(f"capital_water/20181010_other.{extension}", OTHER_HEADER, rows)

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == len(ids)
    stored = {
        row[0]
        for row in warehouse.execute("SELECT record_id FROM rec_other").fetchall()
    }
    assert stored == set(ids)


def test_other_without_record_id_keys_whole_row(
    settings, warehouse, write_extract
) -> None:
    header = ["主体名称", "统一社会信用代码", "信息类别", "缴费月份"]
    rows = [
        ["新乡市甲公司", USCC, "水费", "2018-09"],
        ["新乡市甲公司", USCC, "水费", "2018-09"],
        ["新乡市甲公司", USCC, "水费", "2018-10"],
    ]
    write_extract("capital_water/20181010_other.csv", header, rows)

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 2
    assert result.rows_repeated == 1
    extras = warehouse.execute("SELECT extra FROM rec_other ORDER BY row_no").fetchall()
    assert [json.loads(row[0])["缴费月份"] for row in extras] == ["2018-09", "2018-10"]


# -------------------------------------------------------------------------- CSV quoting


def test_quoted_line_breaks_early_and_late(settings, warehouse, deliver) -> None:
    # DuckDB sniffs a CSV dialect from its first 20,480 rows, so one quoted line
    # break sits past that sample.
    rows = [penalty_row(f"Q{n}", name=f"单位{n}") for n in range(25_000)]
    rows[0][0] = "新乡市\n第一公司"
    rows[24_900][0] = '新乡市"顺达",物流\r\n有限公司'
    deliver(
        "environment/20181015_penalty.csv",
        csv_bytes(PENALTY_HEADER, rows, line_end="\r\n"),
    )

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_read == 25_000
    assert result.rows_landed == 25_000
    stored = dict(
        warehouse.execute(
            "SELECT decision_number, subject_name FROM rec_penalty "
            "WHERE decision_number IN ('Q0', 'Q24900')"
        ).fetchall()
    )
    assert stored == {
        "Q0": "新乡市\n第一公司",
        "Q24900": '新乡市"顺达",物流\r\n有限公司',
    }
    row_no = fetch_one(
        warehouse, "SELECT row_no FROM rec_penalty WHERE decision_number = 'Q24999'"
    )
    assert row_no == (25_001,)


def test_ragged_rows_rejected(settings, warehouse, deliver) -> None:
    lines = [",".join(PENALTY_HEADER)]
    lines += [",".join(penalty_row(f"R{n}")) for n in range(1, 1_000)]
    lines[500] = "新乡市少列公司,91410700061675925P,,R500"
    lines[900] = '"新乡市\n多列公司",91410700061675925P,,R900,2018-10-01,多余'
    deliver("environment/20181015_penalty.csv", ("\n".join(lines) + "\n").encode())

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_read == 999
    assert result.rows_landed == 997
    assert result.rows_rejected == 2
    found = rejects(warehouse)
    assert sorted(found) == [501, 901]
    assert "4 fields" in found[501][2]
    assert "6 fields" in found[901][2]
    row_no = fetch_one(
        warehouse, "SELECT row_no FROM rec_penalty WHERE decision_number = 'R999'"
    )
    assert row_no == (1_000,)
    record = fetch_one(warehouse, "SELECT record FROM rejects WHERE row_no = 501")[0]
    assert "R500" in record


@pytest.mark.parametrize("encoding", ["utf-8", "gb18030"])
@pytest.mark.parametrize("ragged", [False, True], ids=["plain", "with-ragged-row"])
def test_blank_line_keeps_row_numbers(
    settings, warehouse, deliver, ragged: bool, encoding: str
) -> None:
    lines = [
        ",".join(PENALTY_HEADER),
        ",".join(penalty_row("B1")),
        "",
        ",".join(penalty_row("B2", decided="2018-13-01")),
    ]
    if ragged:
        lines.append("新乡市少列公司,91410700061675925P,,B3")
    body = "\r\n".join(lines) + "\r\n"
    deliver("environment/20181015_penalty.csv", body.encode(encoding))

    run_ingest(settings, warehouse)

    bad_date = fetch_one(
        warehouse, "SELECT row_no FROM rejects WHERE value = '2018-13-01'"
    )
    assert bad_date == (4,)


def test_header_names_folded(settings, warehouse, deliver) -> None:
    header = " 行政相对人名称 ,ＵＳＣＣ,id_number,行政处罚决定书文号,处罚决定日期,罚款金额(万元),序号"
    body = f"{header}\n新乡市甲公司,{USCC},,P1,2018-10-01,0.5,1\n新乡市乙公司,{USCC},,P2,2018-10-01,0.6,2\n"
    deliver("environment/20181015_penalty.csv", body.encode())

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 2
    assert result.notes == ["columns not in the standard, ignored: 序号"]
    stored = warehouse.execute(
        "SELECT subject_name, uscc, fine_amount_value FROM rec_penalty ORDER BY row_no"
    ).fetchall()
    assert stored == [
        ("新乡市甲公司", USCC, Decimal("0.5")),
        ("新乡市乙公司", USCC, Decimal("0.6")),
    ]


def test_missing_required_column_fails(settings, warehouse, write_extract) -> None:
    write_extract(
        "environment/20181015_penalty.csv",
        ["行政相对人名称", "统一社会信用代码", "处罚决定日期"],
        [["新乡市甲公司", USCC, "2018-10-01"]],
    )

    result = only_result(run_ingest(settings, warehouse))

    assert result.status == "failed"
    assert "行政处罚决定书文号" in result.error
    assert record_count(warehouse) == 0


def test_empty_file_fails(settings, warehouse, deliver) -> None:
    deliver("environment/20181015_penalty.csv", b"")

    result = only_result(run_ingest(settings, warehouse))

    assert result.status == "failed"
    assert result.error


# --------------------------------------------------------------------------------- XLSX


def template_workbook(rows: list[list]) -> bytes:
    """Return a licence workbook: title in row 1, group labels in row 2, header in row 3."""
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = "许可"
    sheet["A1"] = "某县行政许可信息公示表"
    sheet.merge_cells("A1:F1")
    sheet["A2"] = "行政相对人信息"
    sheet.merge_cells("A2:C2")
    for column, name in zip(
        "DEF", ["行政许可决定文书号", "许可决定日期", "许可机关"], strict=True
    ):
        sheet[f"{column}2"] = name
        sheet.merge_cells(f"{column}2:{column}3")
    for column, name in zip(
        "ABC", ["行政相对人名称", "统一社会信用代码", "证件号码"], strict=True
    ):
        sheet[f"{column}3"] = name
    for row in rows:
        sheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def test_xlsx_header_in_row_three(settings, warehouse, deliver) -> None:
    rows = [
        ["新乡市甲公司", USCC, None, "许〔2018〕1号", dt.date(2018, 10, 5), "县审批局"],
        ["王䶮", None, ID_NUMBER_X, "许〔2018〕2号", "2018年10月6日", "县审批局"],
    ]
    deliver("huojia/20181012_license.xlsx", template_workbook(rows))

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 2
    stored = warehouse.execute(
        "SELECT row_no, subject_name, decision_number, decision_date_value, authority "
        "FROM rec_license ORDER BY row_no"
    ).fetchall()
    assert stored == [
        (4, "新乡市甲公司", "许〔2018〕1号", dt.date(2018, 10, 5), "县审批局"),
        (5, "王䶮", "许〔2018〕2号", dt.date(2018, 10, 6), "县审批局"),
    ]


@pytest.mark.parametrize(
    ("cell", "decided"),
    [
        (dt.date(2018, 10, 5), dt.date(2018, 10, 5)),
        (dt.datetime(2018, 10, 9, 15, 30), dt.date(2018, 10, 9)),
        (43382, dt.date(2018, 10, 9)),
        (43382.75, dt.date(2018, 10, 9)),
        ("2018年10月5日", dt.date(2018, 10, 5)),
        ("2018/10/11", dt.date(2018, 10, 11)),
        ("20181011", dt.date(2018, 10, 11)),
    ],
)
def test_xlsx_date_cells(settings, warehouse, deliver, cell, decided) -> None:
    rows = [["新乡市甲公司", USCC, None, "许〔2018〕1号", cell, "县审批局"]]
    deliver("huojia/20181012_license.xlsx", template_workbook(rows))

    run_ingest(settings, warehouse)

    assert fetch_one(warehouse, "SELECT decision_date_value FROM rec_license") == (
        decided,
    )


def test_xlsx_uscc_numbers(settings, warehouse, deliver) -> None:
    rows = [
        ["新乡市甲公司", 914107003770632204, None, "许〔2018〕1号", "2018-10-05", "局"],
        ["新乡市乙公司", 410702000012345, None, "许〔2018〕2号", "2018-10-05", "局"],
        ["新乡市丙公司", USCC, None, "许〔2018〕3号", "2018-10-05", "局"],
    ]
    deliver("huojia/20181012_license.xlsx", template_workbook(rows))

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 1
    found = rejects(warehouse)
    assert sorted(found) == [4, 5]
    assert found[4][0] == "统一社会信用代码"
    assert "9.14107003770632E+17" in found[4][2]
    assert found[5][0] == "统一社会信用代码"
    assert "410702000012345" in found[5][2]
    codes = [
        row[0] for row in warehouse.execute("SELECT uscc FROM rec_license").fetchall()
    ]
    assert codes == [USCC]


def test_xlsx_rounded_uscc_beside_valid_id(settings, warehouse, deliver) -> None:
    rows = [
        [
            "个体户王某",
            914107003770632204,
            ID_NUMBER,
            "许〔2018〕1号",
            "2018-10-05",
            "局",
        ]
    ]
    deliver("huojia/20181012_license.xlsx", template_workbook(rows))

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 1
    stored = fetch_one(warehouse, "SELECT uscc, id_number FROM rec_license")
    assert stored is not None
    assert stored[1] == ID_NUMBER
    assert stored[0] is None or "E" not in stored[0]


def test_xlsx_sheet_without_header_skipped(settings, warehouse, deliver) -> None:
    workbook = openpyxl.load_workbook(
        io.BytesIO(
            xlsx_bytes(
                LICENSE_HEADER,
                [
                    ["新乡市甲公司", USCC, None, "许〔2018〕1号", "2018-10-05"],
                ],
                sheet="许可",
            )
        )
    )
    notes = workbook.create_sheet("说明")
    notes["A1"] = "请按 行政相对人名称、行政许可决定文书号、许可决定日期 填写"
    buffer = io.BytesIO()
    workbook.save(buffer)
    deliver("huojia/20181012_license.xlsx", buffer.getvalue())

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 1
    assert [note for note in result.notes if "说明" in note]
    assert fetch_one(warehouse, "SELECT count(*) FROM rejects") == (0,)


def test_xlsx_long_numeric_record_ids(settings, warehouse, deliver) -> None:
    # Both ids need 18 digits, so as Excel numbers they round to the same double.
    rows = [
        [123456789012345678, "新乡市甲公司", USCC, "水费"],
        [123456789012345679, "新乡市乙公司", USCC, "水费"],
        [100017, "新乡市丙公司", USCC, "水费"],
    ]
    deliver(
        "capital_water/20181015_other.xlsx",
        xlsx_bytes(["记录编号", "主体名称", "统一社会信用代码", "信息类别"], rows),
    )

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_repeated == 0
    stored = [
        row[0]
        for row in warehouse.execute("SELECT record_id FROM rec_other").fetchall()
    ]
    assert "100017" in stored
    for record_id in stored:
        assert "e+" not in record_id.lower(), record_id


def test_xlsx_every_sheet_with_header_read(settings, warehouse, deliver) -> None:
    workbook = openpyxl.Workbook()
    september = workbook.active
    september.title = "九月"
    september.append(LICENSE_HEADER)
    september.append(["新乡市甲公司", USCC, None, "许〔2018〕1号", "2018-09-05"])
    october = workbook.create_sheet("十月")
    october.append(LICENSE_HEADER)
    october.append(["新乡市乙公司", USCC_2, None, "许〔2018〕2号", "2018-10-05"])
    october.append(["新乡市丙公司", USCC, None, "许〔2018〕3号", "2018-10-35"])
    buffer = io.BytesIO()
    workbook.save(buffer)
    deliver("huojia/20181012_license.xlsx", buffer.getvalue())

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 2
    assert fetch_one(warehouse, "SELECT sheet, row_no FROM rejects") == ("十月", 3)


def test_xlsx_not_a_workbook_fails(settings, warehouse, deliver) -> None:
    deliver(
        "huojia/20181012_license.xlsx",
        csv_bytes(LICENSE_HEADER, [["甲", USCC, "", "1", "2018-10-01"]]),
    )

    result = only_result(run_ingest(settings, warehouse))

    assert result.status == "failed"
    assert "xlsx" in result.error
    assert record_count(warehouse) == 0


# -------------------------------------------------------------------------------- dates

RECEIVED = "20181015"

# Delivered decision date -> the date it must land as, or None when it is rejected.
DATE_CASES = {
    "2018-10-05": dt.date(2018, 10, 5),
    "2018/10/05": dt.date(2018, 10, 5),
    "2018/10/5": dt.date(2018, 10, 5),
    "20181005": dt.date(2018, 10, 5),
    "2018.10.05": dt.date(2018, 10, 5),
    "2018年10月5日": dt.date(2018, 10, 5),
    "2018-10-05 08:30": dt.date(2018, 10, 5),
    "2018-10-05 08:30:15": dt.date(2018, 10, 5),
    "2018/10/5 8:30": dt.date(2018, 10, 5),
    "20181005 08:30:15": dt.date(2018, 10, 5),
    "2018.10.05 08:30": dt.date(2018, 10, 5),
    "2018年10月5日 08:30": dt.date(2018, 10, 5),
    "2016-02-29": dt.date(2016, 2, 29),
    "1949-10-01": dt.date(1949, 10, 1),
    "2018-10-15": dt.date(2018, 10, 15),
    "2018-02-29": None,
    "2018-02-30": None,
    "2018-13-01": None,
    "1949-09-30": None,
    "2018-10-16": None,
    "2018年10月": None,
    "18-10-05": None,
    "20180230": None,
    "下月初": None,
}


@pytest.fixture(scope="module")
def dated_penalties(tmp_path_factory) -> Iterator[duckdb.DuckDBPyConnection]:
    """A warehouse holding one penalty per delivered date form of DATE_CASES."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("dates") / "data")
    rows = [penalty_row(f"D{n}", decided=text) for n, text in enumerate(DATE_CASES)]
    path = settings.incoming_dir / f"environment/{RECEIVED}_penalty.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(csv_bytes(PENALTY_HEADER, rows))
    set_mtime(path)
    con = connect(settings)
    ingest_incoming(con, settings)
    yield con
    con.close()


@pytest.mark.parametrize(("text", "expected"), list(DATE_CASES.items()))
def test_decision_date_form(dated_penalties, text: str, expected) -> None:
    number = f"D{list(DATE_CASES).index(text)}"
    landed = fetch_one(
        dated_penalties,
        "SELECT decision_date_value FROM rec_penalty WHERE decision_number = ?",
        [number],
    )
    rejected = fetch_one(
        dated_penalties,
        "SELECT column_name, reason FROM rejects WHERE json_extract_string(record, "
        "'$.行政处罚决定书文号') = ?",
        [number],
    )
    if expected is None:
        assert landed is None
        assert rejected is not None
        assert rejected[0] == "处罚决定日期"
    else:
        assert rejected is None, rejected
        assert landed == (expected,)


@pytest.mark.parametrize(
    "text", ["2018-02-29", "2018-10-16", "1949-09-30", "2018年10月"]
)
def test_date_reason_names_value(dated_penalties, text: str) -> None:
    reason = fetch_one(
        dated_penalties, "SELECT reason FROM rejects WHERE value = ?", [text]
    )[0]
    assert text in reason


# -------------------------------------------------------------------------- identifiers

# (USCC, ID number) as delivered -> whether the row lands, and the flag it carries.
IDENTIFIER_CASES = [
    ("valid-uscc", USCC, "", True, None),
    ("uscc-wrong-check", "91410700061675925Q", "", False, None),
    ("uscc-lower-case", "91410700061675925p", "", True, None),
    ("uscc-placeholder", "00000000000000000X", "", True, "placeholder"),
    ("uscc-17-chars", "91410700061675925", "", False, None),
    ("uscc-with-s", "9141070006167S925P", "", False, None),
    ("id-valid", "", ID_NUMBER, True, None),
    ("id-lower-x", "", "41070319901203270x", True, None),
    ("id-wrong-check", "", "410702198504128812", False, None),
    ("id-15-digit", "", "410721650315123", True, "15-digit"),
    ("id-15-digit-bad-birth", "", "410721651315123", False, None),
    ("id-15-digit-letter", "", "41072165031512X", False, None),
    ("id-birth-feb-30", "", "410702199002301236", False, None),
    ("id-birth-year-0000", "", "410702000001011236", False, None),
    ("bad-uscc-valid-id", "91410700061675925Q", ID_NUMBER, True, "invalid code"),
    ("nothing", "", "", False, None),
]


@pytest.fixture(scope="module")
def identified_penalties(tmp_path_factory) -> Iterator[duckdb.DuckDBPyConnection]:
    """A warehouse holding one penalty row per entry of IDENTIFIER_CASES."""
    settings = Settings(data_dir=tmp_path_factory.mktemp("codes") / "data")
    rows = [
        ["新乡市某某有限公司", uscc, id_number, label, "2018-10-01"]
        for label, uscc, id_number, _lands, _flag in IDENTIFIER_CASES
    ]
    path = settings.incoming_dir / "industry_commerce/20181015_penalty.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(csv_bytes(PENALTY_HEADER, rows))
    set_mtime(path)
    con = connect(settings)
    ingest_incoming(con, settings)
    yield con
    con.close()


@pytest.mark.parametrize(
    ("label", "uscc", "id_number", "lands", "flag"),
    IDENTIFIER_CASES,
    ids=[case[0] for case in IDENTIFIER_CASES],
)
def test_subject_identifier(
    identified_penalties, label, uscc, id_number, lands, flag
) -> None:
    landed = fetch_one(
        identified_penalties,
        "SELECT flags FROM rec_penalty WHERE decision_number = ?",
        [label],
    )
    if not lands:
        assert landed is None
        return
    assert landed is not None
    if flag is None:
        assert landed[0] is None
    else:
        assert flag in (landed[0] or "")


def test_identifier_stored_folded(identified_penalties) -> None:
    rows = dict(
        identified_penalties.execute(
            "SELECT decision_number, coalesce(uscc, '') || '|' || coalesce(id_number, '') "
            "FROM rec_penalty WHERE decision_number IN ('uscc-lower-case', 'id-lower-x')"
        ).fetchall()
    )
    assert rows == {
        "uscc-lower-case": "91410700061675925P|",
        "id-lower-x": "|41070319901203270X",
    }


# -------------------------------------------------------------------------- commitments


def test_commitment_types(settings, warehouse, write_extract) -> None:
    words = [
        "主动公示型",
        "主动型",
        "审批替代型",
        "信用修复型",
        "行业自律型",
        "容缺受理型",
        "证明事项型",
        "其他",
        " 信用修复型 ",
        "告知承诺型",
        "主动公示",
        "其它",
    ]
    rows = [
        ["新乡市某某有限公司", USCC, word, "2018-10-01", f"C{n}"]
        for n, word in enumerate(words)
    ]
    write_extract("development_reform/20181015_commitment.csv", COMMITMENT_HEADER, rows)

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 9
    assert result.rows_rejected == 3
    stored = dict(
        warehouse.execute(
            "SELECT commitment_code, commitment_type_value FROM rec_commitment"
        ).fetchall()
    )
    assert stored["C1"] == "主动公示型"
    assert stored["C8"] == "信用修复型"
    assert sorted(set(stored.values())) == sorted(
        [
            "主动公示型",
            "审批替代型",
            "信用修复型",
            "行业自律型",
            "容缺受理型",
            "证明事项型",
            "其他",
        ]
    )
    rejected = {row[1]: row[2] for row in rejects(warehouse).values()}
    assert sorted(rejected) == sorted(["主动公示", "其它", "告知承诺型"])
    for word, reason in rejected.items():
        assert word in reason


def test_commitment_code_is_key(settings, warehouse, write_extract) -> None:
    rows = [
        ["新乡市某某有限公司", USCC, "主动公示型", "2018-10-01", "CN-001"],
        ["新乡市某某有限公司", USCC, "信用修复型", "2018-10-02", "CN-001"],
        ["新乡市某某有限公司", USCC, "信用修复型", "2018-10-02", ""],
        ["新乡市某某有限公司", USCC, "信用修复型", "2018-10-02", ""],
    ]
    write_extract("development_reform/20181015_commitment.csv", COMMITMENT_HEADER, rows)

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_landed == 2
    assert result.rows_repeated == 2
    coded = fetch_one(
        warehouse,
        "SELECT commitment_type_value FROM rec_commitment WHERE commitment_code = 'CN-001'",
    )
    assert coded == ("信用修复型",)


# -------------------------------------------------------------------------- re-delivery


def penalty_state(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(
        "SELECT unit_id, decision_number, uscc, subject_name, received_date, "
        "decision_date_value, fine_amount_value FROM rec_penalty ORDER BY ALL"
    ).fetchall()


AMOUNT_HEADER = PENALTY_HEADER + ["罚款金额（万元）"]


def test_redelivery_by_received_date(settings, warehouse, write_extract) -> None:
    # The later delivery has the older modification time and is written first.
    write_extract(
        "food_drug/20181020_penalty.csv",
        AMOUNT_HEADER,
        [["新乡市甲公司", USCC, "", "P1", "2018-10-03", "0.8"]],
        seconds_ago=600,
    )
    write_extract(
        "food_drug/20181010_penalty.csv",
        AMOUNT_HEADER,
        [["新乡市甲公司", USCC, "", "P1", "2018-10-02", "0.5"]],
    )

    report = run_ingest(settings, warehouse)

    order = [result.rel_path for result in report.results]
    assert order == ["food_drug/20181010_penalty.csv", "food_drug/20181020_penalty.csv"]
    assert penalty_state(warehouse) == [
        (
            "food_drug",
            "P1",
            USCC,
            "新乡市甲公司",
            dt.date(2018, 10, 10),
            dt.date(2018, 10, 3),
            Decimal("0.8"),
        ),
    ]


def test_late_settling_older_file_keeps_correction(
    settings, warehouse, write_extract
) -> None:
    # The 20181010 file is still being copied when the 20181020 file lands.
    write_extract(
        "food_drug/20181020_penalty.csv",
        AMOUNT_HEADER,
        [["新乡市甲公司", USCC, "", "P1", "2018-10-03", "0.8"]],
    )
    older = write_extract(
        "food_drug/20181010_penalty.csv",
        AMOUNT_HEADER,
        [["新乡市甲公司", USCC, "", "P1", "2018-10-02", "0.5"]],
        seconds_ago=0,
    )
    first = run_ingest(settings, warehouse)
    set_mtime(older)

    second = run_ingest(settings, warehouse)

    assert [r.rel_path for r in first.results] == ["food_drug/20181020_penalty.csv"]
    assert [r.rel_path for r in second.results] == ["food_drug/20181010_penalty.csv"]
    assert penalty_state(warehouse) == [
        (
            "food_drug",
            "P1",
            USCC,
            "新乡市甲公司",
            dt.date(2018, 10, 10),
            dt.date(2018, 10, 3),
            Decimal("0.8"),
        ),
    ]


def test_redelivery_key_folded(settings, warehouse, write_extract) -> None:
    write_extract("food_drug/20181010_penalty.csv", PENALTY_HEADER, [penalty_row("P1")])
    write_extract(
        "food_drug/20181020_penalty.csv",
        PENALTY_HEADER,
        [
            [
                "新乡市甲公司",
                " ９１４１０７００ ０６１６７５９２５ｐ ",
                "",
                "P1",
                "2018-10-01",
            ]
        ],
    )

    report = run_ingest(settings, warehouse)

    assert report.results[1].rows_repeated == 1
    assert fetch_one(
        warehouse, "SELECT count(*), min(received_date) FROM rec_penalty"
    ) == (
        1,
        dt.date(2018, 10, 10),
    )


def test_same_file_two_names(settings, warehouse, deliver) -> None:
    data = csv_bytes(PENALTY_HEADER, [penalty_row(f"P{n}") for n in range(5)])
    deliver("food_drug/20181012_penalty.csv", data)
    deliver("food_drug/20181013_行政处罚_补报.csv", data)

    report = run_ingest(settings, warehouse)

    statuses = [(result.rel_path, result.status) for result in report.results]
    assert statuses == [
        ("food_drug/20181012_penalty.csv", "landed"),
        ("food_drug/20181013_行政处罚_补报.csv", "duplicate"),
    ]
    assert record_count(warehouse) == 5
    received = fetch_one(warehouse, "SELECT DISTINCT received_date FROM rec_penalty")
    assert received == (dt.date(2018, 10, 12),)


def warehouse_state(con: duckdb.DuckDBPyConnection) -> dict[str, list]:
    return {
        "records": penalty_state(con),
        "rejects": con.execute("SELECT * FROM rejects ORDER BY ALL").fetchall(),
        "flags": con.execute("SELECT * FROM row_flags ORDER BY ALL").fetchall(),
        "ledger": con.execute(
            "SELECT file_id, path, sha256, status FROM ledger ORDER BY file_id"
        ).fetchall(),
    }


def test_rerun_changes_nothing(settings, warehouse, write_extract, deliver) -> None:
    write_extract(
        "environment/20181015_penalty.csv",
        PENALTY_HEADER,
        [
            penalty_row("P1"),
            penalty_row("P2", decided="2018-02-30"),
            ["个体户", "00000000000000000X", "", "P3", "2018-10-02"],
        ],
    )
    deliver("nobody/20181015_penalty.csv", b"not read")
    run_ingest(settings, warehouse)
    before = warehouse_state(warehouse)

    report = run_ingest(settings, warehouse)

    assert report.results == []
    assert warehouse_state(warehouse) == before


# ------------------------------------------------------------------------------- layout


def test_unknown_unit_folder_not_read(settings, warehouse, write_extract) -> None:
    write_extract(
        "environment_bureau/20181015_penalty.csv", PENALTY_HEADER, [penalty_row("P1")]
    )
    before = snapshot(settings.incoming_dir)

    report = run_ingest(settings, warehouse)

    assert report.results == []
    assert [p.rel_path for p in report.problems] == [
        "environment_bureau/20181015_penalty.csv"
    ]
    assert record_count(warehouse) == 0
    assert snapshot(settings.incoming_dir) == before


@pytest.mark.parametrize(
    "rel_path",
    [
        "environment/2018Q4/20181015_penalty.csv",
        "environment/a/b/20181015_penalty.csv",
        "nobody/deeper/20181015_penalty.csv",
    ],
)
def test_nested_folder_not_read(
    settings, warehouse, write_extract, rel_path: str
) -> None:
    write_extract(rel_path, PENALTY_HEADER, [penalty_row("P1")])

    report = run_ingest(settings, warehouse)

    assert report.results == []
    assert [p.rel_path for p in report.problems] == [rel_path]
    assert record_count(warehouse) == 0


def test_symlinked_file_not_read(settings, warehouse, tmp_path) -> None:
    outside = tmp_path / "outside.csv"
    outside.write_bytes(csv_bytes(PENALTY_HEADER, [penalty_row("P1")]))
    set_mtime(outside)
    link = settings.incoming_dir / "environment" / "20181015_penalty.csv"
    link.parent.mkdir(parents=True)
    link.symlink_to(outside)

    report = run_ingest(settings, warehouse)

    assert report.results == []
    assert [p.rel_path for p in report.problems] == ["environment/20181015_penalty.csv"]
    assert record_count(warehouse) == 0
    assert link.is_symlink()


def test_symlinked_unit_folder_not_read(settings, warehouse, tmp_path) -> None:
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "20181015_penalty.csv").write_bytes(
        csv_bytes(PENALTY_HEADER, [penalty_row("P1")])
    )
    set_mtime(outside)
    (settings.incoming_dir / "environment").symlink_to(
        outside, target_is_directory=True
    )

    report = run_ingest(settings, warehouse)

    assert report.results == []
    assert record_count(warehouse) == 0


def ingest_opens_fifo(
    settings: Settings, con: duckdb.DuckDBPyConnection, fifo: Path
) -> bool:
    """Run ingest in a thread; return whether it opened ``fifo`` for reading.

    A reader blocks in open() until a writer appears, so a non-blocking writer that
    opens successfully proves a reader; closing it gives that reader end of file,
    which lets the ingest finish.
    """
    finished = threading.Event()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            ingest_incoming(con, settings)
        except BaseException as error:  # re-raised in the test thread below
            errors.append(error)
        finally:
            finished.set()

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    opened = False
    deadline = time.monotonic() + 30
    while not finished.is_set() and time.monotonic() < deadline:
        try:
            descriptor = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:
            time.sleep(0.02)
            continue
        opened = True
        os.close(descriptor)
        break
    thread.join(timeout=30)
    assert not thread.is_alive(), "ingest did not finish"
    if errors:
        raise errors[0]
    return opened


def test_symlink_target_never_opened(settings, warehouse, tmp_path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    link = settings.incoming_dir / "environment" / "20181015_penalty.csv"
    link.parent.mkdir(parents=True)
    link.symlink_to(fifo)

    assert not ingest_opens_fifo(settings, warehouse, fifo)


def test_fifo_in_unit_folder_never_opened(settings, warehouse) -> None:
    fifo = settings.incoming_dir / "environment" / "20181015_penalty.csv"
    fifo.parent.mkdir(parents=True)
    os.mkfifo(fifo)

    assert not ingest_opens_fifo(settings, warehouse, fifo)


def test_fresh_file_skipped_until_settled(settings, warehouse, write_extract) -> None:
    path = write_extract(
        "environment/20181015_penalty.csv",
        PENALTY_HEADER,
        [penalty_row("P1")],
        seconds_ago=0,
    )

    first = run_ingest(settings, warehouse)

    assert first.results == []
    assert first.problems == []
    assert [line.split(": ", 1)[0] for line in first.skipped] == [
        "environment/20181015_penalty.csv"
    ]
    set_mtime(path)
    second = run_ingest(settings, warehouse)
    assert [r.status for r in second.results] == ["landed"]
    assert record_count(warehouse) == 1


@pytest.mark.parametrize(
    ("body", "lines", "interior"),
    [
        (b"h\na\n\nb\n", 4, True),
        (b"h\r\na\r\n\r\nb\r\n", 4, True),
        (b"h\na\nb\n\n\n", 5, False),
        (b"h\r\na\r\nb\r\n\r\n", 4, False),
        (b"h\na\nb", 3, False),
        (b"h\ra\r\rb\r", 1, True),
        (b"", 0, False),
    ],
)
@pytest.mark.parametrize("chunk", [1, 2, 3, 1 << 20])
def test_fingerprint_counts_lines(
    tmp_path, monkeypatch, body: bytes, lines: int, interior: bool, chunk: int
) -> None:
    from credit_etl import readers

    monkeypatch.setattr(readers, "CHUNK", chunk)
    path = tmp_path / "lines.csv"
    path.write_bytes(body)

    assert readers.fingerprint(path).lines == lines
    assert readers.has_interior_blank_line(path) is interior
    assert readers.fingerprint(path, sniff_encoding=False).lines is None
    target = tmp_path / "copy.csv"
    assert readers.transcode_to_utf8(path, "gb18030", target) == lines


@pytest.mark.parametrize("empty_rows", [0, 1, 2])
@pytest.mark.parametrize("empty_columns", [0, 1])
def test_xlsx_row_numbers_below_empty_rows(
    settings, warehouse, deliver, empty_rows: int, empty_columns: int
) -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    top = empty_rows + 1
    left = empty_columns + 1
    sheet.cell(top, left, "行政处罚信息表")
    sheet.merge_cells(
        start_row=top, start_column=left, end_row=top, end_column=left + 3
    )
    names = ["行政相对人名称", "统一社会信用代码", "行政处罚决定书文号", "处罚决定日期"]
    for offset, name in enumerate(names):
        # A two-row header: each name merged over the row below it.
        sheet.cell(top + 1, left + offset, name)
        sheet.merge_cells(
            start_row=top + 1,
            start_column=left + offset,
            end_row=top + 2,
            end_column=left + offset,
        )
    rows = [
        ["新乡市甲公司", "91410700736108233M", "E1", "2018-02-30"],
        ["新乡市乙公司", "91410700736108233M", "E2", "2018-10-05"],
    ]
    for index, row in enumerate(rows):
        for offset, value in enumerate(row):
            sheet.cell(top + 3 + index, left + offset, value)
    buffer = io.BytesIO()
    workbook.save(buffer)
    deliver("environment/20181015_penalty.xlsx", buffer.getvalue())

    run_ingest(settings, warehouse)

    rejected = warehouse.execute("SELECT row_no FROM rejects").fetchall()
    landed = warehouse.execute(
        "SELECT decision_number, row_no FROM rec_penalty"
    ).fetchall()
    assert rejected == [(top + 3,)]
    assert landed == [("E2", top + 4)]


def test_bad_bom_file_fails_alone(settings, warehouse, deliver) -> None:
    header = ",".join(PENALTY_HEADER)
    body = f"{header}\n{','.join(penalty_row('U1'))}".encode() + b"\xe9\n"
    deliver("environment/20181015_penalty.csv", codecs.BOM_UTF8 + body)
    deliver(
        "tax/20181016_penalty.csv",
        f"{header}\n{','.join(penalty_row('T1'))}\n".encode(),
    )

    report = run_ingest(settings, warehouse)

    statuses = {r.rel_path: r.status for r in report.results}
    assert statuses == {
        "environment/20181015_penalty.csv": "failed",
        "tax/20181016_penalty.csv": "landed",
    }
    failed = next(r for r in report.results if r.status == "failed")
    assert "cannot be decoded" in failed.error
    assert "UTF-8" in failed.error


def test_long_white_space_row_skipped(settings, warehouse, deliver) -> None:
    blank = ",".join(["\u3000" * 17] * len(PENALTY_HEADER))
    lines = [
        ",".join(PENALTY_HEADER),
        ",".join(penalty_row("L1")),
        blank,
        ",".join(penalty_row("L2")),
    ]
    deliver("environment/20181015_penalty.csv", ("\n".join(lines) + "\n").encode())

    result = only_result(run_ingest(settings, warehouse))

    assert result.rows_read == 2
    assert result.rows_rejected == 0


def test_empty_cells_same_key_either_reader(settings, warehouse, deliver) -> None:
    header = "主体名称,统一社会信用代码,备注"
    rows = [f"甲公司,{USCC},", f"乙公司,{USCC_2},说明"]
    deliver(
        "hrss/20181015_other.csv", (header + "\n" + "\n".join(rows) + "\n").encode()
    )
    # The same rows with an empty line between them take the row-by-row reader.
    deliver(
        "hrss/20181016_other.csv",
        (header + "\n" + "\n\n".join(rows) + "\n").encode(),
    )

    report = run_ingest(settings, warehouse)

    second = next(r for r in report.results if r.rel_path.endswith("16_other.csv"))
    assert second.rows_landed == 0
    assert second.rows_repeated == 2
    assert record_count(warehouse) == 2


def test_cr_line_ends_keep_row_numbers(settings, warehouse, deliver) -> None:
    lines = [
        ",".join(PENALTY_HEADER),
        ",".join(penalty_row("C1")),
        "",
        ",".join(penalty_row("C2", decided="2018-02-30")),
    ]
    deliver("environment/20181015_penalty.csv", ("\r".join(lines) + "\r").encode())

    run_ingest(settings, warehouse)

    assert list(rejects(warehouse)) == [4]


def test_damaged_utf8_names_row(settings, warehouse, deliver) -> None:
    header = ",".join(PENALTY_HEADER)
    rows = "".join(",".join(penalty_row(f"D{n}")) + "\n" for n in range(200))
    damaged = ",".join(penalty_row("BAD")).encode() + b"\xff\n"
    deliver(
        "environment/20181015_penalty.csv",
        (header + "\n" + rows).encode() + damaged + rows.encode(),
    )

    result = only_result(run_ingest(settings, warehouse))

    assert result.status == "failed"
    assert "(row 202)" in result.error
    assert "not valid UTF-8" in result.error
