"""Annexes group: the four annex workbooks of a quarter, read from its figures."""

import dagster as dg
import pandas as pd

from assets.figures import quarter_figures
from assets.partitions import quarter_of, quarterly_partitions
from assets.resources import (
    WAREHOUSE_POOL,
    CreditEtlSettings,
    WarehouseResource,
    open_warehouse,
)
from credit_etl.annexes import (
    ANNEXES,
    Annex,
    annex_rows,
    render_workbook,
    save_atomically,
)
from credit_etl.feedback import write_feedback
from credit_etl.masking import markdown_preview


def _annex_asset(annex: Annex) -> dg.AssetsDefinition:
    @dg.asset(
        name=f"annex{annex.number}_workbook",
        group_name="annexes",
        pool=WAREHOUSE_POOL,
        kinds={"excel"},
        partitions_def=quarterly_partitions,
        deps=[quarter_figures],
        description=(
            f"{annex.sheet_name} {annex.title}: exports/<quarter>/{annex.file_name}, "
            "laid out as in the bulletin."
        ),
    )
    def _asset(
        context: dg.AssetExecutionContext,
        credit_settings: CreditEtlSettings,
        warehouse: WarehouseResource,
    ) -> dg.MaterializeResult:
        settings = credit_settings.load()
        quarter = quarter_of(context)
        with open_warehouse(warehouse, context, read_only=True) as con:
            rows = annex_rows(con, quarter, annex.number)
        folder = settings.exports_dir / quarter.label
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / annex.file_name
        save_atomically(render_workbook(annex, quarter, rows), path)
        context.log.info(f"wrote {path}")
        unit_rows = [row for row in rows if row["row_type"] == "unit"]
        keys = [leaf.key for leaf in annex.leaves()]
        headers = annex.leaf_headers(quarter)
        preview = pd.DataFrame(
            [
                [row.get(key) for key in keys]
                for row in rows
                if row["row_type"] != "group"
            ],
            columns=[
                f"{h} ({k})" if headers.count(h) > 1 else h
                for h, k in zip(headers, keys, strict=True)
            ],
        )
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(path)),
                "dagster/row_count": dg.MetadataValue.int(len(unit_rows)),
                "quarter": quarter.label,
                "preview": dg.MetadataValue.md(markdown_preview(preview, max_rows=12)),
            }
        )

    return _asset


@dg.asset(
    group_name="annexes",
    pool=WAREHOUSE_POOL,
    kinds={"excel"},
    partitions_def=quarterly_partitions,
    deps=[quarter_figures],
    description=(
        "One feedback workbook per unit, exports/<quarter>/feedback/<unit_id>.xlsx: "
        "its files and counts, rejected rows with reasons, late double-publicity "
        "records and its figures; personal data masked."
    ),
)
def feedback_workbooks(
    context: dg.AssetExecutionContext,
    credit_settings: CreditEtlSettings,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    settings = credit_settings.load()
    quarter = quarter_of(context)
    with open_warehouse(warehouse, context, read_only=True) as con:
        paths = write_feedback(con, settings, quarter)
        rejects = con.execute(
            """SELECT r.unit_id, count(*) AS rejected_rows FROM rejects r
               JOIN ledger l USING (file_id)
               WHERE l.received_date BETWEEN ? AND ?
               GROUP BY r.unit_id ORDER BY rejected_rows DESC""",
            [quarter.start, quarter.end],
        ).df()
    context.log.info(f"wrote {len(paths)} feedback workbooks for {quarter.label}")
    return dg.MaterializeResult(
        metadata={
            "folder": dg.MetadataValue.path(str(paths[0].parent) if paths else ""),
            "dagster/row_count": dg.MetadataValue.int(len(paths)),
            "units_with_rejects": dg.MetadataValue.md(markdown_preview(rejects)),
        }
    )


def annex_assets() -> list[dg.AssetsDefinition]:
    return [*(_annex_asset(annex) for annex in ANNEXES), feedback_workbooks]
