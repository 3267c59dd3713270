"""The code location: loading, asset graph, materialisation, schedule and sensor."""

import datetime as dt
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg
import openpyxl
import pytest

from assets.definitions import INGEST_JOB, REPORT_JOB, build_definitions
from assets.partitions import partition_key, quarterly_partitions
from credit_etl.deadlines import SHANGHAI
from credit_etl.periods import Quarter
from credit_etl.settings import REPO_ROOT, Settings
from credit_etl.warehouse import connect
from sensors.alerts import quarter_to_check
from sensors.schedules import quarter_due

HEADER = "行政相对人名称,统一社会信用代码,证件号码,行政处罚决定书文号,处罚决定日期\n"


def _write_extract(incoming: Path, unit: str, name: str, rows: list[str]) -> Path:
    folder = incoming / unit
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(HEADER + "".join(row + "\n" for row in rows), encoding="utf-8")
    old = dt.datetime.now().timestamp() - 120
    os.utime(path, (old, old))
    return path


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    settings = Settings(data_dir=tmp_path / "data", settle_seconds=0)
    settings.ensure_dirs()
    _write_extract(
        settings.incoming_dir,
        "environment",
        "20181015_penalty.csv",
        [
            "新乡市甲公司,91410700736108233M,,新环罚〔2018〕1号,2018-10-08",
            "新乡市乙公司,91410700736108233M,,新环罚〔2018〕2号,2018-10-01",
        ],
    )
    _write_extract(
        settings.incoming_dir,
        "weibin",
        "20180520_penalty.csv",
        ["张三,,410702198504128811,卫罚〔2018〕7号,2018-05-18"],
    )
    return settings


def test_definitions_load_without_deprecation_warnings(settings: Settings) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        definitions = build_definitions(settings)
        definitions.resolve_all_job_defs()
        dg.Definitions.validate_loadable(definitions)
    deprecations = [
        str(w.message)
        for w in caught
        if issubclass(w.category, DeprecationWarning) and "dagster" in w.filename
    ]
    assert deprecations == []


def test_asset_graph_groups(settings: Settings) -> None:
    definitions = build_definitions(settings)
    graph = definitions.resolve_asset_graph()
    groups = {
        key.to_user_string(): graph.get(key).group_name
        for key in graph.get_all_asset_keys()
    }
    assert groups == {
        "landed_extracts": "ingest",
        "quarter_figures": "figures",
        "annex1_workbook": "annexes",
        "annex2_workbook": "annexes",
        "annex3_workbook": "annexes",
        "annex4_workbook": "annexes",
        "feedback_workbooks": "annexes",
    }


def test_report_assets_are_quarterly(settings: Settings) -> None:
    graph = build_definitions(settings).resolve_asset_graph()
    for name in ("quarter_figures", "annex1_workbook", "annex4_workbook"):
        assert graph.get(dg.AssetKey(name)).partitions_def == quarterly_partitions


def test_partition_keys_are_quarter_starts() -> None:
    keys = quarterly_partitions.get_partition_keys(
        current_time=dt.datetime(2019, 1, 11, tzinfo=dt.UTC)
    )
    assert "2018-10-01" in keys
    assert "2018-11-01" not in keys
    assert partition_key(Quarter(2018, 4)) == "2018-10-01"


def test_partition_window_in_shanghai_time() -> None:
    window = quarterly_partitions.time_window_for_partition_key("2018-10-01")
    assert str(window.start.tzinfo) == "Asia/Shanghai"
    assert window.start.date() == dt.date(2018, 10, 1)
    assert window.end.date() == dt.date(2019, 1, 1)


def test_jobs_materialise_a_quarter(settings: Settings) -> None:
    definitions = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        ingest = definitions.resolve_job_def(INGEST_JOB).execute_in_process(
            instance=instance
        )
        assert ingest.success
        report = definitions.resolve_job_def(REPORT_JOB).execute_in_process(
            instance=instance, partition_key="2018-10-01"
        )
        assert report.success
        figures = instance.get_latest_materialization_event(
            dg.AssetKey("quarter_figures")
        )
        metadata = figures.asset_materialization.metadata
        assert metadata["dagster/row_count"].value == 85
        assert metadata["quarter"].value == "2018Q4"
        landed = instance.get_latest_materialization_event(
            dg.AssetKey("landed_extracts")
        ).asset_materialization.metadata
        assert landed["dagster/row_count"].value == 3
        assert "4107021985" not in landed["preview"].value

    path = settings.exports_dir / "2018Q4" / "annex3.xlsx"
    sheet = openpyxl.load_workbook(path).active
    rows = {row[1]: row for row in sheet.iter_rows(values_only=True) if row[1]}
    assert rows["市环保局"][2] == 2
    assert rows["市环保局"][6] == 2
    assert rows["合计"][2] == 2


