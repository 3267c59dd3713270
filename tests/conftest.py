"""Shared fixtures: a data directory with a warehouse, case copies and extract writers.

Every fixture works on real files under ``tmp_path`` and a real DuckDB file; nothing
of the product is mocked.
"""

from __future__ import annotations

import csv
import io
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import duckdb
import openpyxl
import pytest

from credit_etl.identifiers import id_check_char, uscc_check_char
from credit_etl.settings import Settings
from credit_etl.warehouse import connect

# Real-world delivery folders, each with the expected outcome in expected.json.
CASES_DIR = Path(__file__).resolve().parent / "cases"
CASES_MISSING_REASON = f"case folder {CASES_DIR} not found"

# Files younger than Settings.settle_seconds (5 s by default) are skipped as still
# being written, so every delivered file gets a modification time this far back.
SETTLED_AGE_SECONDS = 120

RECORD_TABLES = (
    "rec_license",
    "rec_penalty",
    "rec_list",
    "rec_commitment",
    "rec_other",
)


def set_mtime(root: Path, seconds_ago: float = SETTLED_AGE_SECONDS) -> None:
    """Set the modification time of ``root``, or of every file below it, into the past."""
    moment = time.time() - seconds_ago
    paths = [root] if not root.is_dir() else [p for p in root.rglob("*")]
    for path in paths:
        if path.is_symlink() or not path.is_file():
            continue
        os.utime(path, (moment, moment))


def make_writable(root: Path) -> None:
    """Give the owner write access to ``root`` and everything below it."""
    for folder, _dirs, files in os.walk(root):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(Path(folder) / name, 0o644)


def snapshot(root: Path) -> dict[str, bytes]:
    """Return every file below ``root`` (hidden ones included) with its bytes."""
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in sorted(root.rglob("*"))
        if path.is_file() and not path.is_symlink()
    }


def record_count(con: duckdb.DuckDBPyConnection) -> int:
    """Return the number of landed records over all record tables."""
    return sum(
        con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
        for table in RECORD_TABLES
    )


def csv_bytes(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    encoding: str = "utf-8",
    delimiter: str = ",",
    line_end: str = "\n",
) -> bytes:
    """Return a CSV file's bytes, quoted as RFC 4180 and Excel do."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, delimiter=delimiter, lineterminator=line_end)
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue().encode(encoding)


def xlsx_bytes(
    header: Sequence[str],
    rows: Sequence[Sequence[object]],
    title_rows: Sequence[str] = (),
    sheet: str = "Sheet1",
) -> bytes:
    """Return a one-sheet workbook's bytes: title rows, the header, then the rows."""
    workbook = openpyxl.Workbook()
    worksheet = workbook.active
    worksheet.title = sheet
    for title in title_rows:
        worksheet.append([title])
    worksheet.append(list(header))
    for row in rows:
        worksheet.append(list(row))
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings of a fresh, empty data directory."""
    return Settings(data_dir=tmp_path / "data")


@pytest.fixture
def warehouse(settings: Settings) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to a new warehouse file in the settings' data directory."""
    con = connect(settings)
    yield con
    con.close()


@pytest.fixture
def deliver(settings: Settings) -> Callable[[str, bytes], Path]:
    """Write raw bytes to ``incoming/<rel_path>`` with a settled modification time."""

    def write(
        rel_path: str, data: bytes, seconds_ago: float = SETTLED_AGE_SECONDS
    ) -> Path:
        path = settings.incoming_dir / rel_path
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        set_mtime(path, seconds_ago)
        return path

    return write


@pytest.fixture
def write_extract(deliver: Callable[..., Path]) -> Callable[..., Path]:
    """Write a small CSV or XLSX extract, chosen by the name's extension."""

    def write(
        rel_path: str,
        header: Sequence[str],
        rows: Sequence[Sequence[object]],
        seconds_ago: float = SETTLED_AGE_SECONDS,
        **options: object,
    ) -> Path:
        if rel_path.endswith(".xlsx"):
            data = xlsx_bytes(header, rows, **options)
        else:
            data = csv_bytes(header, rows, **options)
        return deliver(rel_path, data, seconds_ago)

    return write


@pytest.fixture(scope="session")
def cases_dir() -> Path:
    """The folder of real-world delivery cases."""
    if not CASES_DIR.is_dir():
        pytest.skip(CASES_MISSING_REASON)
    return CASES_DIR


def copy_case_files(source: Path, incoming: Path, seconds_ago: float) -> None:
    """Copy a case's delivered files over ``incoming``, writable and settled."""
    shutil.copytree(source, incoming, dirs_exist_ok=True)
    make_writable(incoming)
    set_mtime(incoming, seconds_ago)


@pytest.fixture
def copy_case(settings: Settings, cases_dir: Path) -> Callable[[str], Path]:
    """Copy a case's incoming/ into the data directory and return that folder."""

    def copy(case_name: str) -> Path:
        copy_case_files(
            cases_dir / case_name / "incoming",
            settings.incoming_dir,
            SETTLED_AGE_SECONDS,
        )
        return settings.incoming_dir

    return copy


def stop_process_group(
    process: subprocess.Popen, first_signal: int = signal.SIGTERM, wait: float = 30
) -> None:
    """Stop a process started in its own session, and its children; kill if it hangs."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, first_signal)
    try:
        process.wait(timeout=wait)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


def deliver_one_record(incoming: Path, unit_id: str, day: str, serial: int) -> None:
    """Deliver a settled one-record "other" extract for a unit, received on ``day``."""
    folder = incoming / unit_id
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{day}_other.csv"
    path.write_text(
        f"记录编号,主体名称,统一社会信用代码\nR{serial},某单位,91410700736108233M\n",
        encoding="utf-8",
    )
    set_mtime(path)


def make_id(body17: str) -> str:
    """Complete 17 digits into an ID number with the right check character."""
    return body17 + id_check_char(body17)


def make_uscc(serial: int, prefix: str = "91410700") -> str:
    """Build a valid unified social credit code from a registration prefix and serial."""
    body = f"{prefix}{serial:09d}"
    return body + uscc_check_char(body)


def wrong_check(number: str) -> str:
    """Return an ID number with its check character changed to a wrong one."""
    digits = "0123456789X"
    return number[:17] + digits[(digits.index(number[17]) + 1) % len(digits)]
