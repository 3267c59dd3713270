"""Every figure of the bulletin, per unit and per scope, for a quarter and a cut-off date.

Definitions (all counts over landed records received on or before the cut-off date):

- stock: every record except commitments; quarter increment: received inside the
  quarter; year stock: received from 1 January to the end of the quarter (year to
  date; for a fourth-quarter report, the calendar year).
- double publicity (dp): licences and penalties. A record is timely when it was
  received at most N days after its decision date (N = 7 by default; calendar days
  unless working days are configured). Timeliness is timely / received in the period,
  NULL when nothing was received, kept at full precision.
- red/black lists: red_list plus black_list records received in the period.
- annex 2: licences and penalties received in each quarter of the year up to the
  reported one, their sum and the stock at the cut-off date.
- annex 4: commitments by type received on or before the cut-off date; the other
  national types (容缺受理型, 证明事项型, 其他) count together.
- totals are computed from records, never from unit rows: rates are pooled.
"""

from __future__ import annotations

import datetime as dt
import logging

import duckdb

from credit_etl.periods import Quarter
from credit_etl.settings import Settings
from credit_etl.warehouse import FIGURE_COLUMNS

log = logging.getLogger(__name__)

SCOPES = {"local": ("district", "county"), "department": ("department",)}

_WORKDAYS_MACRO = """
CREATE OR REPLACE TEMP MACRO ce_workdays_after(a, b) AS
    len(list_filter(
        CAST(generate_series(a + INTERVAL 1 DAY, CAST(b AS TIMESTAMP), INTERVAL 1 DAY)
             AS DATE[]),
        lambda d: isodow(d) <= 5))
"""


def _measures(timely: str) -> str:
    """SQL aggregates for every count figure over the rows of ``facts``."""
    not_commitment = "category <> 'commitment'"
    dp = "category IN ('license', 'penalty')"
    rb = "category IN ('red_list', 'black_list')"
    in_quarter = "received_date BETWEEN $q_start AND $q_end"
    in_year = "received_date BETWEEN $y_start AND $y_end"

    def count(condition: str) -> str:
        return f"count(category) FILTER (WHERE {condition})"

    parts = {
        "total_stock": count(not_commitment),
        "quarter_increment": count(f"{not_commitment} AND {in_quarter}"),
        "year_stock": count(f"{not_commitment} AND {in_year}"),
        "dp_stock": count(dp),
        "dp_quarter_increment": count(f"{dp} AND {in_quarter}"),
        "dp_quarter_timely": count(f"{dp} AND {in_quarter} AND {timely}"),
        "dp_year_stock": count(f"{dp} AND {in_year}"),
        "dp_year_timely": count(f"{dp} AND {in_year} AND {timely}"),
        "redblack_quarter": count(f"{rb} AND {in_quarter}"),
        "redblack_year": count(f"{rb} AND {in_year}"),
    }
    for q in range(1, 5):
        window = f"received_date BETWEEN $q{q}_start AND $q{q}_end"
        parts[f"license_q{q}"] = count(f"category = 'license' AND {window}")
        parts[f"penalty_q{q}"] = count(f"category = 'penalty' AND {window}")
    parts["license_year"] = count(f"category = 'license' AND {in_year}")
    parts["penalty_year"] = count(f"category = 'penalty' AND {in_year}")
    parts["license_stock"] = count("category = 'license'")
    parts["penalty_stock"] = count("category = 'penalty'")
    commitment = "category = 'commitment'"
    parts["commitment_voluntary"] = count(
        f"{commitment} AND commitment_type = '主动公示型'"
    )
    parts["commitment_credit_repair"] = count(
        f"{commitment} AND commitment_type = '信用修复型'"
    )
    parts["commitment_approval_substitute"] = count(
        f"{commitment} AND commitment_type = '审批替代型'"
    )
    parts["commitment_self_discipline"] = count(
        f"{commitment} AND commitment_type = '行业自律型'"
    )
    parts["commitment_other_types"] = count(
        f"{commitment} AND commitment_type IN ('容缺受理型', '证明事项型', '其他')"
    )
    parts["commitment_total"] = count(commitment)
    assert tuple(parts) == FIGURE_COLUMNS, "figure columns out of step with the DDL"
    return ",\n        ".join(f"{sql} AS {name}" for name, sql in parts.items())