def test_rematerialising_changes_no_figure(settings: Settings) -> None:
    definitions = build_definitions(settings)
    job = definitions.resolve_job_def(REPORT_JOB)
    with dg.DagsterInstance.ephemeral() as instance:
        definitions.resolve_job_def(INGEST_JOB).execute_in_process(instance=instance)
        job.execute_in_process(instance=instance, partition_key="2018-10-01")
        con = connect(settings)
        first = con.execute(
            "SELECT * EXCLUDE (computed_at) FROM unit_figures ORDER BY unit_id"
        ).fetchall()
        con.close()
        job.execute_in_process(instance=instance, partition_key="2018-10-01")
    con = connect(settings)
    second = con.execute(
        "SELECT * EXCLUDE (computed_at) FROM unit_figures ORDER BY unit_id"
    ).fetchall()
    con.close()
    assert first == second


def test_second_quarter_figures_use_its_window(settings: Settings) -> None:
    definitions = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        definitions.resolve_job_def(INGEST_JOB).execute_in_process(instance=instance)
        definitions.resolve_job_def(REPORT_JOB).execute_in_process(
            instance=instance, partition_key="2018-04-01"
        )
    con = connect(settings)
    row = con.execute(
        """SELECT quarter_increment, total_stock, cutoff FROM unit_figures
           WHERE period = '2018Q2' AND unit_id = 'weibin'"""
    ).fetchone()
    con.close()
    assert row == (1, 1, dt.date(2018, 7, 10))


@pytest.mark.parametrize(
    ("run_date", "quarter"),
    [
        (dt.date(2019, 1, 11), "2018Q4"),
        (dt.date(2019, 4, 11), "2019Q1"),
        (dt.date(2019, 7, 11), "2019Q2"),
        (dt.date(2019, 10, 11), "2019Q3"),
        (dt.date(2020, 1, 11), "2019Q4"),
    ],
)
def test_schedule_reports_previous_quarter(run_date: dt.date, quarter: str) -> None:
    assert quarter_due(run_date).label == quarter


def test_schedule_runs_day_after_deadline(settings: Settings) -> None:
    definitions = build_definitions(settings)
    schedule = definitions.resolve_schedule_def("quarterly_report_schedule")
    assert schedule.cron_schedule == "0 2 11 1,4,7,10 *"
    assert schedule.execution_timezone == "Asia/Shanghai"
    context = dg.build_schedule_context(
        scheduled_execution_time=dt.datetime(2019, 1, 11, 2, 0),
        repository_def=definitions.get_repository_def(),
    )
    request = schedule.evaluate_tick(context).run_requests[0]
    assert request.partition_key == "2018-10-01"


def test_sensor_requests_once_per_new_file(settings: Settings) -> None:
    definitions = build_definitions(settings)
    sensor = definitions.resolve_sensor_def("new_extract_sensor")
    with dg.DagsterInstance.ephemeral() as instance:
        repository = definitions.get_repository_def()
        first = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, repository_def=repository)
        )
        assert len(first.run_requests) == 1
        second = sensor.evaluate_tick(
            dg.build_sensor_context(
                instance=instance, cursor=first.cursor, repository_def=repository
            )
        )
        assert second.run_requests == []


