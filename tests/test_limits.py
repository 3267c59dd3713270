"""Hard limits on delivered files: size, unpacked size, cells and field length.

A file over a file limit is rejected as a whole: its ledger row is ``failed`` with an
error that names the value, the limit and what to do, and none of its rows land. A
field over ``max_field_chars`` rejects only its row. Small limits keep the files small.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import duckdb
import openpyxl
import pytest
from conftest import csv_bytes, record_count, set_mtime, xlsx_bytes

from credit_etl.identifiers import uscc_check_char
from credit_etl.ingest import ingest_incoming
from credit_etl.settings import REPO_ROOT, Limits, Settings, load_settings
from credit_etl.warehouse import connect

CLI = REPO_ROOT / ".venv" / "bin" / "credit-etl"
HEADER = [
    "行政相对人名称",
    "统一社会信用代码",
    "行政处罚决定书文号",
    "处罚内容",
    "处罚决定日期",
]
PATH = "environment/20181015_penalty"

# The zip bomb's sheet XML contains one inline string of this many bytes. Parsing it
# took 0.8 s and 860 MB peak RSS (measured with python-calamine on a 2-core machine).
BOMB_PAD_BYTES = 256 * 1024 * 1024
BOMB_LIMIT = 1024 * 1024


def uscc(serial: int) -> str:
    body = f"91410700{serial:09d}"
    return body + uscc_check_char(body)


def penalty_rows(count: int, content: str = "罚款") -> list[list[str]]:
    return [
        [f"新乡市第{n}公司", uscc(n), f"新环罚〔2018〕{n}号", content, "2018-10-08"]
        for n in range(1, count + 1)
    ]


def make_settings(tmp_path: Path, **limits: int) -> Settings:
    return Settings(
        data_dir=tmp_path / "data", settle_seconds=0, limits=Limits(**limits)
    )


def deliver_file(settings: Settings, name: str, data: bytes) -> Path:
    path = settings.incoming_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    set_mtime(path)
    return path


def ledger_rows(con: duckdb.DuckDBPyConnection) -> list[tuple]:
    return con.execute(
        "SELECT path, status, error, rows_landed FROM ledger ORDER BY file_id"
    ).fetchall()


def reject_count(con: duckdb.DuckDBPyConnection) -> int:
    return con.execute("SELECT count(*) FROM rejects").fetchone()[0]


def ingest(settings: Settings) -> duckdb.DuckDBPyConnection:
    con = connect(settings)
    ingest_incoming(con, settings)
    return con


def padded_sheet_xlsx(path: Path, pad_bytes: int) -> None:
    """Write a valid workbook whose sheet XML contains a huge, compressible cell."""
    source = zipfile.ZipFile(io.BytesIO(xlsx_bytes(HEADER, penalty_rows(1))))
    chunk = b"A" * (1 << 20)
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=6) as out:
        for info in source.infolist():
            data = source.read(info.filename)
            if info.filename != "xl/worksheets/sheet1.xml":
                out.writestr(info.filename, data)
                continue
            head, tail = data.split(b"</sheetData>")
            with out.open(info.filename, "w", force_zip64=True) as member:
                member.write(head)
                member.write(b'<row r="3"><c r="F3" t="inlineStr"><is><t>')
                for _ in range(pad_bytes // len(chunk)):
                    member.write(chunk)
                member.write(b"</t></is></c></row></sheetData>" + tail)


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bomb") / "bomb.xlsx"
    padded_sheet_xlsx(path, BOMB_PAD_BYTES)
    return path


# --------------------------------------------------------------------------- file size


def test_file_size_over_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_file_bytes=1000)
    data = csv_bytes(HEADER, penalty_rows(20))
    deliver_file(settings, PATH + ".csv", data)
    con = ingest(settings)
    [(path, status, error, landed)] = ledger_rows(con)
    assert status == "failed"
    assert f"{len(data):,} bytes" in error
    assert "limit of 1,000" in error
    assert "split it into several files" in error
    assert landed is None
    assert record_count(con) == 0
    assert reject_count(con) == 0


def test_file_size_at_limit(tmp_path: Path) -> None:
    data = csv_bytes(HEADER, penalty_rows(20))
    settings = make_settings(tmp_path, max_file_bytes=len(data))
    deliver_file(settings, PATH + ".csv", data)
    con = ingest(settings)
    [(path, status, error, landed)] = ledger_rows(con)
    assert status == "landed"
    assert landed == 20


def test_file_size_limit_on_xlsx(tmp_path: Path) -> None:
    data = xlsx_bytes(HEADER, penalty_rows(5))
    settings = make_settings(tmp_path, max_file_bytes=len(data) - 1)
    deliver_file(settings, PATH + ".xlsx", data)
    con = ingest(settings)
    [(path, status, error, landed)] = ledger_rows(con)
    assert status == "failed"
    assert f"limit of {len(data) - 1:,}" in error
    assert record_count(con) == 0


# --------------------------------------------------------------------------- zip bomb


def test_zip_bomb_is_small(zip_bomb: Path) -> None:
    assert zip_bomb.stat().st_size < 1024 * 1024
    with zipfile.ZipFile(zip_bomb) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
        assert archive.testzip() is None
    assert unpacked > BOMB_PAD_BYTES


def test_zip_bomb_rejected(tmp_path: Path, zip_bomb: Path) -> None:
    settings = make_settings(tmp_path, max_xlsx_uncompressed_bytes=BOMB_LIMIT)
    deliver_file(settings, PATH + ".xlsx", zip_bomb.read_bytes())
    con = connect(settings)
    started = time.monotonic()
    ingest_incoming(con, settings)
    elapsed = time.monotonic() - started
    [(path, status, error, landed)] = ledger_rows(con)
    with zipfile.ZipFile(zip_bomb) as archive:
        unpacked = sum(info.file_size for info in archive.infolist())
    assert status == "failed"
    assert f"expands to {unpacked:,} bytes" in error
    assert f"limit of {BOMB_LIMIT:,}" in error
    assert "split it into several files" in error
    assert record_count(con) == 0
    assert reject_count(con) == 0
    # Parsing the padded sheet alone takes about 0.8 s.
    assert elapsed < 0.5


# Runs the command line in a child that reports its own peak memory. VmHWM belongs
# to the memory map made at exec, while ru_maxrss would also count the copy of this
# (large) test process that the fork made before the exec.
PEAK_REPORTER = (
    "import sys\n"
    "from credit_etl.cli import main\n"
    "status = main(sys.argv[1:])\n"
    "with open('/proc/self/status') as handle:\n"
    "    peak = handle.read().split('VmHWM:')[1].split()[0]\n"
    "print('PEAK_KIB', peak)\n"
    "sys.exit(status)\n"
)


def run_with_peak_rss(command: list[str], env: dict[str, str]) -> tuple[int, str, int]:
    """Run a credit-etl command; return its exit status, output and peak RSS in KiB."""
    arguments = command[1:]
    process = subprocess.run(
        [sys.executable, "-c", PEAK_REPORTER, *arguments],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    text = process.stdout + process.stderr
    peak = int(text.split("PEAK_KIB", 1)[1].split()[0])
    return process.returncode, text, peak


def cli_env(data_dir: Path, **variables: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CREDIT_ETL_")}
    env["CREDIT_ETL_DATA_DIR"] = str(data_dir)
    env.update(variables)
    return env


def test_zip_bomb_bounded_memory(tmp_path: Path, zip_bomb: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    deliver_file(settings, PATH + ".xlsx", zip_bomb.read_bytes())
    env = cli_env(
        settings.data_dir, CREDIT_ETL_MAX_XLSX_UNCOMPRESSED_BYTES=str(BOMB_LIMIT)
    )
    status, output, peak_kib = run_with_peak_rss([str(CLI), "ingest"], env)
    assert status == 0, output
    assert "expands to" in output
    # The command alone peaked at 130 MB when measured, and the padded cell is 256 MB.
    assert peak_kib * 1024 < BOMB_PAD_BYTES


# --------------------------------------------------------------------------- cells


def workbook_bytes(sheets: dict[str, int]) -> bytes:
    """Return a workbook with one penalty table of the given row count per sheet."""
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    serial = 0
    for name, count in sheets.items():
        worksheet = workbook.create_sheet(name)
        worksheet.append(HEADER)
        for row in penalty_rows(count):
            serial += 1
            row[1] = uscc(serial)
            row[2] = f"新环罚〔2018〕{serial}号"
            worksheet.append(row)
    buffer = io.BytesIO()
    workbook.save(buffer)
    return buffer.getvalue()


def test_xlsx_cells_over_limit(tmp_path: Path) -> None:
    # 1 header row and 24 data rows of 5 columns: 125 cells.
    settings = make_settings(tmp_path, max_xlsx_cells=100)
    deliver_file(settings, PATH + ".xlsx", workbook_bytes({"Sheet1": 24}))
    con = ingest(settings)
    [(path, status, error, landed)] = ledger_rows(con)
    assert status == "failed"
    assert "125 cells" in error
    assert "limit of 100" in error
    assert "split it into several files" in error
    assert record_count(con) == 0
    assert reject_count(con) == 0


def test_xlsx_cells_at_limit(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, max_xlsx_cells=125)
    deliver_file(settings, PATH + ".xlsx", workbook_bytes({"Sheet1": 24}))
    con = ingest(settings)
    [(path, status, error, landed)] = ledger_rows(con)
    assert status == "landed"
    assert landed == 24


def test_xlsx_cells_summed_over_sheets(tmp_path: Path) -> None:
    # The limit is per workbook: two sheets of 60 cells make 120.
    settings = make_settings(tmp_path, max_xlsx_cells=100)
    data = workbook_bytes({"一月": 11, "二月": 11})
    deliver_file(settings, PATH + ".xlsx", data)
    con = ingest(settings)
    [(path, status, error, landed)] = ledger_rows(con)
    assert status == "failed", f"landed {landed} rows of a 120-cell workbook"
    assert "limit of 100" in error
    assert record_count(con) == 0


# --------------------------------------------------------------------------- fields


@pytest.mark.parametrize("extension", [".csv", ".xlsx"])
def test_field_over_limit_rejects_row(tmp_path: Path, extension: str) -> None:
    settings = make_settings(tmp_path, max_field_chars=20)
    rows = penalty_rows(3)
    rows[1][3] = "罚" * 21
    rows[2][3] = "罚" * 20
    make = xlsx_bytes if extension == ".xlsx" else csv_bytes
    deliver_file(settings, PATH + extension, make(HEADER, rows))
    con = ingest(settings)
    [(path, status, error, landed)] = ledger_rows(con)
    rejects = con.execute(
        "SELECT row_no, column_name, reason FROM rejects ORDER BY row_no"
    ).fetchall()
    assert status == "landed"
    assert landed == 2
    assert len(rejects) == 1
    row_no, column, reason = rejects[0]
    assert row_no == 3
    assert column == "处罚内容"
    assert "21 characters" in reason
    assert "limit of 20" in reason
    assert "shorten it" in reason


def test_field_over_csv_module_limit(tmp_path: Path) -> None:
    # Python's csv module raises on fields over 131,072 characters by default. A ragged
    # row sends the file down the row-by-row path that uses it.
    settings = Settings(data_dir=tmp_path / "data", settle_seconds=0)
    rows = penalty_rows(3)
    rows[0][3] = "罚" * 131_073
    rows[2].append("多余")
    deliver_file(settings, PATH + ".csv", csv_bytes(HEADER, rows))
    con = ingest(settings)
    [(path, status, error, landed)] = ledger_rows(con)
    reasons = dict(
        con.execute("SELECT row_no, reason FROM rejects ORDER BY row_no").fetchall()
    )
    assert status == "landed"
    assert landed == 1
    assert "131073 characters" in reasons[2]
    assert "the row has 6 fields" in reasons[4]


# --------------------------------------------------------------------------- not a zip


@pytest.mark.parametrize(
    "data",
    [
        b"this is not a workbook",
        csv_bytes(HEADER, penalty_rows(2)),
        b"",
    ],
    ids=["text", "csv", "empty"],
)
def test_xlsx_not_a_zip(tmp_path: Path, data: bytes) -> None:
    settings = make_settings(tmp_path)
    deliver_file(settings, PATH + ".xlsx", data)
    con = ingest(settings)
    [(path, status, error, landed)] = ledger_rows(con)
    assert status == "failed"
    assert "not a valid .xlsx workbook" in error
    assert "save it again from Excel as .xlsx" in error
    assert record_count(con) == 0


def test_xlsx_truncated_zip(tmp_path: Path) -> None:
    settings = make_settings(tmp_path)
    data = xlsx_bytes(HEADER, penalty_rows(2))
    deliver_file(settings, PATH + ".xlsx", data[: len(data) // 2])
    con = ingest(settings)
    [(path, status, error, landed)] = ledger_rows(con)
    assert status == "failed"
    assert ".xlsx" in error
    assert record_count(con) == 0


# --------------------------------------------------------------------------- environment


@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("CREDIT_ETL_MAX_FILE_BYTES", "max_file_bytes"),
        ("CREDIT_ETL_MAX_XLSX_CELLS", "max_xlsx_cells"),
        ("CREDIT_ETL_MAX_XLSX_UNCOMPRESSED_BYTES", "max_xlsx_uncompressed_bytes"),
        ("CREDIT_ETL_MAX_FIELD_CHARS", "max_field_chars"),
    ],
)
def test_env_overrides_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, variable: str, field: str
) -> None:
    monkeypatch.setenv(variable, "12345")
    limits = load_settings(tmp_path).limits
    assert getattr(limits, field) == 12345
    others = [name for name in vars(Limits()) if name != field]
    for name in others:
        assert getattr(limits, name) == getattr(Limits(), name)


def test_env_default_limits(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in vars(Limits()):
        monkeypatch.delenv(f"CREDIT_ETL_{name.upper()}", raising=False)
    assert load_settings(tmp_path).limits == Limits()


@pytest.mark.parametrize("text", ["4k", "1e6", "4.5", "four"])
def test_env_limit_not_number(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, text: str
) -> None:
    monkeypatch.setenv("CREDIT_ETL_MAX_FIELD_CHARS", text)
    with pytest.raises(ValueError) as raised:
        load_settings(tmp_path)
    message = str(raised.value)
    assert "CREDIT_ETL_MAX_FIELD_CHARS" in message
    assert repr(text) in message
    assert "not a whole number" in message


def test_env_limit_applies_to_ingest(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "data")
    deliver_file(settings, PATH + ".csv", csv_bytes(HEADER, penalty_rows(20)))
    env = cli_env(settings.data_dir, CREDIT_ETL_MAX_FILE_BYTES="100")
    result = subprocess.run(
        [str(CLI), "ingest"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr
    con = connect(settings, read_only=True)
    [(path, status, error, landed)] = ledger_rows(con)
    con.close()
    assert status == "failed"
    assert "limit of 100" in error


def test_cli_env_not_number(tmp_path: Path) -> None:
    env = cli_env(tmp_path / "data", CREDIT_ETL_MAX_FILE_BYTES="4GB")
    result = subprocess.run(
        [str(CLI), "files"], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode != 0
    assert "CREDIT_ETL_MAX_FILE_BYTES='4GB' is not a whole number" in result.stderr
    assert "Traceback" not in result.stderr
