"""Data-quality checks on a quarter's figures, deliveries and rejects."""

import os
import time
from pathlib import Path

import pytest

from credit_etl import checks
from credit_etl.figures import compute_figures
from credit_etl.ingest import ingest_incoming
from credit_etl.periods import Quarter
from credit_etl.settings import Settings
from credit_etl.warehouse import connect

Q3, Q4 = Quarter(2018, 3), Quarter(2018, 4)
USCC = "91410700736108233M"
HEADER = "行政相对人名称,统一社会信用代码,行政处罚决定书文号,处罚决定日期"


def _write(incoming: Path, unit: str, name: str, lines: list[str]) -> None:
    folder = incoming / unit
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    old = time.time() - 120
    os.utime(path, (old, old))


@pytest.fixture
def con(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", settle_seconds=0)
    settings.ensure_dirs()
    incoming = settings.incoming_dir
    # environment: 4 penalties in Q3, 1 in Q4, all decided 10 days before receipt.
    _write(
        incoming,
        "environment",
        "20180920_penalty.csv",
        [HEADER] + [f"甲{i},{USCC},环罚{i}号,2018-09-10" for i in range(4)],
    )
    _write(
        incoming,
        "environment",
        "20181020_penalty.csv",
        [HEADER + ",罚款金额（万元）", f"乙,{USCC},环罚9号,2018-10-10,0.5"],
    )
    # tax: 3 rows read in Q4, 2 rejected for a bad code.
    _write(
        incoming,
        "tax",
        "20181015_penalty.csv",
        [
            HEADER,
            f"丙,{USCC},税罚1号,2018-10-14",
            "丁,91410700736108233W,税罚2号,2018-10-14",
            "戊,91410700736108233W,税罚3号,2018-10-14",
        ],
    )
    connection = connect(settings)
    ingest_incoming(connection, settings)
    compute_figures(connection, settings, Q3)
    compute_figures(connection, settings, Q4)
    yield connection
    connection.close()


def test_parts_within_wholes_pass(con) -> None:
    assert checks.parts_within_wholes(con, Q4) == []


def test_part_over_whole_found(con) -> None:
    con.execute(
        "UPDATE unit_figures SET dp_stock = total_stock + 1 "
        "WHERE period = '2018Q4' AND unit_id = 'tax'"
    )
    found = checks.parts_within_wholes(con, Q4)
    assert [(f["unit_id"], f["part"], f["whole"]) for f in found] == [
        ("tax", "dp_stock", "total_stock")
    ]


def test_totals_equal_units_pass(con) -> None:
    assert checks.totals_equal_units(con, Q4) == []


def test_total_off_by_one_found(con) -> None:
    con.execute(
        "UPDATE total_figures SET total_stock = total_stock + 1 "
        "WHERE period = '2018Q4' AND scope = 'department'"
    )
    found = checks.totals_equal_units(con, Q4)
    assert [(f["scope"], f["figure"]) for f in found] == [("department", "total_stock")]


def test_low_timeliness_found(con) -> None:
    found = checks.low_timeliness(con, Q4, 0.5)
    assert [f["unit_id"] for f in found] == ["environment"]


def test_volume_drop_found(con) -> None:
    found = checks.volume_drops(con, Q4, 0.5)
    assert [(f["unit_id"], f["previous"], f["current"]) for f in found] == [
        ("environment", 4, 1)
    ]


def test_reject_share_found(con) -> None:
    found = checks.reject_shares(con, Q4, 0.1)
    assert [(f["unit_id"], f["rejected"], f["read"]) for f in found] == [("tax", 2, 3)]


def test_added_column_found(con) -> None:
    found = checks.column_changes(con, Q4)
    assert [(f["unit_id"], f["added"], f["removed"]) for f in found] == [
        ("environment", ["fine_amount"], [])
    ]