def test_workspace_loads_with_dagster_cli(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "DAGSTER_HOME": str(tmp_path),
        "CREDIT_ETL_DATA_DIR": str(tmp_path / "data"),
    }
    result = subprocess.run(
        [
            str(Path(sys.executable).parent / "dagster"),
            "definitions",
            "validate",
            "-w",
            "workspace.yaml",
        ],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize(
    ("now", "quarter"),
    [
        (dt.datetime(2019, 1, 10, 23, 59), None),
        (dt.datetime(2019, 1, 11, 0, 0), "2018Q4"),
        (dt.datetime(2019, 3, 31, 12, 0), "2018Q4"),
        (dt.datetime(2019, 4, 11, 9, 0), "2019Q1"),
    ],
)
def test_deadline_sensor_quarter(now: dt.datetime, quarter: str | None) -> None:
    checked = quarter_to_check(now.replace(tzinfo=SHANGHAI), 10)
    assert (checked.label if checked else None) == quarter


def test_alert_sensors_defined(settings: Settings) -> None:
    definitions = build_definitions(settings)
    names = {sensor.name for sensor in definitions.sensors}
    assert {"deadline_alert_sensor", "run_failure_alert_sensor"} <= names


def test_figure_checks_reported(settings: Settings) -> None:
    definitions = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        definitions.resolve_job_def(INGEST_JOB).execute_in_process(instance=instance)
        result = definitions.resolve_job_def(REPORT_JOB).execute_in_process(
            instance=instance, partition_key="2018-10-01"
        )
    evaluations = {e.check_name: e for e in result.get_asset_check_evaluations()}
    assert evaluations["parts_within_wholes"].passed
    assert evaluations["totals_equal_units"].passed
    # 市环保局's two penalties: one decided 7 days before receipt, one 14 days.
    assert evaluations["timeliness_above_threshold"].passed
    assert evaluations["columns_unchanged"].passed


def test_sensor_burst_is_one_request(settings: Settings) -> None:
    for serial in range(1000):
        _write_extract(
            settings.incoming_dir,
            "hrss",
            f"20181020_penalty_{serial:04d}.csv",
            [f"某公司,91410700736108233M,,新罚〔2018〕{serial}号,2018-10-18"],
        )
    definitions = build_definitions(settings)
    sensor = definitions.resolve_sensor_def("new_extract_sensor")
    repository = definitions.get_repository_def()
    with dg.DagsterInstance.ephemeral() as instance:
        first = sensor.evaluate_tick(
            dg.build_sensor_context(instance=instance, repository_def=repository)
        )
        restarted = sensor.evaluate_tick(
            dg.build_sensor_context(
                instance=instance, cursor=first.cursor, repository_def=repository
            )
        )
        _write_extract(
            settings.incoming_dir,
            "tax",
            "20181021_penalty.csv",
            ["某公司,91410700736108233M,,税罚〔2018〕1号,2018-10-18"],
        )
        later = sensor.evaluate_tick(
            dg.build_sensor_context(
                instance=instance,
                cursor=restarted.cursor or first.cursor,
                repository_def=repository,
            )
        )
    assert len(first.run_requests) == 1
    assert restarted.run_requests == []
    assert len(later.run_requests) == 1
    assert later.run_requests[0].run_key != first.run_requests[0].run_key


def _tick(definitions, instance, cursor: str | None = None):
    """Evaluate the new-extract sensor once, from ``cursor``."""
    sensor = definitions.resolve_sensor_def("new_extract_sensor")
    return sensor.evaluate_tick(
        dg.build_sensor_context(
            instance=instance,
            cursor=cursor,
            repository_def=definitions.get_repository_def(),
        )
    )


def test_sensor_retries_failed_run_files(settings: Settings) -> None:
    definitions = build_definitions(settings)
    job = definitions.resolve_job_def(INGEST_JOB)
    with dg.DagsterInstance.ephemeral() as instance:
        first = _tick(definitions, instance)
        request = first.run_requests[0]
        run = instance.create_run_for_job(
            job, tags={"dagster/run_key": request.run_key}
        )
        unchanged = _tick(definitions, instance, first.cursor)
        instance.report_run_failed(run)
        retried = _tick(definitions, instance, first.cursor)
        again = _tick(definitions, instance, retried.cursor)
    assert unchanged.run_requests == []
    assert len(retried.run_requests) == 1
    assert retried.run_requests[0].run_key != request.run_key
    assert retried.run_requests[0].tags["credit_etl/retried_files"] == "2"
    assert again.run_requests == []


def test_sensor_reads_digest_list_cursor(settings: Settings) -> None:
    definitions = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        first = _tick(definitions, instance)
        earlier_cursor = json.dumps(sorted(json.loads(first.cursor)))
        later = _tick(definitions, instance, earlier_cursor)
    assert later.run_requests == []


def test_sensor_touched_file_same_run_key(settings: Settings) -> None:
    definitions = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        first = _tick(definitions, instance)
        for path in settings.incoming_dir.rglob("*.csv"):
            moment = dt.datetime.now().timestamp() - 60
            os.utime(path, (moment, moment))
        touched = _tick(definitions, instance, first.cursor)
    # Same paths and bytes: the daemon starts no second run for this key.
    assert touched.run_requests[0].run_key == first.run_requests[0].run_key


def test_sensor_splits_burst_by_hash_budget(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sensors import extracts

    monkeypatch.setattr(extracts, "HASH_BUDGET_BYTES", 1)
    definitions = build_definitions(settings)
    with dg.DagsterInstance.ephemeral() as instance:
        first = _tick(definitions, instance)
        second = _tick(definitions, instance, first.cursor)
        third = _tick(definitions, instance, second.cursor)
    assert first.run_requests[0].tags["credit_etl/new_files"] == "1"
    assert second.run_requests[0].tags["credit_etl/new_files"] == "1"
    assert third.run_requests == []


@pytest.mark.parametrize("quarter", ["2099Q1", "2015Q4"])
def test_run_outside_partitions_names_range(
    settings: Settings, quarter: str, capsys: pytest.CaptureFixture
) -> None:
    from credit_etl.cli import main

    for command in ("run", "feedback"):
        code = main(
            [command, "--quarter", quarter, "--data-dir", str(settings.data_dir)]
        )

        assert code == 2
        error = capsys.readouterr().err
        assert f"{quarter} cannot be reported" in error
        assert "quarters run from 2016Q1" in error
    assert not (settings.exports_dir / quarter).exists()


@pytest.mark.slow
def test_demo_again_reports_existing_files(
    settings: Settings, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from credit_etl.cli import main

    # The command points the process at its data directory; the test puts it back.
    for variable in (
        "DAGSTER_HOME",
        "CREDIT_ETL_DATA_DIR",
        "CREDIT_ETL_SETTLE_SECONDS",
    ):
        monkeypatch.delenv(variable, raising=False)
    code = main(["demo", "--data-dir", str(settings.data_dir)])

    assert code == 0
    output = capsys.readouterr().out
    assert "already holds 2 files; reporting on them" in output
    assert (settings.exports_dir / "2018Q4" / "annex1.xlsx").exists()
    assert sorted(p.name for p in settings.incoming_dir.rglob("*.csv")) == [
        "20180520_penalty.csv",
        "20181015_penalty.csv",
    ]
