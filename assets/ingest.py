"""Ingest group: land every new delivery under incoming/ in the warehouse."""

import dagster as dg
import pandas as pd

from assets.resources import (
    WAREHOUSE_POOL,
    CreditEtlSettings,
    WarehouseResource,
    open_warehouse,
)
from credit_etl.ingest import ingest_incoming
from credit_etl.masking import markdown_preview, mask_records, mask_text
from credit_etl.schema import TABLES


@dg.asset(
    group_name="ingest",
    pool=WAREHOUSE_POOL,
    kinds={"duckdb", "python"},
    description=(
        "Every delivered extract under incoming/, validated and landed in the "
        "warehouse: records by category, rejected rows with reasons, and the file "
        "ledger. A file lands in one transaction; byte-identical files add nothing."
    ),
)
def landed_extracts(
    context: dg.AssetExecutionContext,
    credit_settings: CreditEtlSettings,
    warehouse: WarehouseResource,
) -> dg.MaterializeResult:
    settings = credit_settings.load()
    with open_warehouse(warehouse, context) as con:
        report = ingest_incoming(con, settings)
        for problem in report.problems:
            context.log.warning(
                f"not read: incoming/{problem.rel_path}: {problem.problem}; "
                f"expected {problem.expected}"
            )
        for result in report.results:
            if result.status == "failed":
                context.log.error(f"failed: incoming/{result.rel_path}: {result.error}")
        records = sum(
            con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in TABLES
        )
        rejects = con.execute("SELECT count(*) FROM rejects").fetchone()[0]
        files = pd.DataFrame(
            [
                {
                    "path": r.rel_path,
                    "status": r.status,
                    "read": r.rows_read,
                    "landed": r.rows_landed,
                    "rejected": r.rows_rejected,
                    "repeated": r.rows_repeated,
                    "error": mask_text(r.error),
                }
                for r in report.results
            ]
        )
        sample = con.execute(
            """SELECT unit_id, category, received_date, subject_name, subject_type,
                      uscc, id_number, decision_number
               FROM rec_penalty ORDER BY file_id DESC, row_no LIMIT 5"""
        ).df()
    summary = report.summary()
    context.log.info(f"ingest finished: {summary}")
    return dg.MaterializeResult(
        metadata={
            "dagster/row_count": dg.MetadataValue.int(records),
            "files_this_run": dg.MetadataValue.int(len(report.results)),
            "rows_landed_this_run": dg.MetadataValue.int(summary["rows_landed"]),
            "rows_rejected_this_run": dg.MetadataValue.int(summary["rows_rejected"]),
            "rows_repeated_this_run": dg.MetadataValue.int(summary["rows_repeated"]),
            "files_not_read": dg.MetadataValue.int(len(report.problems)),
            "rejects_total": dg.MetadataValue.int(rejects),
            "files": dg.MetadataValue.md(markdown_preview(files, max_rows=20)),
            "preview": dg.MetadataValue.md(markdown_preview(mask_records(sample))),
        }
    )
