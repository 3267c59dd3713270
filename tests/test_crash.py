"""A run killed half-way and run again gives the figures of one clean run."""

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from credit_etl.identifiers import uscc_check_char

pytestmark = pytest.mark.slow

FILES = 8
ROWS_PER_FILE = 150_000


def _valid_uscc(serial: int) -> str:
    body = f"91410700{serial:09d}"
    return body + uscc_check_char(body)


def _write_extracts(incoming: Path) -> None:
    """Write large penalty and other files; later files repeat keys of earlier ones."""
    con = duckdb.connect()
    codes = [_valid_uscc(i) for i in range(100)]
    con.execute("CREATE TABLE codes AS SELECT unnest($codes) AS uscc", {"codes": codes})
    for index in range(FILES):
        unit = "hrss" if index % 2 == 0 else "transport"
        category = "other" if unit == "hrss" else "penalty"
        day = 10 + index
        folder = incoming / unit
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"201810{day:02d}_{category}.csv"
        # Each file restarts its ids at a third of the previous file's range,
        # so later files correct records that earlier files landed.
        first = (index // 2) * ROWS_PER_FILE * 2 // 3
        if category == "other":
            select = f"""
                SELECT 'R' || (i + {first}) AS 记录编号, '某单位' || i AS 主体名称,
                       (SELECT uscc FROM codes WHERE rowid = i % 100) AS 统一社会信用代码,
                       '社保缴费' AS 信息类别, '2018-10-0{1 + index % 9}' AS 信息日期
                FROM range({ROWS_PER_FILE}) t(i)"""
        else:
            select = f"""
                SELECT '某公司' || i AS 行政相对人名称,
                       (SELECT uscc FROM codes WHERE rowid = i % 100) AS 统一社会信用代码,
                       '新交罚〔2018〕' || (i + {first}) || '号' AS 行政处罚决定书文号,
                       DATE '2018-10-01' + CAST(i % 9 AS INTEGER) AS 处罚决定日期
                FROM range({ROWS_PER_FILE}) t(i)"""
        con.execute(f"COPY ({select}) TO '{path}' (HEADER, DELIMITER ',')")
    old = time.time() - 120
    for path in incoming.rglob("*.csv"):
        os.utime(path, (old, old))


def _credit_etl(data_dir: Path, *args: str) -> subprocess.Popen:
    command = [
        str(Path(sys.executable).parent / "credit-etl"),
        *args,
        "--data-dir",
        str(data_dir),
    ]
    return subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )


def _run_to_end(data_dir: Path) -> None:
    process = _credit_etl(data_dir, "run", "--quarter", "2018Q4")
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-3000:]


def _state(data_dir: Path) -> dict[str, list]:
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        return {
            "figures": con.execute(
                "SELECT * EXCLUDE (computed_at) FROM unit_figures ORDER BY unit_id"
            ).fetchall(),
            "ledger": con.execute(
                """SELECT path, sha256, status, rows_read, rows_landed, rows_rejected,
                          rows_repeated FROM ledger ORDER BY path"""
            ).fetchall(),
            "records": con.execute(
                """SELECT unit_id, count(*), count(DISTINCT key_hash), min(received_date),
                          max(received_date)
                   FROM (SELECT unit_id, key_hash, received_date FROM rec_other
                         UNION ALL
                         SELECT unit_id, key_hash, received_date FROM rec_penalty)
                   GROUP BY unit_id ORDER BY unit_id"""
            ).fetchall(),
        }
    finally:
        con.close()


@pytest.fixture(scope="module")
def clean_state(tmp_path_factory) -> tuple[Path, dict[str, list]]:
    source = tmp_path_factory.mktemp("source")
    _write_extracts(source / "incoming")
    clean = tmp_path_factory.mktemp("clean")
    shutil.copytree(source / "incoming", clean / "incoming")
    _run_to_end(clean)
    return source, _state(clean)


def _kill_after(data_dir: Path, seconds: float) -> None:
    process = _credit_etl(data_dir, "run", "--quarter", "2018Q4")
    time.sleep(seconds)
    if process.poll() is None:
        process.send_signal(signal.SIGKILL)
    process.wait(timeout=60)


@pytest.mark.parametrize("kill_after_seconds", [2.0, 4.0, 6.5])
def test_killed_run_matches_clean_run(
    tmp_path: Path, clean_state: tuple[Path, dict[str, list]], kill_after_seconds: float
) -> None:
    source, expected = clean_state
    data_dir = tmp_path / "data"
    shutil.copytree(source / "incoming", data_dir / "incoming")

    _kill_after(data_dir, kill_after_seconds)

    _run_to_end(data_dir)
    state = _state(data_dir)
    assert state["records"] == expected["records"]
    assert state["ledger"] == expected["ledger"]
    assert state["figures"] == expected["figures"]


def test_repeated_random_kills_match_clean_run(
    tmp_path: Path, clean_state: tuple[Path, dict[str, list]]
) -> None:
    """Kill the run at four random moments in a row, then let it finish."""
    source, expected = clean_state
    data_dir = tmp_path / "data"
    shutil.copytree(source / "incoming", data_dir / "incoming")
    seed = int(os.environ.get("CREDIT_ETL_KILL_SEED", time.time_ns() % 1_000_000))
    moments = [round(random.Random(seed + i).uniform(1.0, 8.0), 2) for i in range(4)]

    for seconds in moments:
        _kill_after(data_dir, seconds)

    _run_to_end(data_dir)
    state = _state(data_dir)
    context = f"kill moments {moments} (CREDIT_ETL_KILL_SEED={seed})"
    assert state["records"] == expected["records"], context
    assert state["ledger"] == expected["ledger"], context
    assert state["figures"] == expected["figures"], context


def test_clean_run_counts(clean_state: tuple[Path, dict[str, list]]) -> None:
    _, state = clean_state
    records = {row[0]: row[1] for row in state["records"]}
    # Four files of 150,000 ids each, every file starting two thirds into the last.
    assert records["hrss"] == ROWS_PER_FILE * 2 // 3 * 3 + ROWS_PER_FILE
    landed = sum(row[4] for row in state["ledger"])
    repeated = sum(row[6] for row in state["ledger"])
    assert landed + repeated == FILES * ROWS_PER_FILE
