"""Figures group: the bulletin's figures per unit and per scope for one quarter."""

import datetime as dt
import os

import dagster as dg
import pandas as pd

from assets.ingest import landed_extracts
from assets.partitions import quarter_of, quarterly_partitions
from assets.resources import (
    WAREHOUSE_POOL,
    CreditEtlSettings,
    WarehouseResource,
    open_warehouse,
)
from credit_etl import checks
from credit_etl.figures import compute_figures, unit_figures_frame
from credit_etl.masking import markdown_preview

CHECKS = {
    "parts_within_wholes": (
        dg.AssetCheckSeverity.ERROR,
        "Every unit's part figures are at most their wholes (quarter <= year <= "
        "stock, double publicity <= all records, timely <= received).",
    ),
    "totals_equal_units": (
        dg.AssetCheckSeverity.ERROR,
        "Each total row's counts equal the sum of its units.",
    ),
    "timeliness_above_threshold": (
        dg.AssetCheckSeverity.WARN,
        "Units whose double-publicity timeliness this quarter is below "
        "CREDIT_ETL_TIMELINESS_THRESHOLD (default 0.5).",
    ),
    "volume_kept": (
        dg.AssetCheckSeverity.WARN,
        "Units whose quarter increment fell by more than CREDIT_ETL_VOLUME_DROP "
        "(default 0.5) of the previous quarter's.",
    ),
    "reject_share_below_threshold": (
        dg.AssetCheckSeverity.WARN,
        "Units whose files of the quarter had more than CREDIT_ETL_REJECT_SHARE "
        "(default 0.1) of their rows rejected.",
    ),
    "columns_unchanged": (
        dg.AssetCheckSeverity.WARN,
        "Files whose standard columns differ from the unit's previous delivery.",
    ),
}


def _thresholds() -> checks.Thresholds:
    return checks.Thresholds(
        timeliness=float(os.environ.get("CREDIT_ETL_TIMELINESS_THRESHOLD", "0.5")),
        volume_drop=float(os.environ.get("CREDIT_ETL_VOLUME_DROP", "0.5")),
        reject_share=float(os.environ.get("CREDIT_ETL_REJECT_SHARE", "0.1")),
    )


def _check_results(con, quarter) -> list[dg.AssetCheckResult]:
    limits = _thresholds()
    findings = {
        "parts_within_wholes": checks.parts_within_wholes(con, quarter),
        "totals_equal_units": checks.totals_equal_units(con, quarter),
        "timeliness_above_threshold": checks.low_timeliness(
            con, quarter, limits.timeliness
        ),
        "volume_kept": checks.volume_drops(con, quarter, limits.volume_drop),
        "reject_share_below_threshold": checks.reject_shares(
            con, quarter, limits.reject_share
        ),
        "columns_unchanged": checks.column_changes(con, quarter),
    }
    results = []
    for name, found in findings.items():
        severity, _ = CHECKS[name]
        results.append(
            dg.AssetCheckResult(
                check_name=name,
                passed=not found,
                severity=severity,
                metadata={
                    "quarter": quarter.label,
                    "findings": dg.MetadataValue.int(len(found)),
                    "details": dg.MetadataValue.md(
                        markdown_preview(pd.DataFrame(found), max_rows=20)
                    ),
                },
            )
        )
    return results


class FiguresConfig(dg.Config):
    """Cut-off date of the report, YYYY-MM-DD; empty means the quarter's deadline."""

    cutoff: str = ""


@dg.asset(
    group_name="figures",
    pool=WAREHOUSE_POOL,
    kinds={"duckdb"},
    partitions_def=quarterly_partitions,
    deps=[landed_extracts],
    check_specs=[
        dg.AssetCheckSpec(name, asset="quarter_figures", description=text)
        for name, (_, text) in CHECKS.items()
    ],
    description=(
        "Per unit and per scope (districts and counties; departments): stock, "
        "quarter and year increments, double-publicity volumes and timeliness, "
        "red/black lists, commitments by type, per-capita volume. Rows of "
        "unit_figures and total_figures for the partition's quarter."
    ),
)
def quarter_figures(
    context: dg.AssetExecutionContext,
    config: FiguresConfig,
    credit_settings: CreditEtlSettings,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    settings = credit_settings.load()
    quarter = quarter_of(context)
    cutoff = dt.date.fromisoformat(config.cutoff) if config.cutoff else None
    with open_warehouse(warehouse, context) as con:
        used_cutoff = compute_figures(con, settings, quarter, cutoff)
        frame = unit_figures_frame(con, quarter)
        check_results = _check_results(con, quarter)
        totals = con.execute(
            """SELECT scope, total_stock, quarter_increment, year_stock, dp_stock,
                      dp_quarter_timeliness, dp_year_timeliness
               FROM total_figures WHERE period = ? ORDER BY scope""",
            [quarter.label],
        ).df()
    context.log.info(f"figures of {quarter.label} with cut-off {used_cutoff}")
    top = frame.sort_values("total_stock", ascending=False)[
        ["name_zh", "total_stock", "quarter_increment", "year_stock", "dp_year_stock"]
    ]
    silent = frame[frame["quarter_increment"] + frame["commitment_total"] == 0]
    return dg.MaterializeResult(
        check_results=check_results,
        metadata={
            "dagster/row_count": dg.MetadataValue.int(len(frame)),
            "quarter": quarter.label,
            "cutoff": used_cutoff.isoformat(),
            "totals": dg.MetadataValue.md(markdown_preview(totals)),
            "preview": dg.MetadataValue.md(markdown_preview(top)),
            "units_without_records_this_quarter": dg.MetadataValue.int(len(silent)),
        },
    )
