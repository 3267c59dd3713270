"""Paths and tunables of one installation, resolved from one data directory."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

DATA_DIR_ENV = "CREDIT_ETL_DATA_DIR"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA_DIR = REPO_ROOT / "var"
SHIPPED_DATA = REPO_ROOT / "data"
TIMEZONE = "Asia/Shanghai"


@dataclass(frozen=True)
class Limits:
    """Refusal thresholds for a delivered file, each recorded in the ledger."""

    max_file_bytes: int = 4 * 1024**3
    # python-calamine keeps a whole sheet in memory, about 80 bytes a cell: a
    # 1,000,000-row, 14-column sheet peaked at 1.5 GiB. This keeps XLSX ingest
    # under 2 GiB.
    max_xlsx_cells: int = 20_000_000
    max_xlsx_uncompressed_bytes: int = 2 * 1024**3
    max_field_chars: int = 4_000


@dataclass(frozen=True)
class Settings:
    """Everything a run reads and writes lives under ``data_dir``."""

    data_dir: Path
    timeliness_days: int = 7
    timeliness_working_days: bool = False
    deadline_day: int = 10
    settle_seconds: float = 5.0
    duckdb_memory_limit: str = "1GB"
    duckdb_threads: int = 2
    # How long a process waits for another credit-etl process to release the
    # warehouse before it gives up with the holder's name.
    lock_wait_seconds: float = 1800.0
    # Files landed at once, each on its own connection and in its own transaction.
    # Files of one unit and category always land one after another.
    ingest_workers: int = 2
    limits: Limits = field(default_factory=Limits)

    @property
    def incoming_dir(self) -> Path:
        return self.data_dir / "incoming"

    @property
    def warehouse_path(self) -> Path:
        return self.data_dir / "warehouse.duckdb"

    @property
    def exports_dir(self) -> Path:
        return self.data_dir / "exports"

    @property
    def dagster_home(self) -> Path:
        return self.data_dir / "dagster_home"

    @property
    def temp_dir(self) -> Path:
        return self.data_dir / "tmp"

    def ensure_dirs(self) -> None:
        for path in (
            self.incoming_dir,
            self.exports_dir,
            self.dagster_home,
            self.temp_dir,
        ):
            path.mkdir(parents=True, exist_ok=True)


def resolve_data_dir(explicit: str | os.PathLike[str] | None = None) -> Path:
    """Return the data directory: the argument, else the environment, else var/."""
    if explicit:
        return Path(explicit).expanduser().resolve()
    from_env = os.environ.get(DATA_DIR_ENV)
    if from_env:
        return Path(from_env).expanduser().resolve()
    return DEFAULT_DATA_DIR


def _limits_from_env(env: os._Environ[str] | dict[str, str]) -> Limits:
    defaults = Limits()
    values = {}
    for name in (
        "max_file_bytes",
        "max_xlsx_cells",
        "max_xlsx_uncompressed_bytes",
        "max_field_chars",
    ):
        variable = f"CREDIT_ETL_{name.upper()}"
        text = env.get(variable)
        if not text:
            values[name] = getattr(defaults, name)
            continue
        try:
            values[name] = int(text)
        except ValueError:
            raise ValueError(
                f"{variable}={text!r} is not a whole number; set it to a count, "
                "for example 4000"
            ) from None
    return Limits(**values)


def _workers_from_env(env: os._Environ[str] | dict[str, str]) -> int:
    text = env.get("CREDIT_ETL_INGEST_WORKERS") or "2"
    if not (text.isascii() and text.isdigit()) or int(text) < 1:
        raise ValueError(
            f"CREDIT_ETL_INGEST_WORKERS={text!r} is not a whole number of 1 or more; "
            "set it to the number of files to land at once, for example 2"
        )
    return int(text)


def load_settings(data_dir: str | os.PathLike[str] | None = None) -> Settings:
    """Build settings for a data directory, reading overrides from the environment."""
    env = os.environ
    return Settings(
        data_dir=resolve_data_dir(data_dir),
        timeliness_days=int(env.get("CREDIT_ETL_TIMELINESS_DAYS", "7")),
        timeliness_working_days=env.get("CREDIT_ETL_TIMELINESS_WORKING_DAYS", "")
        in ("1", "true", "yes"),
        deadline_day=int(env.get("CREDIT_ETL_DEADLINE_DAY", "10")),
        settle_seconds=float(env.get("CREDIT_ETL_SETTLE_SECONDS", "5")),
        duckdb_memory_limit=env.get("CREDIT_ETL_DUCKDB_MEMORY_LIMIT", "1GB"),
        duckdb_threads=int(env.get("CREDIT_ETL_DUCKDB_THREADS", "2")),
        lock_wait_seconds=float(env.get("CREDIT_ETL_LOCK_WAIT_SECONDS", "1800")),
        ingest_workers=_workers_from_env(env),
        limits=_limits_from_env(env),
    )
