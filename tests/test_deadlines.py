"""Silent units: no file received between the quarter's first day and its deadline."""

import datetime as dt
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import deliver_one_record

from credit_etl.deadlines import SHANGHAI, check_deadlines, deadline_moment
from credit_etl.ingest import ingest_incoming
from credit_etl.periods import Quarter
from credit_etl.registry import load_units
from credit_etl.settings import Settings
from credit_etl.warehouse import connect

SILENT = {"hongqi", "tax", "archives"}


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", settle_seconds=0)
    settings.ensure_dirs()
    for serial, unit in enumerate(load_units()):
        if unit.unit_id in SILENT:
            continue
        deliver_one_record(settings.incoming_dir, unit.unit_id, "20181105", serial)
    # Outside the window: before the quarter and after the deadline.
    deliver_one_record(settings.incoming_dir, "hongqi", "20180930", 900)
    deliver_one_record(settings.incoming_dir, "tax", "20190111", 901)
    return settings


def test_deadline_is_tenth_of_next_month() -> None:
    moment = deadline_moment(Quarter(2018, 4), 10)
    assert moment == dt.datetime(2019, 1, 10, 23, 59, 59, tzinfo=SHANGHAI)


def test_three_silent_units_named(settings: Settings) -> None:
    con = connect(settings)
    ingest_incoming(con, settings)
    check = check_deadlines(
        con, settings, Quarter(2018, 4), dt.datetime(2019, 1, 11, 9, tzinfo=SHANGHAI)
    )
    con.close()
    assert {unit.unit_id for unit in check.silent} == SILENT
    assert check.passed


def test_file_on_deadline_day_ends_silence(settings: Settings) -> None:
    deliver_one_record(settings.incoming_dir, "archives", "20190110", 902)
    check = check_deadlines(
        None, settings, Quarter(2018, 4), dt.datetime(2019, 1, 12, tzinfo=SHANGHAI)
    )
    assert "archives" not in {unit.unit_id for unit in check.silent}


def test_files_not_yet_ingested_count(settings: Settings) -> None:
    check = check_deadlines(
        None, settings, Quarter(2018, 4), dt.datetime(2019, 1, 11, tzinfo=SHANGHAI)
    )
    assert {unit.unit_id for unit in check.silent} == SILENT


def test_before_deadline_counts_files_so_far(settings: Settings) -> None:
    check = check_deadlines(
        None, settings, Quarter(2018, 4), dt.datetime(2018, 10, 20, tzinfo=SHANGHAI)
    )
    assert not check.passed
    assert len(check.silent) == len(load_units())


def test_command_prints_silent_units(settings: Settings) -> None:
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "credit-etl"),
            "check-deadlines",
            "--quarter",
            "2018Q4",
            "--now",
            "2019-01-11T09:00",
            "--data-dir",
            str(settings.data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert "3 units delivered no file" in lines[0]
    assert {line.split()[0] for line in lines[1:]} == SILENT
