"""Resources: the data directory's settings and the DuckDB warehouse."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import dagster as dg
import duckdb
from dagster_duckdb import DuckDBResource

from credit_etl.settings import Settings, load_settings
from credit_etl.sqlmacros import install_macros
from credit_etl.warehouse import connection_config, ensure_schema


class CreditEtlSettings(dg.ConfigurableResource):
    """Location of the data directory, from which every other path derives."""

    data_dir: str

    def load(self) -> Settings:
        settings = load_settings(self.data_dir)
        settings.ensure_dirs()
        return settings


@contextmanager
def open_warehouse(warehouse: DuckDBResource) -> Iterator[duckdb.DuckDBPyConnection]:
    """Open the warehouse through dagster-duckdb with the schema and macros in place."""
    with warehouse.get_connection() as con:
        ensure_schema(con)
        install_macros(con)
        yield con


def build_resources(settings: Settings) -> dict[str, object]:
    settings.ensure_dirs()
    return {
        "credit_settings": CreditEtlSettings(data_dir=str(settings.data_dir)),
        "warehouse": DuckDBResource(
            database=str(settings.warehouse_path),
            connection_config=connection_config(settings),
        ),
    }
