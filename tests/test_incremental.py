"""Figures are recounted only for units with new files, and stay exact."""

import os
import time
from pathlib import Path

import pytest

from credit_etl.figures import compute_figures
from credit_etl.ingest import ingest_incoming
from credit_etl.periods import Quarter
from credit_etl.settings import Settings
from credit_etl.warehouse import connect

Q4 = Quarter(2018, 4)
USCC = "91410700736108233M"
HEADER = "行政相对人名称,统一社会信用代码,行政处罚决定书文号,处罚决定日期"


def _write(settings: Settings, unit: str, name: str, numbers: range) -> None:
    folder = settings.incoming_dir / unit
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    rows = [f"甲{n},{USCC},罚{n}号,2018-10-0{1 + n % 9}" for n in numbers]
    path.write_text("\n".join([HEADER, *rows]) + "\n", encoding="utf-8")
    old = time.time() - 120
    os.utime(path, (old, old))


def _figures(con) -> list[tuple]:
    return con.execute(
        "SELECT * EXCLUDE (computed_at) FROM unit_figures WHERE period = '2018Q4' "
        "ORDER BY unit_id"
    ).fetchall()


def _totals(con) -> list[tuple]:
    return con.execute(
        "SELECT * EXCLUDE (computed_at) FROM total_figures WHERE period = '2018Q4' "
        "ORDER BY scope"
    ).fetchall()


@pytest.fixture
def setup(tmp_path: Path):
    settings = Settings(data_dir=tmp_path / "data", settle_seconds=0)
    settings.ensure_dirs()
    _write(settings, "environment", "20181010_penalty.csv", range(0, 5))
    _write(settings, "hongqi", "20181011_penalty.csv", range(0, 3))
    con = connect(settings)
    ingest_incoming(con, settings)
    compute_figures(con, settings, Q4)
    yield settings, con
    con.close()


def _computed_at(con, unit: str):
    return con.execute(
        "SELECT computed_at FROM unit_figures WHERE period = '2018Q4' AND unit_id = ?",
        [unit],
    ).fetchone()[0]


def test_rerun_without_files_recounts_nothing(setup) -> None:
    settings, con = setup
    before = _computed_at(con, "environment")
    compute_figures(con, settings, Q4)
    assert _computed_at(con, "environment") == before


def test_new_file_recounts_only_its_unit(setup) -> None:
    settings, con = setup
    untouched = _computed_at(con, "hongqi")
    _write(settings, "environment", "20181020_penalty.csv", range(3, 9))
    ingest_incoming(con, settings)
    compute_figures(con, settings, Q4)
    assert _computed_at(con, "hongqi") == untouched
    stock = con.execute(
        "SELECT total_stock FROM unit_figures WHERE period = '2018Q4' "
        "AND unit_id = 'environment'"
    ).fetchone()
    assert stock == (9,)


def test_incremental_equals_full_recount(setup) -> None:
    settings, con = setup
    _write(settings, "environment", "20181020_penalty.csv", range(3, 9))
    ingest_incoming(con, settings)
    compute_figures(con, settings, Q4)
    incremental = (_figures(con), _totals(con))
    con.execute("DELETE FROM figure_state")
    compute_figures(con, settings, Q4)
    assert (_figures(con), _totals(con)) == incremental


def test_changed_cutoff_recounts_all(setup) -> None:
    settings, con = setup
    compute_figures(con, settings, Q4, cutoff=Q4.end)
    cutoffs = con.execute(
        "SELECT DISTINCT cutoff FROM unit_figures WHERE period = '2018Q4'"
    ).fetchall()
    assert [str(c[0]) for c in cutoffs] == ["2018-12-31"]
    totals = con.execute(
        "SELECT DISTINCT cutoff FROM total_figures WHERE period = '2018Q4'"
    ).fetchall()
    assert [str(c[0]) for c in totals] == ["2018-12-31"]
