"""The code location: assets, jobs, schedule and sensor, built when Dagster loads it."""

from __future__ import annotations

import dagster as dg

from assets.annexes import annex_assets
from assets.figures import quarter_figures
from assets.ingest import landed_extracts
from assets.resources import build_resources
from credit_etl.settings import Settings, load_settings
from sensors.alerts import deadline_alert_sensor, run_failure_alert_sensor
from sensors.extracts import new_extract_sensor
from sensors.schedules import quarterly_report_schedule

INGEST_JOB = "ingest_job"
REPORT_JOB = "quarterly_report"


def build_definitions(settings: Settings) -> dg.Definitions:
    ingest_job = dg.define_asset_job(
        INGEST_JOB,
        selection=dg.AssetSelection.groups("ingest"),
        description="Land every new delivery under incoming/ in the warehouse.",
        executor_def=dg.in_process_executor,
    )
    report_job = dg.define_asset_job(
        REPORT_JOB,
        selection=dg.AssetSelection.groups("figures", "annexes"),
        description="Compute one quarter's figures and write its four annexes.",
        # Every step opens the warehouse and waits for the pool, so steps in
        # separate processes would gain nothing and cost an interpreter each.
        executor_def=dg.in_process_executor,
    )
    return dg.Definitions(
        assets=[landed_extracts, quarter_figures, *annex_assets()],
        jobs=[ingest_job, report_job],
        schedules=[quarterly_report_schedule(report_job, settings.deadline_day)],
        sensors=[
            new_extract_sensor(ingest_job, settings),
            deadline_alert_sensor(settings),
            run_failure_alert_sensor(settings),
        ],
        resources=build_resources(settings),
    )


@dg.definitions
def defs() -> dg.Definitions:
    return build_definitions(load_settings())
