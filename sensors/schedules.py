"""The quarterly schedule: build each quarter's report the day after its deadline."""

from __future__ import annotations

import datetime as dt

import dagster as dg

from assets.partitions import partition_key
from credit_etl.periods import Quarter
from credit_etl.settings import TIMEZONE


def quarterly_report_schedule(
    job: dg.UnresolvedAssetJobDefinition, deadline_day: int
) -> dg.ScheduleDefinition:
    """Run at 02:00 Asia/Shanghai on the day after each quarter's deadline."""
    run_day = deadline_day + 1

    @dg.schedule(
        name="quarterly_report_schedule",
        cron_schedule=f"0 2 {run_day} 1,4,7,10 *",
        job=job,
        execution_timezone=TIMEZONE,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=(
            f"Materialises the figures and annexes of the quarter that ended last, at "
            f"02:00 on day {run_day} of the following month ({TIMEZONE})."
        ),
    )
    def _schedule(context: dg.ScheduleEvaluationContext) -> dg.RunRequest:
        quarter = quarter_due(context.scheduled_execution_time.date())
        return dg.RunRequest(
            run_key=quarter.label,
            partition_key=partition_key(quarter),
            tags={"credit_etl/quarter": quarter.label},
        )

    return _schedule


def quarter_due(run_date: dt.date) -> Quarter:
    """Return the quarter whose report is due on a run date: the one before it."""
    return Quarter.containing(run_date).previous()
