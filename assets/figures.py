"""Figures group: the bulletin's figures per unit and per scope for one quarter."""

import datetime as dt

import dagster as dg
from dagster_duckdb import DuckDBResource

from assets.ingest import landed_extracts
from assets.partitions import quarter_of, quarterly_partitions
from assets.resources import CreditEtlSettings, open_warehouse
from credit_etl.figures import compute_figures, unit_figures_frame
from credit_etl.masking import markdown_preview


class FiguresConfig(dg.Config):
    """Cut-off date of the report, YYYY-MM-DD; empty means the quarter's deadline."""

    cutoff: str = ""


@dg.asset(
    group_name="figures",
    kinds={"duckdb"},
    partitions_def=quarterly_partitions,
    deps=[landed_extracts],
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
    warehouse: DuckDBResource,
) -> dg.MaterializeResult:
    settings = credit_settings.load()
    quarter = quarter_of(context)
    cutoff = dt.date.fromisoformat(config.cutoff) if config.cutoff else None
    with open_warehouse(warehouse) as con:
        used_cutoff = compute_figures(con, settings, quarter, cutoff)
        frame = unit_figures_frame(con, quarter)
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
        metadata={
            "dagster/row_count": dg.MetadataValue.int(len(frame)),
            "quarter": quarter.label,
            "cutoff": used_cutoff.isoformat(),
            "totals": dg.MetadataValue.md(markdown_preview(totals)),
            "preview": dg.MetadataValue.md(markdown_preview(top)),
            "units_without_records_this_quarter": dg.MetadataValue.int(len(silent)),
        }
    )
