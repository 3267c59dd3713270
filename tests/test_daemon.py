"""The warehouse under concurrent runs of the real Dagster daemon.

A backfill of eight quarterly partitions, ingest runs that the new-extract sensor
requests while the backfill runs, and a reader of the warehouse in this process all
overlap. Every run must succeed, no event may report a DuckDB lock, the steps that
open the warehouse must never overlap in time, and every delivered file must land
exactly once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
from conftest import stop_process_group

from credit_etl.cli import prepare_dagster_home
from credit_etl.demo import write_demo_data
from credit_etl.settings import DATA_DIR_ENV, REPO_ROOT, Settings
from credit_etl.warehouse import open_warehouse

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
UNITS_FIRST = ["weibin", "fengqiu", "environment"]
UNITS_LATER = ["transport", "muye"]
QUARTERS = [
    f"{year}-{month:02d}-01" for year in (2017, 2018) for month in (1, 4, 7, 10)
]
WAREHOUSE_STEPS = {
    "landed_extracts",
    "quarter_figures",
    "annex1_workbook",
    "annex2_workbook",
    "annex3_workbook",
    "annex4_workbook",
    "feedback_workbooks",
}
FINISHED = (
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELED,
)


def _environment(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "DAGSTER_HOME": str(settings.dagster_home),
        DATA_DIR_ENV: str(settings.data_dir),
        "CREDIT_ETL_SETTLE_SECONDS": "1",
    }


def _dagster(settings: Settings, *arguments: str) -> None:
    subprocess.run(
        [str(BIN / "dagster"), *arguments, "-w", str(REPO_ROOT / "workspace.yaml")],
        cwd=REPO_ROOT,
        env=_environment(settings),
        check=True,
        capture_output=True,
        timeout=180,
    )


def _move_units(staging: Path, incoming: Path, units: list[str]) -> int:
    moved = 0
    for unit in units:
        source = staging / unit
        if source.is_dir():
            moved += sum(1 for path in source.rglob("*") if path.is_file())
            shutil.move(str(source), str(incoming / unit))
    return moved


class Reader(threading.Thread):
    """Thread that reads the ledger through the gate until its stop event is set."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.stop = threading.Event()
        self.reads = 0
        self.errors: list[str] = []

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                with open_warehouse(self.settings, read_only=True) as con:
                    con.execute("SELECT count(*) FROM ledger").fetchone()
                self.reads += 1
            except Exception as error:  # the test reports every failure
                self.errors.append(f"{type(error).__name__}: {error}")
            self.stop.wait(0.3)


@pytest.fixture
def daemon_settings(tmp_path: Path) -> Iterator[Settings]:
    settings = Settings(data_dir=tmp_path / "data", settle_seconds=1)
    settings.ensure_dirs()
    prepare_dagster_home(settings)
    # An installed data directory has its warehouse before any reader starts.
    with open_warehouse(settings):
        pass
    yield settings


def _wait_for_runs(
    instance: dg.DagsterInstance, backfills: int, timeout: float
) -> list[dg.DagsterRun]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        listed = instance.get_backfills()
        runs = instance.get_runs()
        report_runs = [r for r in runs if r.job_name == "quarterly_report"]
        done = (
            len(listed) == backfills
            and len(report_runs) == len(QUARTERS) * backfills
            and all(r.status in FINISHED for r in runs)
        )
        if done:
            return runs
        time.sleep(2)
    statuses = {r.run_id[:8]: r.status.value for r in instance.get_runs()}
    raise AssertionError(f"runs not finished in {timeout:.0f} s: {statuses}")


def _pool_step_intervals(
    instance: dg.DagsterInstance, runs: list[dg.DagsterRun]
) -> list[tuple[float, float, str]]:
    intervals = []
    for run in runs:
        started: dict[str, float] = {}
        for entry in instance.all_logs(run.run_id):
            event = entry.dagster_event
            if event is None or entry.step_key not in WAREHOUSE_STEPS:
                continue
            if event.event_type == dg.DagsterEventType.STEP_START:
                started[entry.step_key] = entry.timestamp
            elif event.event_type in (
                dg.DagsterEventType.STEP_SUCCESS,
                dg.DagsterEventType.STEP_FAILURE,
            ):
                begin = started.pop(entry.step_key)
                intervals.append(
                    (begin, entry.timestamp, f"{run.run_id[:8]}/{entry.step_key}")
                )
    return sorted(intervals)


def test_backfill_sensor_and_reader_overlap(
    daemon_settings: Settings, tmp_path: Path
) -> None:
    settings = daemon_settings
    staging = tmp_path / "staging"
    write_demo_data(staging, scale=0.01, units=UNITS_FIRST + UNITS_LATER)
    delivered = _move_units(staging, settings.incoming_dir, UNITS_FIRST)

    _dagster(settings, "sensor", "start", "new_extract_sensor")
    daemon = subprocess.Popen(
        [str(BIN / "dagster-daemon"), "run", "-w", str(REPO_ROOT / "workspace.yaml")],
        cwd=REPO_ROOT,
        env=_environment(settings),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    reader = Reader(settings)
    try:
        _dagster(
            settings,
            "job",
            "backfill",
            "-j",
            "quarterly_report",
            "--from",
            QUARTERS[0],
            "--to",
            QUARTERS[-1],
            "--noprompt",
        )
        reader.start()
        # A second delivery arrives while the backfill runs. The sensor's next tick
        # (at most 30 s later) requests another ingest run.
        time.sleep(20)
        delivered += _move_units(staging, settings.incoming_dir, UNITS_LATER)
        with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
            deadline = time.monotonic() + 240
            while time.monotonic() < deadline:
                with open_warehouse(settings, read_only=True) as con:
                    landed = con.execute(
                        "SELECT count(*) FROM ledger WHERE status = 'landed'"
                    ).fetchone()[0]
                if landed >= delivered:
                    break
                time.sleep(3)
            runs = _wait_for_runs(instance, backfills=1, timeout=480)
            failed = [r.run_id for r in runs if r.status != dg.DagsterRunStatus.SUCCESS]
            lock_messages = [
                entry.user_message
                for run in runs
                for entry in instance.all_logs(run.run_id)
                if "Could not set lock" in (entry.user_message or "")
                or "Conflicting lock" in (entry.user_message or "")
            ]
            intervals = _pool_step_intervals(instance, runs)
    finally:
        reader.stop.set()
        stop_process_group(daemon)
        reader.join(timeout=60)

    assert failed == []
    assert lock_messages == []
    assert reader.errors == []
    assert reader.reads > 0

    report_runs = [r for r in runs if r.job_name == "quarterly_report"]
    ingest_runs = [r for r in runs if r.job_name == "ingest_job"]
    assert sorted(r.tags["dagster/partition"] for r in report_runs) == QUARTERS
    assert len(ingest_runs) >= 2

    overlaps = [
        (first[2], second[2])
        for first, second in zip(intervals, intervals[1:], strict=False)
        if second[0] < first[1]
    ]
    assert overlaps == []
    assert len(intervals) >= len(QUARTERS) * 6 + len(ingest_runs)

    with open_warehouse(settings, read_only=True) as con:
        statuses = con.execute(
            "SELECT status, count(*), count(DISTINCT path) FROM ledger GROUP BY status"
        ).fetchall()
    assert statuses == [("landed", delivered, delivered)]
    for quarter in ("2017Q1", "2018Q4"):
        folder = settings.exports_dir / quarter
        assert sorted(p.name for p in folder.glob("annex*.xlsx")) == [
            f"annex{n}.xlsx" for n in range(1, 5)
        ]
