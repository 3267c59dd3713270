"""Data-quality checks over a quarter's figures, deliveries and rejects.

Each check returns the findings as plain dictionaries (an empty list means it passed);
the Dagster layer turns them into asset check results with a severity.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import duckdb

from credit_etl.periods import Quarter

# Part <= whole relations that every unit's figures must satisfy.
PART_WHOLE = (
    ("quarter_increment", "year_stock"),
    ("year_stock", "total_stock"),
    ("dp_stock", "total_stock"),
    ("dp_year_stock", "year_stock"),
    ("dp_year_stock", "dp_stock"),
    ("dp_quarter_increment", "dp_year_stock"),
    ("dp_quarter_increment", "quarter_increment"),
    ("dp_quarter_timely", "dp_quarter_increment"),
    ("dp_year_timely", "dp_year_stock"),
    ("redblack_quarter", "redblack_year"),
    ("redblack_year", "year_stock"),
    ("license_year", "license_stock"),
    ("penalty_year", "penalty_stock"),
)
SUMMED = (
    "total_stock",
    "quarter_increment",
    "year_stock",
    "dp_stock",
    "dp_quarter_increment",
    "dp_quarter_timely",
    "dp_year_stock",
    "dp_year_timely",
    "redblack_quarter",
    "redblack_year",
    "license_stock",
    "penalty_stock",
    "commitment_total",
)


@dataclass(frozen=True)
class Thresholds:
    timeliness: float = 0.5  # fraction of double-publicity records on time
    volume_drop: float = 0.5  # share of last quarter's increment that may be lost
    reject_share: float = 0.1  # share of a unit's rows read that may be rejected


def parts_within_wholes(con: duckdb.DuckDBPyConnection, quarter: Quarter) -> list[dict]:
    """Return every unit figure that exceeds its whole."""
    findings = []
    for part, whole in PART_WHOLE:
        rows = con.execute(
            f"""SELECT unit_id, {part}, {whole} FROM unit_figures
                WHERE period = ? AND {part} > {whole} ORDER BY unit_id""",
            [quarter.label],
        ).fetchall()
        findings += [
            {
                "unit_id": unit,
                "part": part,
                "value": value,
                "whole": whole,
                "limit": limit,
            }
            for unit, value, limit in rows
        ]
    return findings


def totals_equal_units(con: duckdb.DuckDBPyConnection, quarter: Quarter) -> list[dict]:
    """Return every total count that differs from the sum of its units."""
    sums = ", ".join(f"sum(f.{name}) AS {name}" for name in SUMMED)
    summed = con.execute(
        f"""SELECT CASE WHEN u.kind = 'department' THEN 'department' ELSE 'local' END
                       AS scope, {sums}
            FROM unit_figures f JOIN units u USING (unit_id)
            WHERE f.period = ? GROUP BY ALL""",
        [quarter.label],
    ).fetchall()
    totals = {
        row[0]: row[1:]
        for row in con.execute(
            f"SELECT scope, {', '.join(SUMMED)} FROM total_figures WHERE period = ?",
            [quarter.label],
        ).fetchall()
    }
    findings = []
    for scope, *values in summed:
        for name, unit_sum, total in zip(
            SUMMED, values, totals.get(scope, ()), strict=False
        ):
            if unit_sum != total:
                findings.append(
                    {
                        "scope": scope,
                        "figure": name,
                        "sum_of_units": unit_sum,
                        "total": total,
                    }
                )
    return findings


def low_timeliness(
    con: duckdb.DuckDBPyConnection, quarter: Quarter, threshold: float
) -> list[dict]:
    """Return units whose quarter's double-publicity timeliness is below the threshold."""
    rows = con.execute(
        """SELECT unit_id, dp_quarter_timely, dp_quarter_increment FROM unit_figures
           WHERE period = ? AND dp_quarter_increment > 0
             AND dp_quarter_timely < ? * dp_quarter_increment
           ORDER BY dp_quarter_timely / dp_quarter_increment, unit_id""",
        [quarter.label, threshold],
    ).fetchall()
    return [
        {"unit_id": unit, "timely": timely, "received": total, "rate": timely / total}
        for unit, timely, total in rows
    ]


def volume_drops(
    con: duckdb.DuckDBPyConnection, quarter: Quarter, share: float
) -> list[dict]:
    """Return units whose quarter increment fell by more than ``share`` of the last one.

    The previous quarter's figures are used when they were computed; a unit that
    delivered nothing in either quarter is not a drop.
    """
    rows = con.execute(
        """SELECT cur.unit_id, prev.quarter_increment, cur.quarter_increment
           FROM unit_figures cur JOIN unit_figures prev USING (unit_id)
           WHERE cur.period = ? AND prev.period = ? AND prev.quarter_increment > 0
             AND cur.quarter_increment < (1 - ?) * prev.quarter_increment
           ORDER BY cur.unit_id""",
        [quarter.label, quarter.previous().label, share],
    ).fetchall()
    return [
        {"unit_id": unit, "previous": previous, "current": current}
        for unit, previous, current in rows
    ]


def reject_shares(
    con: duckdb.DuckDBPyConnection, quarter: Quarter, share: float
) -> list[dict]:
    """Return units whose files of the quarter had more than ``share`` rows rejected."""
    rows = con.execute(
        """SELECT unit_id, sum(rows_rejected), sum(rows_read) FROM ledger
           WHERE status = 'landed' AND received_date BETWEEN ? AND ?
           GROUP BY unit_id
           HAVING sum(rows_read) > 0 AND sum(rows_rejected) > ? * sum(rows_read)
           ORDER BY unit_id""",
        [quarter.start, quarter.end, share],
    ).fetchall()
    return [
        {"unit_id": unit, "rejected": rejected, "read": read, "share": rejected / read}
        for unit, rejected, read in rows
    ]


def column_changes(con: duckdb.DuckDBPyConnection, quarter: Quarter) -> list[dict]:
    """Return files whose standard columns differ from the unit's previous delivery.

    Deliveries are compared per unit and category, in order of received date.
    """
    rows = con.execute(
        """SELECT unit_id, category, path, received_date, columns,
                  lag(columns) OVER (PARTITION BY unit_id, category
                                     ORDER BY received_date, path) AS previous
           FROM ledger WHERE status = 'landed' AND columns IS NOT NULL
           QUALIFY received_date BETWEEN ? AND ?
               AND previous IS NOT NULL AND previous <> columns
           ORDER BY unit_id, received_date, path""",
        [quarter.start, quarter.end],
    ).fetchall()
    findings = []
    for unit, category, path, received, columns, previous in rows:
        now, before = set(json.loads(columns)), set(json.loads(previous))
        findings.append(
            {
                "unit_id": unit,
                "category": category,
                "path": path,
                "received_date": received.isoformat(),
                "added": sorted(now - before),
                "removed": sorted(before - now),
            }
        )
    return findings
