"""The warehouse gate between processes: writers one at a time, readers after them.

Every holder here is a real second process with a real DuckDB file.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from credit_etl.gate import WarehouseBusyError, warehouse_gate
from credit_etl.settings import Settings
from credit_etl.warehouse import WarehouseLockedError, open_warehouse

REPO = Path(__file__).resolve().parent.parent


def _start_holder(data_dir: Path, hold_seconds: float, through_gate: bool):
    """Start a process that opens the warehouse for writing and keeps it open."""
    if through_gate:
        body = f"""
            from credit_etl.settings import Settings
            from credit_etl.warehouse import open_warehouse
            settings = Settings(data_dir=Path({str(data_dir)!r}))
            with open_warehouse(settings, purpose="holding for a test") as con:
                con.execute("INSERT INTO units_seen VALUES (1)")
                print("held", flush=True)
                time.sleep({hold_seconds})
        """
    else:
        body = f"""
            import duckdb
            con = duckdb.connect({str(data_dir / "warehouse.duckdb")!r})
            print("held", flush=True)
            time.sleep({hold_seconds})
        """
    script = "import time\nfrom pathlib import Path\n" + textwrap.dedent(body)
    process = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=REPO,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "held"
    return process


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    settings = Settings(data_dir=tmp_path)
    with open_warehouse(settings) as con:
        con.execute("CREATE TABLE units_seen (n INTEGER)")
    return tmp_path


def test_reader_waits_for_writer(data_dir: Path) -> None:
    holder = _start_holder(data_dir, 2.0, through_gate=True)
    started = time.monotonic()
    try:
        with open_warehouse(Settings(data_dir=data_dir), read_only=True) as con:
            seen = con.execute("SELECT count(*) FROM units_seen").fetchone()[0]
    finally:
        holder.wait(timeout=30)
    assert seen == 1
    assert time.monotonic() - started >= 1.0
    assert holder.returncode == 0


def test_writer_timeout_names_holder(data_dir: Path) -> None:
    holder = _start_holder(data_dir, 10.0, through_gate=True)
    settings = dataclasses.replace(Settings(data_dir=data_dir), lock_wait_seconds=1.0)
    try:
        with pytest.raises(WarehouseBusyError) as raised:
            with open_warehouse(settings):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
    message = str(raised.value)
    assert f"PID {holder.pid}" in message
    assert "holding for a test" in message
    assert "CREDIT_ETL_LOCK_WAIT_SECONDS" in message


def test_outside_program_fails_fast(
    data_dir: Path,
) -> None:
    holder = _start_holder(data_dir, 30.0, through_gate=False)
    started = time.monotonic()
    try:
        with pytest.raises(WarehouseLockedError) as raised:
            with open_warehouse(Settings(data_dir=data_dir)):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=30)
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert f"PID {holder.pid}" in message
    assert "duckdb.connect" in message
    assert "Close that program" in message


def test_gate_reentrant_in_process(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    with warehouse_gate(warehouse, write=True, wait_seconds=1):
        with warehouse_gate(warehouse, write=True, wait_seconds=1):
            pass
        with warehouse_gate(warehouse, write=False, wait_seconds=1):
            pass
    # Released: another open file can take it at once.
    with warehouse_gate(warehouse, write=True, wait_seconds=0.5):
        pass


def test_writer_inside_reader_raises(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    with warehouse_gate(warehouse, write=False, wait_seconds=1):
        with pytest.raises(RuntimeError, match="open for reading in this process"):
            with warehouse_gate(warehouse, write=True, wait_seconds=1):
                pass


def test_threads_share_one_read_lock(tmp_path: Path) -> None:
    warehouse = tmp_path / "warehouse.duckdb"
    barrier = threading.Barrier(8)

    def read() -> None:
        barrier.wait()
        for _ in range(2000):
            with warehouse_gate(warehouse, write=False, wait_seconds=5):
                pass

    threads = [threading.Thread(target=read) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    # Every shared lock was released, so a writer in another process gets in.
    script = (
        "from pathlib import Path\n"
        "from credit_etl.gate import warehouse_gate\n"
        f"with warehouse_gate(Path({str(warehouse)!r}), write=True, wait_seconds=2):\n"
        "    pass\n"
    )
    writer = subprocess.run([sys.executable, "-c", script], cwd=REPO, timeout=60)
    assert writer.returncode == 0
