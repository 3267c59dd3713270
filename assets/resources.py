"""Resources: the data directory's settings and the DuckDB warehouse."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from credit_etl.gate import outside_holder, warehouse_gate
from credit_etl.settings import Settings, load_settings
from credit_etl.sqlmacros import install_macros
from credit_etl.warehouse import WarehouseLockedError, connection_config, ensure_schema

# Every asset that opens the warehouse runs in this pool. The Dagster home's
# dagster.yaml gives pools a limit of one, so steps of concurrent runs (a backfill,
# sensor runs, the schedule) take the warehouse one at a time.
WAREHOUSE_POOL = "credit_etl_warehouse"


class CreditEtlSettings(dg.ConfigurableResource):
    """Location of the data directory, from which every other path derives."""

    data_dir: str

    def load(self) -> Settings:
        settings = load_settings(self.data_dir)
        settings.ensure_dirs()
        return settings


class WarehouseResource(DuckDBResource):
    """dagster-duckdb's resource, queued at the warehouse gate and without retries.

    DuckDBResource retries a locked file for about 100 s and then fails. Here a step
    first waits at the gate for other credit-etl processes. A lock that DuckDB still
    reports after that belongs to a program outside credit-etl, so the step fails at
    once.
    """

    lock_wait_seconds: float = 1800.0

    @contextmanager
    def get_connection(
        self, read_only: bool = False, purpose: str = ""
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        with warehouse_gate(
            Path(self.database),
            write=not read_only,
            wait_seconds=self.lock_wait_seconds,
            purpose=purpose,
        ):
            try:
                con = duckdb.connect(
                    self.database, read_only=read_only, config=self.connection_config
                )
            except duckdb.IOException as error:
                if "lock" not in str(error).lower():
                    raise
                raise WarehouseLockedError(
                    f"the warehouse {self.database} is open in "
                    f"{outside_holder(str(error))}. Close that program (for example "
                    "a DuckDB shell or a notebook) and run the step again"
                ) from None
            try:
                yield con
            finally:
                con.close()


@contextmanager
def open_warehouse(
    warehouse: WarehouseResource,
    context: dg.AssetExecutionContext | None = None,
    read_only: bool = False,
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse with the schema (for writers) and the macros in place."""
    purpose = ""
    if context is not None:
        purpose = f"run {context.run.run_id[:8]}, step {context.op_def.name}"
    with warehouse.get_connection(read_only=read_only, purpose=purpose) as con:
        if not read_only:
            ensure_schema(con)
        install_macros(con)
        yield con


def build_resources(settings: Settings) -> dict[str, object]:
    settings.ensure_dirs()
    return {
        "credit_settings": CreditEtlSettings(data_dir=str(settings.data_dir)),
        "warehouse": WarehouseResource(
            database=str(settings.warehouse_path),
            connection_config=connection_config(settings),
            lock_wait_seconds=settings.lock_wait_seconds,
        ),
    }
