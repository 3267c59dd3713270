"""Sensors that raise alerts: silent units after a deadline, and failed runs."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json

import dagster as dg

from credit_etl.deadlines import SHANGHAI, deadline_moment
from credit_etl.gate import WarehouseBusyError
from credit_etl.notify import (
    load_notify_config,
    notify_deadlines,
    run_failed_alert,
    send,
)
from credit_etl.periods import Quarter
from credit_etl.settings import Settings
from credit_etl.warehouse import open_warehouse

# A sensor tick must end within Dagster's tick timeout, so it waits only briefly for
# a run that has the warehouse. The next tick tries again.
SENSOR_WAIT_SECONDS = 20.0


def quarter_to_check(now: dt.datetime, deadline_day: int) -> Quarter | None:
    """Return the last quarter whose deadline has passed by ``now``, within a quarter."""
    previous = Quarter.containing(now.astimezone(SHANGHAI).date()).previous()
    if now < deadline_moment(previous, deadline_day):
        return None
    return previous


def deadline_alert_sensor(settings: Settings) -> dg.SensorDefinition:
    """Check the last quarter's deadline every hour and alert on silent units.

    Each silent unit is alerted once per quarter, and again after the reminder
    interval of notify.toml, because the warehouse records what was sent.
    """

    @dg.sensor(
        name="deadline_alert_sensor",
        minimum_interval_seconds=3600,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=(
            "After each quarter's deadline, alerts once per silent unit (and on "
            "double-publicity timeliness below the threshold) through notify.toml."
        ),
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
        now = dt.datetime.now(SHANGHAI)
        quarter = quarter_to_check(now, settings.deadline_day)
        if quarter is None:
            return dg.SkipReason("no quarter's deadline has passed in this quarter yet")
        brief = dataclasses.replace(settings, lock_wait_seconds=SENSOR_WAIT_SECONDS)
        try:
            with open_warehouse(brief, purpose="deadline_alert_sensor") as con:
                summary = notify_deadlines(con, settings, quarter, now)
        except WarehouseBusyError as error:
            return dg.SkipReason(f"{quarter.label}: not checked this tick: {error}")
        context.log.info(json.dumps(summary.as_dict(), ensure_ascii=False))
        return dg.SkipReason(
            f"{quarter.label}: {len(summary.as_dict().get('silent_units', []))} "
            "silent units checked; alerts sent as notify.toml says"
        )

    return _sensor


def run_failure_alert_sensor(settings: Settings) -> dg.RunFailureSensorDefinition:
    """Send an alert for every failed run through the channels of notify.toml."""

    @dg.run_failure_sensor(
        name="run_failure_alert_sensor",
        default_status=dg.DefaultSensorStatus.RUNNING,
        description="Sends an alert through notify.toml when a run fails.",
    )
    def _sensor(context: dg.RunFailureSensorContext) -> None:
        run = context.dagster_run
        error = context.failure_event.message or "the run failed"
        alert = run_failed_alert(
            run.job_name, run.run_id, error, run.tags.get("credit_etl/quarter")
        )
        result = send([alert], load_notify_config(settings.data_dir))
        context.log.info(f"run failure alert for {run.run_id}: {result}")

    return _sensor
