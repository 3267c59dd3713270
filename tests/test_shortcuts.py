"""Validation with and without its short cuts lands the same records and rejects.

Large sheets are validated by a longer statement that lets most cells skip a
regular expression. Every real-world case and a sheet of white-space variants is
ingested both ways into separate warehouses, and every table must match.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import CASES_DIR, copy_case_files, csv_bytes, set_mtime

from credit_etl import ingest
from credit_etl.ingest import ingest_incoming
from credit_etl.settings import Settings
from credit_etl.warehouse import connect

TABLES = {
    "rec_license": "key_hash",
    "rec_penalty": "key_hash",
    "rec_list": "key_hash",
    "rec_commitment": "key_hash",
    "rec_other": "key_hash",
    "rejects": "path, sheet, row_no",
    "row_flags": "path, sheet, row_no, flag",
}
SPACES = ["", " ", "\t", "\u3000", "\xa0", "\u2003", "\ufeff", " \u3000 "]


def _land(tmp_path: Path, name: str, fill, shortcut_rows: int, monkeypatch) -> dict:
    monkeypatch.setattr(ingest, "SHORTCUT_ROWS", shortcut_rows)
    settings = Settings(data_dir=tmp_path / name)
    settings.ensure_dirs()
    fill(settings.incoming_dir)
    con = connect(settings)
    try:
        ingest_incoming(con, settings)
        tables = {}
        for table, order in TABLES.items():
            columns = [
                row[0]
                for row in con.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE table_name = ? "
                    "AND column_name NOT IN ('file_id', 'ingested_at')",
                    [table],
                ).fetchall()
            ]
            tables[table] = con.execute(
                f"SELECT {', '.join(columns)} FROM {table} ORDER BY {order}"
            ).fetchall()
    finally:
        con.close()
    return tables


def _white_space_sheet(incoming: Path) -> None:
    header = [
        "行政相对人名称",
        "统一社会信用代码",
        "证件号码",
        "行政处罚决定书文号",
        "处罚决定日期",
    ]
    rows = []
    for number, space in enumerate(SPACES):
        rows += [
            [
                f"{space}新乡市甲公司{space}",
                f"{space}91410700736108233M{space}",
                "",
                f"W{number}",
                f"{space}2018-10-08",
            ],
            [
                "张三",
                "",
                f"{space}410702198504128811{space}",
                f"{space}P{number}{space}",
                "2018年10月8日",
            ],
            [space, space, space, space, space],
            ["", f"91410700736108233M{space}x", "", f"X{number}", f"2018-10-0{space}8"],
        ]
    path = incoming / "environment" / "20181015_penalty.csv"
    path.parent.mkdir(parents=True)
    path.write_bytes(csv_bytes(header, rows))
    set_mtime(path)


@pytest.mark.parametrize(
    "case",
    ["white-space", *sorted(p.name for p in CASES_DIR.iterdir() if p.is_dir())],
)
def test_shortcuts_same_tables(tmp_path: Path, monkeypatch, case: str) -> None:
    if case == "white-space":
        fill = _white_space_sheet
    else:

        def fill(incoming: Path) -> None:
            copy_case_files(CASES_DIR / case / "incoming", incoming, 120)

    plain = _land(tmp_path, "plain", fill, 10**12, monkeypatch)
    short = _land(tmp_path, "short", fill, 0, monkeypatch)

    for table in TABLES:
        assert short[table] == plain[table], table
    assert sum(len(rows) for rows in plain.values()) > 0
