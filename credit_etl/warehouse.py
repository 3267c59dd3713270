"""The DuckDB warehouse: connection settings, tables and the unit registry table."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from credit_etl.gate import outside_holder, warehouse_gate
from credit_etl.registry import Unit, load_units
from credit_etl.schema import TABLES, storage_columns
from credit_etl.settings import Settings
from credit_etl.sqlmacros import install_macros

log = logging.getLogger(__name__)

RECORD_META = """
    unit_id VARCHAR NOT NULL,
    category VARCHAR NOT NULL,
    key_hash UHUGEINT NOT NULL,
    received_date DATE NOT NULL,
    fields_received_date DATE NOT NULL,
    file_id BIGINT NOT NULL,
    sheet VARCHAR,
    row_no INTEGER NOT NULL,
    flags VARCHAR
"""

LEDGER_DDL = """
CREATE SEQUENCE IF NOT EXISTS ledger_file_id START 1;
CREATE TABLE IF NOT EXISTS ledger (
    file_id BIGINT PRIMARY KEY,
    path VARCHAR NOT NULL,
    sha256 VARCHAR NOT NULL,
    size_bytes BIGINT,
    unit_id VARCHAR,
    category VARCHAR,
    received_date DATE,
    encoding VARCHAR,
    rows_read BIGINT,
    rows_landed BIGINT,
    rows_rejected BIGINT,
    rows_repeated BIGINT,
    status VARCHAR NOT NULL,
    error VARCHAR,
    duplicate_of BIGINT,
    notes VARCHAR,
    columns VARCHAR,
    mtime DOUBLE,
    ingested_at TIMESTAMP NOT NULL DEFAULT current_timestamp
);
CREATE TABLE IF NOT EXISTS rejects (
    file_id BIGINT NOT NULL,
    path VARCHAR NOT NULL,
    unit_id VARCHAR NOT NULL,
    category VARCHAR NOT NULL,
    sheet VARCHAR,
    row_no INTEGER NOT NULL,
    column_name VARCHAR,
    value VARCHAR,
    reason VARCHAR NOT NULL,
    record JSON
);
CREATE TABLE IF NOT EXISTS row_flags (
    file_id BIGINT NOT NULL,
    path VARCHAR NOT NULL,
    unit_id VARCHAR NOT NULL,
    sheet VARCHAR,
    row_no INTEGER NOT NULL,
    column_name VARCHAR,
    flag VARCHAR NOT NULL
);
"""

FIGURE_COLUMNS = (
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
    "license_q1",
    "penalty_q1",
    "license_q2",
    "penalty_q2",
    "license_q3",
    "penalty_q3",
    "license_q4",
    "penalty_q4",
    "license_year",
    "penalty_year",
    "license_stock",
    "penalty_stock",
    "commitment_voluntary",
    "commitment_credit_repair",
    "commitment_approval_substitute",
    "commitment_self_discipline",
    "commitment_other_types",
    "commitment_total",
)


def _figures_ddl(table: str, key_column: str) -> str:
    counts = ",\n    ".join(f"{name} BIGINT NOT NULL" for name in FIGURE_COLUMNS)
    return f"""
CREATE TABLE IF NOT EXISTS {table} (
    period VARCHAR NOT NULL,
    cutoff DATE NOT NULL,
    {key_column} VARCHAR NOT NULL,
    {counts},
    dp_quarter_timeliness DOUBLE,
    dp_year_timeliness DOUBLE,
    population_10k DOUBLE,
    per_capita DOUBLE,
    computed_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (period, {key_column})
);
"""


# Inputs each unit's figures of a period were counted from (see figures.py).
FIGURE_STATE_DDL = """
CREATE TABLE IF NOT EXISTS figure_state (
    period VARCHAR NOT NULL,
    unit_id VARCHAR NOT NULL,
    cutoff DATE NOT NULL,
    rule VARCHAR NOT NULL,
    version BIGINT NOT NULL,
    computed_at TIMESTAMP NOT NULL DEFAULT current_timestamp,
    PRIMARY KEY (period, unit_id)
)
"""


class WarehouseLockedError(RuntimeError):
    """Error raised when another program has the warehouse file open for DuckDB."""


def connect(settings: Settings, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse with bounded memory, and fail at once if another program has it.

    This does not queue at the gate. ``open_warehouse`` does, and every process that
    may run beside others (runs, sensors, the command line) uses that instead.
    """
    settings.ensure_dirs()
    try:
        con = duckdb.connect(
            str(settings.warehouse_path),
            read_only=read_only,
            config=connection_config(settings),
        )
    except duckdb.IOException as error:
        message = str(error)
        if "lock" in message.lower():
            raise WarehouseLockedError(
                f"the warehouse {settings.warehouse_path} is open in "
                f"{outside_holder(message)}. Close that program (for example a "
                "DuckDB shell or a notebook) and run again; credit-etl's own runs "
                "wait for each other and never cause this"
            ) from None
        raise
    if not read_only:
        ensure_schema(con)
    install_macros(con)
    return con