def _rates() -> str:
    return """
        CASE WHEN dp_quarter_increment > 0
             THEN dp_quarter_timely / dp_quarter_increment END AS dp_quarter_timeliness,
        CASE WHEN dp_year_stock > 0
             THEN dp_year_timely / dp_year_stock END AS dp_year_timeliness"""


def period_params(quarter: Quarter, cutoff: dt.date) -> dict[str, object]:
    """Return the date windows of a report.

    The year runs from 1 January to the end of the reported quarter (year to date), so
    records received after the quarter, even before the cut-off date, count only in
    the stock. Quarters after the reported one get empty windows.
    """
    params: dict[str, object] = {
        "period": quarter.label,
        "cutoff": cutoff,
        "q_start": quarter.start,
        "q_end": quarter.end,
        "y_start": quarter.year_start,
        "y_end": quarter.end,
    }
    for q in range(1, 5):
        part = Quarter(quarter.year, q)
        params[f"q{q}_start"] = part.start
        params[f"q{q}_end"] = min(part.end, quarter.end)
    return params


def _rule_key(con: duckdb.DuckDBPyConnection, settings: Settings) -> str:
    """Return what figures depend on beyond the records and the cut-off.

    That is the timeliness rule and the registry (kinds and populations), so a
    changed registry recounts every unit and rewrites the totals.
    """
    unit = "working" if settings.timeliness_working_days else "calendar"
    registry = con.execute(
        """SELECT md5(string_agg(unit_id || '/' || kind || '/'
                                 || coalesce(CAST(population_10k AS VARCHAR), ''),
                                 ',' ORDER BY unit_id))
           FROM units"""
    ).fetchone()[0]
    return f"timely<={int(settings.timeliness_days)} {unit} days; units {registry}"


def _stale_units(
    con: duckdb.DuckDBPyConnection, period: str, cutoff: dt.date, rule: str
) -> int:
    """Fill temp table stale_units with units whose figures must be recomputed.

    A unit's records change only when a file of that unit lands, so its version is
    the highest landed file id; figures of a unit whose version, cut-off and rule
    are unchanged are kept.
    """
    con.execute(
        """CREATE OR REPLACE TEMP TABLE stale_units AS
           WITH versions AS (
               SELECT u.unit_id, coalesce(max(l.file_id), 0) AS version
               FROM units u LEFT JOIN ledger l
                   ON l.unit_id = u.unit_id AND l.status = 'landed'
               GROUP BY u.unit_id
           )
           SELECT v.unit_id, v.version FROM versions v
           LEFT JOIN figure_state s ON s.unit_id = v.unit_id AND s.period = $period
           LEFT JOIN unit_figures f ON f.unit_id = v.unit_id AND f.period = $period
           WHERE s.unit_id IS NULL OR f.unit_id IS NULL OR s.version <> v.version
              OR s.cutoff <> $cutoff OR s.rule <> $rule""",
        {"period": period, "cutoff": cutoff, "rule": rule},
    )
    return con.execute("SELECT count(*) FROM stale_units").fetchone()[0]


