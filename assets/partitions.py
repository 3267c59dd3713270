"""Quarterly partitions in Asia/Shanghai time, keyed by the quarter's first day."""

from __future__ import annotations

import dagster as dg

from credit_etl.periods import Quarter
from credit_etl.settings import TIMEZONE

FIRST_QUARTER = "2016-01-01"

quarterly_partitions = dg.TimeWindowPartitionsDefinition(
    cron_schedule="0 0 1 */3 *",
    fmt="%Y-%m-%d",
    start=FIRST_QUARTER,
    timezone=TIMEZONE,
)


def partition_key(quarter: Quarter) -> str:
    """Return the partition key of a quarter: its first day, as 2018-10-01."""
    return quarter.start.isoformat()


def quarter_of(context: dg.AssetExecutionContext) -> Quarter:
    """Return the quarter of the running partition, from its time window."""
    window = context.partition_time_window
    return Quarter.containing(window.start.date())