@contextmanager
def open_warehouse(
    settings: Settings, read_only: bool = False, purpose: str = ""
) -> Iterator[duckdb.DuckDBPyConnection]:
    """Wait for the gate, then open the warehouse, and release both on exit.

    Writers wait for every other credit-etl process and readers only for writers,
    each for at most ``settings.lock_wait_seconds``.
    """
    with warehouse_gate(
        settings.warehouse_path,
        write=not read_only,
        wait_seconds=settings.lock_wait_seconds,
        purpose=purpose,
    ):
        con = connect(settings, read_only=read_only)
        try:
            yield con
        finally:
            con.close()


def connection_config(settings: Settings) -> dict[str, str]:
    """Return DuckDB settings that keep memory flat and spill to the data directory."""
    return {
        "memory_limit": settings.duckdb_memory_limit,
        "threads": str(settings.duckdb_threads),
        "temp_directory": str(settings.temp_dir / "duckdb"),
        "preserve_insertion_order": "true",
    }


# Columns added after the first release, added to older warehouses when they open.
ADDED_COLUMNS = (
    ("ledger", "columns", "VARCHAR"),
    ("ledger", "mtime", "DOUBLE"),
)


def ensure_schema(
    con: duckdb.DuckDBPyConnection, units: list[Unit] | None = None
) -> None:
    """Create every table that is missing and refresh the units table."""
    con.execute(LEDGER_DDL)
    for table, column, kind in ADDED_COLUMNS:
        con.execute(f"ALTER TABLE {table} ADD COLUMN IF NOT EXISTS {column} {kind}")
    for table in TABLES:
        columns = storage_columns(table)
        extra = [f"{column.key} VARCHAR" for column in columns]
        typed = []
        if table in ("rec_license", "rec_penalty"):
            typed.append("decision_date_value DATE")
        if table == "rec_list":
            typed.append("listed_date_value DATE")
        if table == "rec_commitment":
            typed += ["commitment_date_value DATE", "commitment_type_value VARCHAR"]
        if table == "rec_penalty":
            typed += ["fine_amount_value DECIMAL(18, 6)"]
        if table == "rec_other":
            typed.append("extra JSON")
        body = ",\n    ".join([RECORD_META.strip(), *typed, *extra])
        con.execute(f"CREATE TABLE IF NOT EXISTS {table} (\n    {body}\n)")
    con.execute(_figures_ddl("unit_figures", "unit_id"))
    con.execute(FIGURE_STATE_DDL)
    con.execute(_figures_ddl("total_figures", "scope"))
    refresh_units(con, units or load_units())
    con.execute(RECORD_FACTS_VIEW)


RECORD_FACTS_VIEW = """
CREATE OR REPLACE VIEW record_facts AS
SELECT unit_id, category, received_date, decision_date_value AS event_date,
       CAST(NULL AS VARCHAR) AS commitment_type
FROM rec_license
UNION ALL
SELECT unit_id, category, received_date, decision_date_value, NULL FROM rec_penalty
UNION ALL
SELECT unit_id, category, received_date, listed_date_value, NULL FROM rec_list
UNION ALL
SELECT unit_id, category, received_date, commitment_date_value, commitment_type_value
FROM rec_commitment
UNION ALL
SELECT unit_id, category, received_date, NULL, NULL FROM rec_other
"""


def refresh_units(con: duckdb.DuckDBPyConnection, units: list[Unit]) -> None:
    con.execute(
        """CREATE TABLE IF NOT EXISTS units (
            unit_id VARCHAR PRIMARY KEY, name_zh VARCHAR NOT NULL, name_en VARCHAR,
            kind VARCHAR NOT NULL, division_code VARCHAR, population_10k DOUBLE,
            annex_order INTEGER NOT NULL)"""
    )
    current = con.execute(
        "SELECT unit_id, name_zh, name_en, kind, division_code, population_10k, "
        "annex_order FROM units ORDER BY unit_id"
    ).fetchall()
    wanted = sorted(
        (
            u.unit_id,
            u.name_zh,
            u.name_en,
            u.kind,
            u.division_code,
            u.population_10k,
            u.annex_order,
        )
        for u in units
    )
    if current == wanted:
        return
    con.execute("BEGIN TRANSACTION")
    con.execute("DELETE FROM units")
    con.executemany("INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?)", wanted)
    con.execute("COMMIT")


def table_row_count(con: duckdb.DuckDBPyConnection, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def warehouse_exists(path: Path) -> bool:
    return path.exists()
