"""Keys, duplicates and recounts that once merged or lost records."""

import io
import os
import time
from pathlib import Path

import openpyxl
import pytest

from credit_etl.figures import compute_figures
from credit_etl.identifiers import id_check_char
from credit_etl.ingest import ingest_incoming
from credit_etl.periods import Quarter
from credit_etl.registry import load_units
from credit_etl.settings import Settings
from credit_etl.warehouse import connect, refresh_units

LICENSE = "行政相对人名称,行政许可决定文书号,许可决定日期,统一社会信用代码,证件号码"


def _person_id(serial: int) -> str:
    body = f"41070219850101{serial:03d}"
    return body + id_check_char(body)


def _write(settings: Settings, unit: str, name: str, content: bytes) -> None:
    folder = settings.incoming_dir / unit
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(content)
    old = time.time() - 120
    os.utime(path, (old, old))


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", settle_seconds=0)
    settings.ensure_dirs()
    return settings


def _count(settings: Settings, table: str) -> int:
    con = connect(settings)
    try:
        ingest_incoming(con, settings)
        return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        con.close()


def test_placeholder_code_keeps_people_apart(settings: Settings) -> None:
    rows = [
        f"甲,D5,2018-10-03,00000000000000000X,{_person_id(1)}",
        f"乙,D5,2018-10-03,00000000000000000X,{_person_id(2)}",
    ]
    _write(
        settings, "weibin", "20181012_license.csv", "\n".join([LICENSE, *rows]).encode()
    )
    assert _count(settings, "rec_license") == 2


def test_whole_row_key_keeps_cell_boundaries(settings: Settings) -> None:
    content = '主体名称,信息类别,统一社会信用代码\n"a|b",c,91410700736108233M\na,"b|c",91410700736108233M\n'
    _write(settings, "hrss", "20181012_other.csv", content.encode())
    assert _count(settings, "rec_other") == 2


def test_same_bytes_in_two_units_land_twice(settings: Settings) -> None:
    content = "\n".join([LICENSE, f"甲,D1,2018-10-03,,{_person_id(3)}"]).encode()
    _write(settings, "muye", "20181012_license.csv", content)
    _write(settings, "weibin", "20181012_license.csv", content)
    assert _count(settings, "rec_license") == 2


def test_rounded_decision_number_rejected(settings: Settings) -> None:
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(LICENSE.split(","))
    sheet.append(
        ["甲", 12345678901234567, "2018-10-03", 914107001234567890, _person_id(4)]
    )
    buffer = io.BytesIO()
    workbook.save(buffer)
    _write(settings, "weibin", "20181012_license.xlsx", buffer.getvalue())
    con = connect(settings)
    ingest_incoming(con, settings)
    rejected = con.execute("SELECT column_name FROM rejects").fetchall()
    con.close()
    assert rejected == [("行政许可决定文书号",)]


def test_registry_change_recounts_figures(settings: Settings) -> None:
    con = connect(settings)
    quarter = Quarter(2018, 4)
    compute_figures(con, settings, quarter)
    units = [
        unit
        if unit.unit_id != "weibin"
        else unit.__class__(**{**unit.__dict__, "population_10k": 1.0})
        for unit in load_units()
    ]
    refresh_units(con, units)
    compute_figures(con, settings, quarter)
    population = con.execute(
        "SELECT population_10k FROM unit_figures WHERE period = '2018Q4' AND unit_id = 'weibin'"
    ).fetchone()
    total = con.execute(
        "SELECT population_10k FROM total_figures WHERE period = '2018Q4' AND scope = 'local'"
    ).fetchone()
    con.close()
    assert population == (1.0,)
    assert round(total[0], 2) == 479.01