def compute_figures(
    con: duckdb.DuckDBPyConnection,
    settings: Settings,
    quarter: Quarter,
    cutoff: dt.date | None = None,
) -> dt.date:
    """Bring the quarter's unit_figures and total_figures up to date; return the cut-off.

    Only units with newly landed files (or a changed cut-off or timeliness rule) are
    counted again, so a re-run with no new files reads no record. Totals are the
    sums of the unit rows, each of which was counted from records, with rates
    pooled from the summed timely and received counts.
    """
    cutoff = cutoff or quarter.deadline(settings.deadline_day)
    if cutoff < quarter.end:
        raise ValueError(
            f"cut-off date {cutoff} is before the end of {quarter.label} "
            f"({quarter.end}); give a date on or after the quarter's last day"
        )
    if settings.timeliness_working_days:
        con.execute(_WORKDAYS_MACRO)
        timely = f"ce_workdays_after(event_date, received_date) <= {int(settings.timeliness_days)}"
    else:
        timely = f"date_diff('day', event_date, received_date) <= {int(settings.timeliness_days)}"
    params = period_params(quarter, cutoff)
    measures = _measures(timely)
    columns = ", ".join(FIGURE_COLUMNS)
    rule = _rule_key(con, settings)

    con.execute("BEGIN TRANSACTION")
    try:
        stale = _stale_units(con, quarter.label, cutoff, rule)
        if stale == 0:
            con.execute("COMMIT")
            log.info(
                "figures of %s are up to date with cut-off %s", quarter.label, cutoff
            )
            return cutoff
        con.execute(
            """DELETE FROM unit_figures WHERE period = $period
               AND unit_id IN (SELECT unit_id FROM stale_units)""",
            {"period": quarter.label},
        )
        con.execute(
            f"""
INSERT INTO unit_figures (period, cutoff, unit_id, {columns}, dp_quarter_timeliness,
    dp_year_timeliness, population_10k, per_capita)
WITH facts AS (
    SELECT * FROM record_facts
    WHERE received_date <= $cutoff
      AND unit_id IN (SELECT unit_id FROM stale_units)
),
counted AS (
    SELECT u.unit_id, any_value(u.population_10k) AS population_10k,
        {measures}
    FROM units u SEMI JOIN stale_units s ON s.unit_id = u.unit_id
    LEFT JOIN facts f ON f.unit_id = u.unit_id
    GROUP BY u.unit_id
)
SELECT $period, $cutoff, unit_id, {columns}, {_rates()},
    population_10k,
    CASE WHEN population_10k > 0 THEN total_stock / (population_10k * 10000) END
FROM counted
""",
            params,
        )
        _write_totals(con, quarter.label, cutoff, columns)
        con.execute(
            """DELETE FROM figure_state WHERE period = $period
               AND unit_id IN (SELECT unit_id FROM stale_units)""",
            {"period": quarter.label},
        )
        con.execute(
            """INSERT INTO figure_state (period, unit_id, cutoff, rule, version)
               SELECT $period, unit_id, $cutoff, $rule, version FROM stale_units""",
            {"period": quarter.label, "cutoff": cutoff, "rule": rule},
        )
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    log.info(
        "figures of %s computed with cut-off %s for %d units",
        quarter.label,
        cutoff,
        stale,
    )
    return cutoff


def _write_totals(
    con: duckdb.DuckDBPyConnection, period: str, cutoff: dt.date, columns: str
) -> None:
    sums = ", ".join(f"sum(f.{name}) AS {name}" for name in FIGURE_COLUMNS)
    con.execute("DELETE FROM total_figures WHERE period = $period", {"period": period})
    con.execute(
        f"""
INSERT INTO total_figures (period, cutoff, scope, {columns}, dp_quarter_timeliness,
    dp_year_timeliness, population_10k, per_capita)
WITH summed AS (
    SELECT CASE WHEN u.kind = 'department' THEN 'department' ELSE 'local' END AS scope,
           {sums},
           -- Summed as decimals, so the total does not depend on the order of rows.
           CAST(sum(CAST(u.population_10k AS DECIMAL(18, 4))) AS DOUBLE)
               AS population_10k
    FROM unit_figures f JOIN units u USING (unit_id)
    WHERE f.period = $period
    GROUP BY ALL
)
SELECT $period, $cutoff, scope, {columns}, {_rates()},
    population_10k,
    CASE WHEN population_10k > 0 THEN total_stock / (population_10k * 10000) END
FROM summed
""",
        {"period": period, "cutoff": cutoff},
    )


def unit_figures_frame(con: duckdb.DuckDBPyConnection, quarter: Quarter):
    """Return the quarter's unit figures joined with the registry, as a DataFrame."""
    return con.execute(
        """SELECT u.name_zh, u.kind, f.* FROM unit_figures f JOIN units u USING (unit_id)
           WHERE f.period = ? ORDER BY u.kind, u.annex_order""",
        [quarter.label],
    ).df()
