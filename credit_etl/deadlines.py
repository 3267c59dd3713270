"""Delivery deadlines: which units have sent nothing for a quarter.

A unit is silent for a quarter when no file of any category with a received date from
the quarter's first day to the deadline (by default the 10th of the following month,
23:59:59 Asia/Shanghai) has arrived. A file counts as delivered when it is in the
ledger for the unit (landed, duplicate or failed) or lies well named in its folder.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import duckdb

from credit_etl.discovery import scan_incoming
from credit_etl.periods import Quarter
from credit_etl.registry import Unit, load_units
from credit_etl.settings import TIMEZONE, Settings

SHANGHAI = ZoneInfo(TIMEZONE)


@dataclass(frozen=True)
class DeadlineCheck:
    quarter: Quarter
    deadline: dt.datetime  # last moment of the deadline day, Asia/Shanghai
    checked_at: dt.datetime
    silent: list[Unit]

    @property
    def passed(self) -> bool:
        return self.checked_at > self.deadline


def deadline_moment(quarter: Quarter, deadline_day: int) -> dt.datetime:
    day = quarter.deadline(deadline_day)
    return dt.datetime.combine(day, dt.time(23, 59, 59), tzinfo=SHANGHAI)


def check_deadlines(
    con: duckdb.DuckDBPyConnection | None,
    settings: Settings,
    quarter: Quarter,
    now: dt.datetime | None = None,
    units: list[Unit] | None = None,
) -> DeadlineCheck:
    """Return the units that delivered no file between the quarter's start and deadline."""
    units = units or load_units()
    now = now or dt.datetime.now(SHANGHAI)
    if now.tzinfo is None:
        now = now.replace(tzinfo=SHANGHAI)
    deadline = deadline_moment(quarter, settings.deadline_day)
    last_day = min(deadline, now).astimezone(SHANGHAI).date()

    delivered: set[str] = set()
    if con is not None:
        rows = con.execute(
            """SELECT DISTINCT unit_id FROM ledger
               WHERE unit_id IS NOT NULL AND received_date BETWEEN ? AND ?""",
            [quarter.start, last_day],
        ).fetchall()
        delivered.update(unit_id for (unit_id,) in rows)
    # Files still settling count too: the unit has delivered.
    scan = scan_incoming(settings.incoming_dir, units, settle_seconds=0)
    delivered.update(
        d.unit_id
        for d in scan.deliveries
        if quarter.start <= d.received_date <= last_day
    )
    silent = [unit for unit in units if unit.unit_id not in delivered]
    return DeadlineCheck(
        quarter=quarter, deadline=deadline, checked_at=now, silent=silent
    )
