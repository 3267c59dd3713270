"""Demo extracts at scale 1 reproduce the 2018 bulletin's annexes cell by cell.

The demo generator writes records for the 14 districts and counties and every
department under 100,000 records. The 2018Q4 report then runs through Dagster, and
each annex cell read back with openpyxl must equal the printed bulletin, except the
cells that the generator's consistency rules list as impossible for any set of records.
Those cells must equal the value the rules derive instead.
"""

import csv
import os
import time

import pytest

from credit_etl.bulletin import compare_annexes, select_reproduction_units
from credit_etl.cli import run_quarter
from credit_etl.demo import write_demo_data
from credit_etl.periods import Quarter
from credit_etl.registry import load_units
from credit_etl.settings import Settings

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    data_dir = tmp_path_factory.mktemp("bulletin")
    settings = Settings(data_dir=data_dir, settle_seconds=0)
    settings.ensure_dirs()
    units = select_reproduction_units()
    summary = write_demo_data(settings.incoming_dir, scale=1.0, units=units)
    old = time.time() - 120
    for path in settings.incoming_dir.rglob("*"):
        os.utime(path, (old, old))

    saved = {
        key: os.environ.get(key) for key in ("DAGSTER_HOME", "CREDIT_ETL_DATA_DIR")
    }
    try:
        paths = run_quarter(settings, Quarter(2018, 4), None)
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value

    names = {u.unit_id: u.name_zh for u in load_units()}
    comparison = compare_annexes(
        dict(enumerate(paths, start=1)),
        summary.expected_annexes_path,
        summary.inconsistent_cells_path,
        unit_names={names[unit_id] for unit_id in units},
    )
    with summary.inconsistent_cells_path.open(encoding="utf-8") as handle:
        skipped = list(csv.DictReader(handle))
    return {"comparison": comparison, "skipped": skipped}


def test_consistent_cells_equal_bulletin(report: dict) -> None:
    comparison = report["comparison"]
    assert comparison.printed_mismatches == []
    assert comparison.printed_compared > 0


def test_every_cell_equals_derived_value(report: dict) -> None:
    comparison = report["comparison"]
    assert comparison.derived_mismatches == []
    assert comparison.derived_compared > 0


def test_skipped_cells_come_with_reasons(report: dict) -> None:
    assert report["skipped"]
    for cell in report["skipped"]:
        assert cell["reason"].strip()
